"""Rank-0 outputs of a run: messages, `metrics.jsonl`, TensorBoard scalars.

`RunLog.open(save_dir, ...)` returns a working log on the main process and a no-op log on every
other rank (`is_main_process()` is checked once, here), so the trainer calls it unconditionally. Its
files are opened by `start()`, when training starts: a run refused during set-up writes nothing.

metrics.jsonl has one JSON object per line:
    {"event": "train", "step": 12, "epoch": 1, "loss": 5.31, "lr": 0.002,
     "seconds": 0.31, "data_wait": 0.004}                                                every optimizer step
    {"event": "val", "step": 109, "epoch": 1, "loss": ..., "token_accuracy": ...,
     "token_accuracy_per_dim": {"world_x": ..., ...}, "windows": 245}                    every validation
    {"event": "epoch", "step": 109, "epoch": 1, "steps": 109, "samples": 872, "seconds": ...,
     "samples_per_s": ..., "data_wait_fraction": ...}                                   end of every epoch
    {"event": "stop", "step": ..., "reason": "..."}                                       why the run ended early
`loss` of a train line is the mean over all ranks of that step's loss; `seconds` is rank 0's wall time
for the step and `data_wait` the part of it spent waiting for the DataLoader. On resume, lines after the
checkpoint's step are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rt1.io import atomic_output
from rt1.train.distributed import is_main_process

METRICS_FILE = "metrics.jsonl"
log = logging.getLogger("rt1.train")


class RunLog:
    """Main-process log. Use `RunLog.open`; other ranks get a `_NullLog` with the same methods."""

    def __init__(self, save_dir: Path, *, resume_step: int | None, tensorboard: bool) -> None:
        self.save_dir = Path(save_dir)
        self.resume_step, self.tensorboard = resume_step, tensorboard
        self._metrics = None
        self._tb = None

    def start(self) -> None:
        """Open metrics.jsonl (truncated to the resumed step) and the TensorBoard writer: called when training
        starts, so a run refused during set-up leaves no file behind."""
        if self._metrics is not None:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / METRICS_FILE
        if self.resume_step is None:
            path.unlink(missing_ok=True)
        else:
            truncate_metrics(path, self.resume_step)
        self._metrics = open(path, "a", encoding="utf-8")
        if self.tensorboard:
            _tensorboard_without_tensorflow()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from.
            self._tb = SummaryWriter(log_dir=str(self.save_dir), purge_step=self.resume_step)

    @staticmethod
    def open(save_dir: Path, *, resume_step: int | None, tensorboard: bool = True):
        if is_main_process():
            return RunLog(save_dir, resume_step=resume_step, tensorboard=tensorboard)
        return _NullLog()

    @property
    def active(self) -> bool:
        return True

    def info(self, message: str) -> None:
        log.info(message)

    def warning(self, message: str) -> None:
        log.warning(message)

    def record(self, event: str, **values) -> None:
        if self._metrics is None:
            raise RuntimeError("RunLog.record before RunLog.start")
        self._metrics.write(json.dumps({"event": event, **values}) + "\n")
        if event != "train":
            self._metrics.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._metrics is not None:
            self._metrics.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_without_tensorflow() -> None:
    """Make TensorBoard's writer use its built-in file I/O instead of importing TensorFlow.

    TensorBoard imports the whole of TensorFlow (seconds, ~0.5 GB, oneDNN banners) just to write event
    files when TensorFlow is installed, as it is in this environment for the RLDS stage. The marker
    module `tensorboard.compat.notf` is TensorBoard's documented switch to its TF-free stub. Nothing
    changes if TensorFlow is already imported.
    """
    import sys
    import types

    if "tensorflow" not in sys.modules and "tensorboard.compat.notf" not in sys.modules:
        sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")


class _NullLog:
    active = False

    def start(self) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def record(self, event: str, **values) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of metrics.jsonl with step <= last_step (and drop a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("step", 0) <= last_step and entry.get("event") != "stop":
                kept.append(json.dumps(entry) + "\n")
    with atomic_output(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict]:
    """All entries of a metrics.jsonl file (for tests, plots and benchmarks)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


__all__ = ["RunLog", "METRICS_FILE", "read_metrics", "truncate_metrics"]
