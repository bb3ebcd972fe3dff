"""The GPU check's training runs: the real `torchrun ... train_ddp.py` command line, as a user runs it.

For one precision mode (`--amp off|bf16|fp16`, or fp32 with `--compile`): an uninterrupted run of a few dozen
steps (exit 0, every logged loss finite, the loss falling, a checkpoint of the last step written; fp16: the
GradScaler's state in it), then optionally the same command stopped by SIGTERM to the whole job mid-run and
rerun: the rerun must resume from the step SIGTERM saved and end where the uninterrupted run ended (the same
losses at every step and the same weights: bit for bit on CPU; on CUDA within a tolerance, because cuDNN and
atomics are not bitwise deterministic from one process to the next; the largest differences are reported).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rt1.gpu_check.data import CheckData

MODES = {"fp32": [], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"], "compile": ["--compile"]}
# CUDA: a resumed run differs from the uninterrupted one by non-deterministic kernels only.
CUDA_LOSS_RTOL = {"fp32": 1e-3, "bf16": 2e-2, "fp16": 2e-2, "compile": 1e-3}


@dataclass
class RunContext:
    """How to launch train_ddp.py here: the interpreter, the repository, processes, device and sizes."""

    repo: Path
    out_dir: Path
    data: CheckData
    device: str  # "cuda" or "cpu"
    nproc: int
    steps: int
    batch_size: int = 4
    timeout_s: float = 300.0
    env: dict = field(default_factory=lambda: {**os.environ, "PYTHONUNBUFFERED": "1"})

    def command(
        self,
        save_dir: Path,
        extra: list[str],
        *,
        preset: str = "tiny",
        max_steps: int | None = None,
        num_workers: int = 1,
        batch_size: int | None = None,
        data: CheckData | None = None,
    ) -> list[str]:
        data = data or self.data
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={self.nproc}",
            "train_ddp.py",
            "--preset",
            preset,
            "--data-dir",
            str(data.data_dir),
            "--train-index",
            str(data.train_index),
            "--save-dir",
            str(save_dir),
            "--device",
            self.device,
            "--no-progress",
            "--no-tensorboard",
            "--log-every",
            "1",
            "--num-workers",
            str(num_workers),
            "--batch-size",
            str(batch_size or self.batch_size),
            "--epochs",
            "1000",
            "--max-steps",
            str(max_steps or self.steps),
            "--val-every",
            "0",
            "--cond-drop-prob",
            "0",
            *extra,
        ]


class CheckFailed(Exception):
    """One check's failure; the message is one line."""


def run(ctx: RunContext, cmd: list[str], log: Path) -> int:
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ctx.repo, env=ctx.env, stdout=err, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=ctx.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise CheckFailed(f"timed out after {ctx.timeout_s:.0f} s (log: {log})") from None


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error")]
    return lines[0][:300] if lines else f"see {log}"


def losses(save_dir: Path) -> list[tuple[int, float]]:
    from rt1.train.runlog import read_metrics

    return [(m["step"], m["loss"]) for m in read_metrics(save_dir / "metrics.jsonl") if m["event"] == "train"]


def final_checkpoint(save_dir: Path) -> dict:
    from rt1.train.checkpoint import load_checkpoint

    paths = sorted(save_dir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise CheckFailed(f"no checkpoint written in {save_dir}")
    return load_checkpoint(paths[-1])


def check_run(mode: str, save_dir: Path, steps: int) -> dict:
    """The uninterrupted run's facts; raises CheckFailed."""
    series = losses(save_dir)
    values = [loss for _, loss in series]
    if [s for s, _ in series] != list(range(1, steps + 1)):
        raise CheckFailed(f"logged steps {[s for s, _ in series][:5]}... are not 1..{steps}")
    if not all(math.isfinite(v) for v in values):
        raise CheckFailed(f"non-finite loss at step {next(s for s, v in series if not math.isfinite(v))}")
    k = max(1, steps // 5)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    if not last < first - 0.05 * abs(first):
        raise CheckFailed(
            f"the loss did not fall: mean of the first {k} steps {first:.4f}, of the last {k} {last:.4f}"
        )
    state = final_checkpoint(save_dir)
    if state["global_step"] != steps:
        raise CheckFailed(f"the last checkpoint holds step {state['global_step']}, expected {steps}")
    if mode == "fp16" and not state.get("scaler"):
        raise CheckFailed("--amp fp16 checkpoint has no GradScaler state")
    return {"loss_first": first, "loss_last": last}


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise CheckFailed(f"the run ended (exit {proc.returncode}) before {text!r}: {last_error(log)}")
        time.sleep(0.05)
    raise CheckFailed(f"no {text!r} in {log} after {timeout:.0f} s")


def check_resume(ctx: RunContext, mode: str, reference: Path, work: Path) -> dict:
    """SIGTERM to the whole job at about half the steps, rerun, compare with `reference`; raises CheckFailed."""
    import torch

    save, log = work / "resumed", work / "interrupted.log"
    cmd = ctx.command(save, MODES[mode])
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ctx.repo, env=ctx.env, stdout=err, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_for(log, f"step {ctx.steps // 2}/{ctx.steps}", proc, ctx.timeout_s)
            os.killpg(proc.pid, signal.SIGTERM)  # a scheduler's SIGTERM reaches every process of the job
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if "terminated by SIGTERM at step" not in log.read_text(errors="replace"):
        raise CheckFailed(f"SIGTERM did not stop the run with a checkpoint: {last_error(log)}")
    stopped_at = final_checkpoint(save)["global_step"]
    if not 0 < stopped_at < ctx.steps:
        raise CheckFailed(
            f"SIGTERM's checkpoint holds step {stopped_at}, expected one inside 1..{ctx.steps - 1}"
        )
    if run(ctx, cmd, work / "rerun.log") != 0:
        raise CheckFailed(f"the rerun failed: {last_error(work / 'rerun.log')}")
    if f"at step {stopped_at}" not in (work / "rerun.log").read_text(errors="replace"):
        raise CheckFailed(f"the rerun did not resume from step {stopped_at}")
    a, b = dict(losses(reference)), dict(losses(save))
    if sorted(a) != sorted(b):
        raise CheckFailed(
            f"the resumed run logged steps {sorted(b)[:3]}..., the uninterrupted {sorted(a)[:3]}..."
        )
    loss_diff = max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in a)
    wa, wb = final_checkpoint(reference)["model"], final_checkpoint(save)["model"]
    weight_diff = max(
        float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0
        for k in wa
        if wa[k].is_floating_point()
    )
    exact = all(torch.equal(wa[k], wb[k]) for k in wa) and loss_diff == 0.0
    if ctx.device == "cpu" and not exact:
        raise CheckFailed(
            f"the resumed run differs from the uninterrupted one (largest relative loss difference "
            f"{loss_diff:.3g}, largest weight difference {weight_diff:.3g}); on CPU it must be exact"
        )
    if ctx.device == "cuda" and loss_diff > CUDA_LOSS_RTOL[mode]:
        raise CheckFailed(
            f"the resumed run's losses differ from the uninterrupted run's by up to {loss_diff:.3g} "
            f"(relative; tolerance {CUDA_LOSS_RTOL[mode]})"
        )
    return {
        "resumed_from_step": stopped_at,
        "bitwise_equal": exact,
        "max_rel_loss_diff": loss_diff,
        "max_abs_weight_diff": weight_diff,
    }


def train_check(ctx: RunContext, mode: str, *, resume, no_resume_reason: str = "resume not checked") -> dict:
    """One precision mode: the uninterrupted run, then the SIGTERM-and-rerun check if `resume` (a bool, or a
    function of the first run's seconds: whether two more runs fit the time left).
    -> {"status": "passed"|"failed", "detail": one line, ...}."""
    work = ctx.out_dir / "runs" / mode
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    out: dict = {
        "mode": mode,
        "processes": ctx.nproc,
        "device": ctx.device,
        "steps": ctx.steps,
        "command": " ".join(ctx.command(work / "reference", MODES[mode])[1:]),
    }
    try:
        if run(ctx, ctx.command(work / "reference", MODES[mode]), work / "reference.log") != 0:
            raise CheckFailed(f"train_ddp.py failed: {last_error(work / 'reference.log')}")
        out.update(check_run(mode, work / "reference", ctx.steps))
        resume = resume(time.monotonic() - start) if callable(resume) else resume
        if resume:
            out["resume"] = check_resume(ctx, mode, work / "reference", work)
        out["status"] = "passed"
        out["detail"] = f"loss {out['loss_first']:.3f} -> {out['loss_last']:.3f}" + (
            f"; resumed from step {out['resume']['resumed_from_step']}: "
            + (
                "bit for bit equal"
                if out["resume"]["bitwise_equal"]
                else f"losses within {out['resume']['max_rel_loss_diff']:.2g}"
            )
            if resume
            else f"; {no_resume_reason}"
        )
    except CheckFailed as e:
        out.update(status="failed", detail=str(e))
    out["seconds"] = time.monotonic() - start
    return out
