"""One base error class, one-line messages, and the exit statuses of every command line.

Every problem a user can fix raises a subclass of `RT1Error` whose message is one line naming the
file or value. Every entry point runs through `run_cli`, which turns them into

    error: <message>          on stderr, exit status `error.exit_code` (EXIT_USAGE = 2 unless the class says)

and an `OSError` (disk full, permissions) into the same one line, so no traceback reaches a user for
bad input. Ctrl-C exits 130 and SIGTERM (as `Terminated`, raised by `install_sigterm_handler`) 143.

`install_stop_handlers` + `signals_deferred()` let a long job answer SIGTERM/SIGINT at a safe point
instead (training: the next step boundary, after saving that step): inside the block the first signal
is only recorded (`stop_requested()`), the job stops by itself and calls `acknowledge_stop()`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from typing import Callable

EXIT_OK = 0
EXIT_ERROR = 1           # a run failed (training: a data, checkpoint or process-group problem)
EXIT_USAGE = 2           # bad input: arguments, files, values
EXIT_NON_FINITE_LOSS = 3
EXIT_INTERRUPTED = 130   # Ctrl-C
EXIT_TERMINATED = 143    # SIGTERM


class RT1Error(Exception):
    """Base of every error the user can fix; the message is one line naming the file or value."""

    exit_code: int | None = None  # None: the entry point's default (run_cli's `default_exit`)


class Terminated(BaseException):
    """SIGTERM (a scheduler or torchrun stopping the job) as an exception, so cleanup code runs."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (errors are reported on one line).

    An exception raised in a DataLoader worker reaches the main process re-raised by torch with the
    message "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback ...": the one line
    is then the original message (its last traceback line), with the worker named.
    """
    message = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes its text
    text = str(message).strip().splitlines()
    if not text:
        return type(error).__name__
    worker = _WORKER_WRAPPED.match(text[0])
    if worker and len(text) > 1:
        name = worker.group(1)
        for line in reversed(text[1:]):
            head, sep, original = line.partition(": ")
            if sep and (head == name or head.endswith("." + name)):
                return _PATH_REPR.sub(r"'\1'", f"{original.strip()} (in DataLoader {worker.group(2)})")
    return _PATH_REPR.sub(r"'\1'", text[0])


# An OSError given a Path as its filename prints it as PosixPath('...'): a message names the path as text.
_PATH_REPR = re.compile(r"\b(?:Pure)?(?:Posix|Windows)?G?Path\('((?:[^'\\]|\\.)*)'\)")
_WORKER_WRAPPED = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+)\.$")


def install_sigterm_handler() -> None:
    """Raise `Terminated` on SIGTERM (entry points only: it changes process state)."""
    def on_sigterm(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)


# ---- stop requests: SIGTERM / SIGINT answered at a safe point ---------------------------------------

_STOP = {"installed": False, "deferring": 0, "received": None}


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
    where the first one is only recorded and a second SIGINT (Ctrl-C twice) raises (entry points only: it
    changes process state)."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    _STOP["installed"] = True


@contextlib.contextmanager
def signals_deferred():
    """Within the block, the first SIGTERM/SIGINT sets `stop_requested()` instead of raising (a second SIGINT
    raises, a repeated SIGTERM is ignored). A signal recorded but not acted on is raised when the block exits. Without
    `install_stop_handlers` this changes nothing."""
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


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def acknowledge_stop() -> None:
    """The recorded signal was answered (the caller stops by itself): `signals_deferred` will not re-raise it."""
    _STOP["received"] = None


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, *,
            label: str = "error", default_exit: int = EXIT_USAGE) -> int:
    """Run an entry point's `main(argv)` and map its outcome to an exit status with a one-line message."""
    try:
        return main(argv) or EXIT_OK
    except RT1Error as e:
        print(f"{label}: {one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code if e.exit_code is not None else default_exit
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print(f"{label}: {where}{one_line(e)}", file=sys.stderr, flush=True)
        return default_exit
    except KeyboardInterrupt:
        print(f"{label}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{label}: terminated by SIGTERM; finished outputs are kept, rerun to resume", file=sys.stderr,
              flush=True)
        return EXIT_TERMINATED
