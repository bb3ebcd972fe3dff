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

import contextlib
import json
import logging
import time
from pathlib import Path

from rt1.io import atomic_output
from rt1.model_families import architecture
from rt1.progress import stderr_is_terminal
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


# ---- what the trainer reports: throughput, progress, one line per interval / epoch / validation ---------


class ThroughputMeter:
    """Windows per second and time waiting for data, per logging interval and per epoch."""

    def __init__(self) -> None:
        now = time.perf_counter()
        self.epoch_start, self.interval_start = now, now
        self.epoch_windows, self.epoch_wait = 0, 0.0
        self.interval_windows, self.interval_loss, self.interval_steps = 0, 0.0, 0

    def add_step(self, windows: int, loss: float, data_wait: float) -> None:
        self.epoch_windows += windows
        self.epoch_wait += data_wait
        self.interval_windows += windows
        self.interval_loss += loss
        self.interval_steps += 1

    def take_interval(self) -> tuple[float, float]:
        """(mean loss, windows/s) since the last call; starts a new interval."""
        now = time.perf_counter()
        result = (
            self.interval_loss / max(self.interval_steps, 1),
            self.interval_windows / max(now - self.interval_start, 1e-9),
        )
        self.interval_start, self.interval_windows, self.interval_loss, self.interval_steps = now, 0, 0.0, 0
        return result

    def epoch_summary(self) -> tuple[float, float, float]:
        """(seconds, windows/s, fraction of the time spent waiting for data) of the epoch so far."""
        seconds = max(time.perf_counter() - self.epoch_start, 1e-9)
        return seconds, self.epoch_windows / seconds, self.epoch_wait / seconds


@contextlib.contextmanager
def progress_bar(run_log, enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar on the main process when stderr is a terminal and `enabled`; else None."""
    bar = None
    if run_log.active and enabled and stderr_is_terminal():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, unit="step", leave=True, desc=desc, dynamic_ncols=True)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def setup_message(cfg, model, info, data, lr: float, total_steps: int) -> str:
    """The one line that describes a run before it starts (`data` a loaders.RunData, `info` a DistInfo)."""
    world_size, val_windows = info.world_size, len(data.val_set) if data.val_set is not None else 0
    parts = [
        f"RT-1 preset {cfg.preset}: {model.num_parameters() / 1e6:.2f} M parameters",
        f"{world_size} process(es), backend {info.backend or 'none'}, device {info.device}",
        f"{len(data.train_set)} training windows, {val_windows} validation windows",
        f"{data.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
        + (f", at most {cfg.max_steps} steps" if cfg.max_steps else ""),
        f"lr schedule over {total_steps} steps in total",
        f"batch {cfg.batch_size} x {cfg.grad_accum} accum x {world_size} = "
        f"{cfg.batch_size * cfg.grad_accum * world_size} windows/step",
        f"{cfg.optimizer} lr {lr:g} (= {cfg.lr:g} x {world_size}) -> {lr * cfg.lrf:g}",
        f"trains on the {cfg.loss_reduction} loss reduction (the logged loss is the per-token mean)",
        f"augmentation {'on' if cfg.augment else 'off'}",
        f"network: {architecture(model.config.model_type)}",
        f"condition dropout {getattr(model.config, 'cond_drop_prob', 0.0):g}",
        f"pixels {model.config.pixel_processing()['pixel_scaling']}",
        f"save dir {cfg.save_dir}",
    ]
    return "; ".join(parts)


class StepReporter:
    """What the trainer reports as it trains, built once per run: each step's metrics.jsonl line, every
    --log-every steps the interval's TensorBoard scalars and progress (bar or line), each epoch's summary.

    `epoch(state)` opens an epoch: a fresh ThroughputMeter and, on a terminal, a progress bar.
    """

    def __init__(self, run_log, cfg, steps_per_epoch: int, total_steps: int, tokens_per_window: int) -> None:
        self.log, self.cfg = run_log, cfg
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.tokens_per_window = tokens_per_window
        self.meter, self.bar = ThroughputMeter(), None

    @contextlib.contextmanager
    def epoch(self, state):
        """The current epoch's meter and bar (closed on leaving)."""
        self.meter = ThroughputMeter()
        desc = f"epoch {state.epoch}/{self.cfg.epochs}"
        with progress_bar(
            self.log, self.cfg.progress, self.steps_per_epoch, state.step_in_epoch, desc
        ) as bar:
            self.bar = bar
            try:
                yield self
            finally:
                self.bar = None

    def step(self, state, loss: float, lr: float, seconds: float, batches) -> None:
        """After every optimizer step: its metrics.jsonl line, and every --log-every steps the interval's report."""
        self.meter.add_step(batches.windows, loss, batches.wait)
        self.log.record(
            "train",
            step=state.global_step,
            epoch=state.epoch,
            loss=loss,
            lr=lr,
            seconds=round(seconds, 5),
            data_wait=round(batches.wait, 5),
        )
        if state.global_step % self.cfg.log_every == 0 or state.step_in_epoch == self.steps_per_epoch:
            self.interval(state, lr)
        if self.bar is not None:
            self.bar.update()

    def interval(self, state, lr: float) -> None:
        """TensorBoard scalars of the last --log-every steps, and the bar's numbers or one progress line."""
        loss, rate = self.meter.take_interval()
        self.log.scalars(state.global_step, {"train/loss": loss, "train/lr": lr, "train/samples_per_s": rate})
        tokens = rate * self.tokens_per_window
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{lr:.2e}",
                samples_s=f"{rate:.1f}",
                tok_s=f"{tokens:.0f}",
                refresh=False,
            )
        else:  # no bar (not a terminal, or --no-progress): one line per --log-every steps carries the progress
            self.log.info(
                f"step {state.global_step}/{self.total_steps} (epoch {state.epoch}/{self.cfg.epochs}, "
                f"{state.step_in_epoch}/{self.steps_per_epoch}): loss {loss:.4f}, lr {lr:.3e}, "
                f"{rate:.1f} windows/s ({tokens:.0f} action tokens/s)"
            )

    def epoch_end(self, state) -> None:
        """The epoch's metrics.jsonl line, scalars and summary line."""
        meter = self.meter
        seconds, rate, wait = meter.epoch_summary()
        fields = {
            "steps": state.step_in_epoch,
            "samples": meter.epoch_windows,
            "seconds": round(seconds, 3),
            "samples_per_s": rate,
            "data_wait_fraction": wait,
            "data_wait_seconds": round(meter.epoch_wait, 3),
        }
        self.log.record("epoch", step=state.global_step, epoch=state.epoch, **fields)
        scalars = {"train/epoch_samples_per_s": rate, "train/data_wait_fraction": wait}
        self.log.scalars(state.global_step, scalars)
        self.log.info(
            f"epoch {state.epoch}: {meter.epoch_windows} windows in {seconds:.1f} s ({rate:.1f} windows/s, "
            f"{rate * self.tokens_per_window:.0f} action tokens/s, waiting for data {100 * wait:.1f}% of it)"
        )


def report_validation(run_log, metrics: dict, state, seconds: float) -> None:
    run_log.record("val", step=state.global_step, epoch=state.epoch, **metrics)
    per_dim = metrics["token_accuracy_per_dim"]
    scalars = {"val/loss": metrics["loss"], "val/token_accuracy": metrics["token_accuracy"]}
    scalars.update({f"val/token_accuracy/{name}": acc for name, acc in per_dim.items()})
    run_log.scalars(state.global_step, scalars)
    run_log.info(
        f"validation after step {state.global_step} (epoch {state.epoch}): loss {metrics['loss']:.4f}, "
        f"token accuracy {metrics['token_accuracy']:.4f} over {metrics['windows']} windows "
        f"({seconds:.1f} s)"
    )


__all__ = [
    "RunLog",
    "METRICS_FILE",
    "read_metrics",
    "truncate_metrics",
    "ThroughputMeter",
    "progress_bar",
    "setup_message",
    "StepReporter",
    "report_validation",
]
