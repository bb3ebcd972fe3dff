"""Stopping a run: SIGTERM/SIGINT answered at a step boundary, and the one collective every rank uses to agree
on the step's loss, a non-finite loss, and a stop request.

`install_stop_handlers` (entry points only: it changes process state) + `signals_deferred()`: inside the block
the first signal is only recorded (`stop_requested()`); the trainer stops by itself at the next step boundary
and calls `acknowledge_stop()`. Outside the block, SIGTERM raises `rt1.errors.Terminated` and SIGINT
`KeyboardInterrupt`, which `rt1.errors.run_cli` turns into exit statuses 143 and 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rt1.errors import EXIT_INTERRUPTED, EXIT_NON_FINITE_LOSS, EXIT_TERMINATED, RT1Error, Terminated
from rt1.train import distributed as D


class NonFiniteLossError(RT1Error, RuntimeError):
    """The training loss became NaN/inf; no optimizer step was taken with it."""

    exit_code = EXIT_NON_FINITE_LOSS

    def __init__(self, step: int, epoch: int, ranks: list[int], last_checkpoint: Path | None):
        self.step, self.epoch, self.ranks, self.last_checkpoint = step, epoch, ranks, last_checkpoint
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        kept = (
            f"the last good checkpoint is {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint was written before it"
        )
        super().__init__(
            f"non-finite training loss (NaN or inf) at step {step} (epoch {epoch}) on {where}: "
            f"training stopped before updating the weights; {kept}"
        )


class StoppedBySignal(RT1Error):
    """SIGTERM/SIGINT stopped the run at a step boundary, after a checkpoint of that step was saved."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED
        super().__init__(message)

    @classmethod
    def at(cls, signum: int, state, steps_per_epoch: int, checkpoint: Path | None) -> StoppedBySignal:
        what = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated by SIGTERM"
        # Collective (every rank raises this after the same agreed step): whose torchrun agent died, if any.
        lost = [
            (rank, host)
            for rank, (gone, host) in enumerate(D.all_gather_object((launcher_lost(), _host())))
            if gone
        ]
        if lost:
            what += (
                " (the torchrun agent of " + ", ".join(f"rank {r} on host {h}" for r, h in lost) + " died)"
            )
        where = (
            f"{checkpoint} holds step {state.global_step}"
            if checkpoint is not None
            else "no checkpoint was written (no step was done)"
        )
        return cls(
            signum,
            f"{what} at step {state.global_step} (epoch {state.epoch}, step {state.step_in_epoch} "
            f"of {steps_per_epoch}): {where}; rerun the same command to resume",
        )


_STOP = {"deferring": 0, "received": None}


def _raise_for(signum: int):
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _on_stop_signal(signum, frame):
    if not _STOP["deferring"]:
        _raise_for(signum)  # not in a deferring section: stop now
    if _STOP["received"] is None:
        _STOP["received"] = signum  # answered at the next safe point (see `stop_requested`)
    elif signum == signal.SIGINT and _STOP["received"] == signal.SIGINT:
        _raise_for(signum)  # Ctrl-C twice: stop now
    # A repeated SIGTERM changes nothing: torchrun forwards the scheduler's SIGTERM to processes that
    # already got it (the whole job's process group), and the scheduler's SIGKILL comes after its grace time.


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT raise `Terminated` / `KeyboardInterrupt`, except inside `signals_deferred()`,
    where the first one is only recorded and a second SIGINT (Ctrl-C twice) raises."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


_LAUNCHER = {"parent": None}


def launcher_lost() -> bool:
    """True when `stop_when_the_launcher_dies` watched this process's torchrun agent and it is gone."""
    return _LAUNCHER["parent"] is not None and os.getppid() != _LAUNCHER["parent"]


def _host() -> str:
    import socket

    return socket.gethostname()


def stop_when_the_launcher_dies() -> None:
    """Under torchrun (TORCHELASTIC_RUN_ID set), on Linux: SIGTERM this process when its parent, the torchrun
    agent, dies. torchrun starts its workers in sessions of their own, so a killed agent would leave its worker
    training with the other nodes and their agents waiting at exit for the dead one; with this the worker
    stops like any SIGTERM'd run (every rank after the same step, a checkpoint of it), and the job ends."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = _LAUNCHER["parent"] = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred():
    """Within the block, the first SIGTERM/SIGINT sets `stop_requested()` instead of raising (a second SIGINT
    raises, a repeated SIGTERM is ignored). A signal recorded but not acted on is raised when the block exits.
    Without `install_stop_handlers` this changes nothing."""
    _STOP["deferring"] += 1
    try:
        yield
    finally:
        _STOP["deferring"] -= 1
    received = _STOP["received"]
    if received is not None and not _STOP["deferring"]:
        _STOP["received"] = None
        _raise_for(received)


def stop_requested() -> int | None:
    """The signal number of a recorded, not yet answered SIGTERM/SIGINT, or None."""
    return _STOP["received"]


def acknowledge_stop() -> None:
    """The recorded signal was answered (the caller stops by itself): `signals_deferred` will not re-raise it."""
    _STOP["received"] = None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@dataclass(frozen=True)
class Agreement:
    """What every rank learns from `agree`: the mean loss, the ranks whose loss was not finite, the stop signal."""

    loss: float
    non_finite_ranks: list[int]
    stop: int | None  # SIGTERM wins over SIGINT; None: no rank was asked to stop


def agree(loss: torch.Tensor | None, device: torch.device) -> Agreement:
    """Collective: all-reduce [loss, SIGTERM flag, SIGINT flag, one non-finite flag per rank] in one call.

    loss None (a check between epochs) counts as a finite 0. Every rank must call it at the same point.
    """
    rank, world = D.get_rank(), D.get_world_size()
    finite = loss is None or bool(torch.isfinite(loss))
    stats = torch.zeros(3 + world, device=device, dtype=torch.float64)
    stats[0] = loss.double() if loss is not None and finite else 0.0
    received = stop_requested()
    if received is not None:
        stats[1 if received == signal.SIGTERM else 2] = 1.0
    stats[3 + rank] = 0.0 if finite else 1.0
    D.all_reduce_sum(stats)
    stop = signal.SIGTERM if stats[1] > 0 else signal.SIGINT if stats[2] > 0 else None
    return Agreement(float(stats[0]) / world, [r for r in range(world) if stats[3 + r] > 0], stop)


__all__ = [
    "NonFiniteLossError",
    "StoppedBySignal",
    "install_stop_handlers",
    "signals_deferred",
    "stop_requested",
    "acknowledge_stop",
    "signal_name",
    "stop_when_the_launcher_dies",
    "launcher_lost",
    "Agreement",
    "agree",
]
