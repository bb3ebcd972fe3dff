"""The training loop: `train(cfg)` runs one training job in this process (one rank of it under DDP).

    model   RT1(cfg.model_config) -> SyncBatchNorm (NCCL only) -> DDP (world > 1) -> torch.compile
    data    RT1Dataset(train_index) via EpochSampler/DistributedSampler; uint8 video normalised on the device
    step    grad_accum micro-batches (DDP no_sync on all but the last), autocast (--amp), GradScaler (fp16),
            one all_reduce of [loss, non-finite flag per rank] (the logged loss, and every rank agrees
            to stop on a non-finite loss before the optimizer step), optional grad clipping,
            optimizer step, per-step cosine lr (lr * world_size -> lrf * lr * world_size)
    epoch   validation (every val_every epochs and the last): loss and token accuracy summed over the
            windows of ALL ranks (unpadded shards) with all_reduce; checkpoint-{epoch}.pt; last N kept
    stop    at --epochs, or --max-steps (a mid-epoch checkpoint then, resumable exactly)

Resume: `cfg.resume`, else the newest checkpoint-*.pt in save_dir. Model, optimizer, scheduler, grad
scaler, `TrainState` counters and every rank's RNG state are restored, the epoch's sampler order is
rebuilt and the steps already done are skipped, so an interrupted run continues as if it had never
stopped.

Failures: `NonFiniteLossError` (step, epoch, ranks) before any update with the bad gradient; the
last checkpoint on disk stays the last good one. Other exceptions propagate; `train` always destroys
the process group and closes its files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rt1.actions import ACTION_DIM_NAMES
from rt1.config import RT1Config, TrainConfig
from rt1.data.dataset import RT1Dataset
from rt1.data.index import check_train_val
from rt1.errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NON_FINITE_LOSS, EXIT_TERMINATED, EXIT_USAGE, RT1Error,
                        acknowledge_stop, one_line, signal_name, signals_deferred, stop_requested)
from rt1.io import DirectoryLock, DirectoryLockedError, outermost_missing, remove_empty_dirs
from rt1.progress import stderr_is_terminal
from rt1.model import RT1, action_loss, normalize_video, token_correct_counts
from rt1.train import checkpoint as ckpt
from rt1.train import distributed as D
from rt1.train.checkpoint import TrainState
from rt1.train.loaders import batches_per_epoch, make_train_loader, make_val_loader, shutdown_workers
from rt1.train.runlog import RunLog

# Fields of TrainConfig that may change between a run and its resumption without a warning.
_RESUME_FREE_FIELDS = {"epochs", "max_steps", "resume", "num_workers", "log_every", "val_every", "progress",
                       "tensorboard", "dist_timeout", "keep_checkpoints", "device", "data_dir", "train_index",
                       "val_index", "save_dir", "compile", "save_every"}
LOCK_FILE = "train.lock"


class NonFiniteLossError(RT1Error, RuntimeError):
    """The training loss became NaN/inf; no optimizer step was taken with it."""

    exit_code = EXIT_NON_FINITE_LOSS

    def __init__(self, step: int, epoch: int, ranks: list[int], last_checkpoint: Path | None):
        self.step, self.epoch, self.ranks, self.last_checkpoint = step, epoch, ranks, last_checkpoint
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint is not None
                else "no checkpoint was written before it")
        super().__init__(f"non-finite training loss (NaN or inf) at step {step} (epoch {epoch}) on {where}: "
                         f"training stopped before updating the weights; {kept}")


class TrainSetupError(RT1Error, ValueError):
    """The data does not fit the model (image size, empty index...)."""

    exit_code = EXIT_ERROR


class ResumeError(RT1Error, RuntimeError):
    """A checkpoint does not fit this run (different model, world size mismatch that matters...)."""

    exit_code = EXIT_ERROR


class SaveDirInUseError(RT1Error, RuntimeError):
    """Another live run holds --save-dir's lock; the message names it (host, PID, command)."""

    exit_code = EXIT_USAGE


class StoppedBySignal(RT1Error):
    """SIGTERM/SIGINT stopped the run at a step boundary, after a checkpoint of that step was saved."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED
        super().__init__(message)


@dataclass
class TrainResult:
    """What `train` returns (on every rank)."""

    save_dir: Path
    global_step: int
    epoch: int
    epoch_complete: bool
    last_checkpoint: Path | None
    val_metrics: dict = field(default_factory=dict)
    stopped_by: str = "epochs"  # epochs | max_steps | already_done


# ---- helpers --------------------------------------------------------------------------------------


def cosine_factor(step: int, total_steps: int, lrf: float) -> float:
    """lr multiplier for the optimizer step after `step` steps: 1 at step 0, lrf at the last step."""
    if total_steps <= 1:
        return 1.0
    x = min(step, total_steps - 1) / (total_steps - 1)
    return lrf + (1.0 - lrf) * 0.5 * (1.0 + math.cos(math.pi * x))


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """model.train(), with BatchNorm layers left in eval mode (running statistics) when freeze_bn."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_context(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device, pixel_scaling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated batch -> (scaled video (B, 3, F, H, W), text_embed (B, E), action_tokens (B, F, 11))."""
    video = normalize_video(batch["video"].to(device, non_blocking=True), scaling=pixel_scaling)
    return (video, batch["text_embed"].to(device, non_blocking=True),
            batch["action_tokens"].to(device, non_blocking=True))


def check_data_fits(dataset: RT1Dataset, config: RT1Config, what: str, cfg: TrainConfig) -> None:
    if len(dataset) == 0:
        raise TrainSetupError(f"{what} index {dataset.index_csv} lists no windows")
    shape = tuple(dataset[0]["video"].shape)
    if shape[-2:] != (config.image_size, config.image_size) or shape[1] != config.num_frames:
        raise TrainSetupError(
            f"{what} windows from {cfg.data_dir} are {shape[1]} frames of {shape[-2]}x{shape[-1]}, but preset "
            f"{cfg.preset!r} expects {config.num_frames} frames of {config.image_size}x{config.image_size}: "
            f"preprocess with DataPreprocess_batch_*.py --image-size {config.image_size} and index with "
            f"data_emerge.py --window {config.num_frames}")


def build_model(config: RT1Config, cfg: TrainConfig, info: D.DistInfo, log, weights: dict | None = None):
    """-> (bare RT1 on the device, DDP wrapper or None, the module to call for training)."""
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = RT1(config)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise ResumeError(f"{cfg.resume or cfg.save_dir}: its weights do not fit the current RT1 code "
                              f"({one_line(e)}); resume with the code that wrote it, or start a new --save-dir"
                              ) from None
    if cfg.sync_bn and info.distributed:
        if D.supports_sync_batchnorm(info):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning(f"--syncBN: SyncBatchNorm needs CUDA (NCCL); with the {info.backend} backend on "
                        f"{info.device.type} each process normalises with its own batch statistics")
    # The model runs its convolutions channels_last; matching the weights avoids a copy of every conv
    # gradient into the DDP buckets (and DDP's "grad strides do not match bucket view strides" warning).
    model = model.to(info.device, memory_format=torch.channels_last)
    ddp = None
    if info.distributed:
        # With condition dropout off the null text embedding gets no gradient: tell DDP.
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=config.cond_drop_prob == 0.0, gradient_as_bucket_view=True)
    forward = ddp if ddp is not None else model
    return model, ddp, torch.compile(forward) if cfg.compile else forward


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, total_steps: int, device: torch.device):
    """-> (optimizer at `lr`, per-step cosine scheduler to lrf * lr over total_steps, GradScaler)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps, cfg.lrf))
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")


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
        result = (self.interval_loss / max(self.interval_steps, 1),
                  self.interval_windows / max(now - self.interval_start, 1e-9))
        self.interval_start, self.interval_windows, self.interval_loss, self.interval_steps = now, 0, 0.0, 0
        return result

    def epoch_summary(self) -> tuple[float, float, float]:
        """(seconds, windows/s, fraction of the time spent waiting for data) of the epoch so far."""
        seconds = max(time.perf_counter() - self.epoch_start, 1e-9)
        return seconds, self.epoch_windows / seconds, self.epoch_wait / seconds


def find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (decided on rank 0, the same path on every rank)."""
    path = None
    if D.is_main_process():
        latest = cfg.resume if cfg.resume is not None else ckpt.latest_checkpoint(cfg.save_dir)
        path = str(latest) if latest is not None else None
    path = D.broadcast_object(path)
    if path is not None and not Path(path).is_file():
        raise ResumeError(f"rank {D.get_rank()} cannot see checkpoint {path}: resuming a multi-node run needs "
                          "--save-dir (or --resume) on a filesystem every node shares")
    return Path(path) if path is not None else None


def check_resume_fits(contents: dict, path: Path, cfg: TrainConfig, model_config: RT1Config, log) -> None:
    saved, current = contents["model_config"], model_config.to_dict()
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ResumeError(f"{path} was trained with a different model config ({details}); use another --save-dir "
                          "or the same --preset/--cond-drop-prob")
    old, new = contents.get("train_args", {}), cfg.to_dict()
    changed = sorted(k for k in cfg.field_names() if k not in _RESUME_FREE_FIELDS and k in old and old[k] != new[k])
    if changed:
        log.warning("resuming with changed settings: " + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed))


# ---- the run --------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, local_rank: int | None = None) -> TrainResult:
    """Run the training job described by `cfg` in this process; returns when it ends on every rank.

    Starts the process group itself when a launcher set RANK/WORLD_SIZE (see rt1.train.distributed)
    and always destroys it before returning or raising.
    """
    info = D.init_distributed(cfg.device, cfg.dist_timeout, local_rank)
    lock, created, started = None, None, False
    try:
        lock, created = take_save_dir(cfg)
        resume_path = find_resume(cfg)
        contents = ckpt.load_checkpoint(resume_path) if resume_path is not None else None
        with Trainer(cfg, info, resume_path, contents) as trainer:
            started = True
            return trainer.run()
    finally:
        if lock is not None:
            lock.release()
            if created is not None and not started:  # refused during set-up: remove the directories it made
                remove_empty_dirs(cfg.save_dir, created)
        D.cleanup()


def take_save_dir(cfg: TrainConfig) -> tuple[DirectoryLock | None, Path | None]:
    """Collective: rank 0 creates --save-dir if needed and takes its lock before any rank touches it.

    -> (the lock on rank 0, None elsewhere; the outermost directory this run created, or None). Every rank raises
    SaveDirInUseError when another live run holds the lock. A stale lock (its process is dead) is taken
    over with a warning. Leftover temporaries of killed writes are removed only once the lock is ours.
    """
    lock, created, outcome = None, None, None
    if D.is_main_process():
        created = outermost_missing(cfg.save_dir)
        try:
            cfg.save_dir.mkdir(parents=True, exist_ok=True)
            lock = DirectoryLock(cfg.save_dir, LOCK_FILE, what="training run")
            stale = lock.acquire()
            if stale is not None:
                logging.getLogger("rt1.train").warning(
                    f"took over the stale lock {lock.path} of a run that is gone ({stale})")
            ckpt.remove_stale_temporaries(cfg.save_dir)
        except (DirectoryLockedError, OSError) as e:
            outcome = one_line(e) if isinstance(e, DirectoryLockedError) else f"{cfg.save_dir}: {one_line(e)}"
            if lock is not None:
                lock.release()
            if created is not None:
                remove_empty_dirs(cfg.save_dir, created)
            lock = None
    outcome = D.broadcast_object(outcome)
    if outcome is not None:
        raise SaveDirInUseError(outcome)
    return lock, created


def schedule_length(state: TrainState, steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of the whole run: those done before the current epoch (at whatever steps per epoch
    the earlier run had), plus the remaining epochs at this run's steps per epoch; at most max_steps.

    A run resumed after a complete epoch with another batch size, data or number of processes then ends
    exactly where its cosine schedule reaches lrf x lr.
    """
    if state.epoch_complete:
        done_before, first_epoch = state.global_step, state.epoch + 1
    else:
        done_before, first_epoch = state.global_step - state.step_in_epoch, state.epoch
    total = done_before + max(0, epochs - first_epoch + 1) * steps_per_epoch
    return max(1, min(total, max_steps if max_steps is not None else total))


class Trainer:
    """One run on this rank: built once from the config (and a checkpoint), then `run()`."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, resume_path: Path | None, contents: dict | None) -> None:
        self.cfg, self.info, self.device = cfg, info, info.device
        self.log = RunLog.open(cfg.save_dir, resume_step=None if contents is None else int(contents["global_step"]),
                               tensorboard=cfg.tensorboard)
        self.train_set = self.val_set = None
        try:
            self._build(resume_path, contents)
        except BaseException:
            self.__exit__()
            raise

    def _build(self, resume_path: Path | None, contents: dict | None) -> None:
        cfg, info = self.cfg, self.info
        self.model_config = cfg.model_config
        if cfg.amp == "fp16" and self.device.type != "cuda":
            self.log.warning("--amp fp16 on CPU: autocast runs float16 CPU kernels (slow); bf16 is the CPU choice")
        if contents is not None:
            check_resume_fits(contents, resume_path, cfg, self.model_config, self.log)

        # Data first, so a wrong image size fails before the model is built.
        pin = self.device.type == "cuda"
        check_train_val(cfg.train_index, cfg.val_index)  # not the same file, not swapped, one build
        self.train_set = RT1Dataset(cfg.train_index, cfg.data_dir, augment=cfg.augment)
        check_data_fits(self.train_set, self.model_config, "training", cfg)
        self.train_loader, self.train_sampler = make_train_loader(
            self.train_set, rank=info.rank, world_size=info.world_size, batch_size=cfg.batch_size,
            shuffle=cfg.shuffle, seed=cfg.seed, num_workers=cfg.num_workers, pin_memory=pin)
        self.val_loader = None
        if cfg.val_index is not None and cfg.val_every > 0:
            self.val_set = RT1Dataset(cfg.val_index, cfg.data_dir, augment=False)
            check_data_fits(self.val_set, self.model_config, "validation", cfg)
            self.val_loader = make_val_loader(self.val_set, rank=info.rank, world_size=info.world_size,
                                              batch_size=cfg.batch_size, num_workers=cfg.num_workers, pin_memory=pin)
        self.batches_per_epoch = batches_per_epoch(len(self.train_set), info.world_size, cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        resumed = ckpt.train_state_of(contents) if contents is not None else TrainState()
        self.total_steps = schedule_length(resumed, self.steps_per_epoch, cfg.epochs, cfg.max_steps)

        self.model, self.ddp, self.forward_model = build_model(
            self.model_config, cfg, info, self.log, None if contents is None else contents["model"])
        self.lr = cfg.lr * info.world_size
        self.optimizer, self.scheduler, self.scaler = build_optimizer(
            self.model, cfg, self.lr, self.total_steps, self.device)
        self.state = TrainState()
        self.last_checkpoint: Path | None = None
        self.saved_step: int | None = None
        seed_everything(cfg.seed * 1009 + info.rank + 1)  # per-rank stream (condition dropout)
        if contents is not None:
            self._restore(contents, resume_path)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        for loader in (getattr(self, "train_loader", None), getattr(self, "val_loader", None)):
            shutdown_workers(loader)  # workers ignore SIGTERM: never leave them to the interpreter's exit
        self.log.close()
        for dataset in (self.train_set, self.val_set):
            if dataset is not None:
                dataset.close()

    def _restore(self, contents: dict, path: Path) -> None:
        cfg, info = self.cfg, self.info
        self.optimizer.load_state_dict(contents["optimizer"])
        self.scheduler.load_state_dict(dict(contents["scheduler"]))
        # This run's lr (--lr x world size) and schedule length (--epochs/--max-steps) may differ from the
        # checkpoint's: continue at the current step of this run's schedule.
        self.scheduler.base_lrs = [self.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.lr
            group["lr"] = self.lr * cosine_factor(self.scheduler.last_epoch, self.total_steps, cfg.lrf)
        if self.scaler.is_enabled() and contents.get("scaler"):
            self.scaler.load_state_dict(contents["scaler"])
        self.state = ckpt.train_state_of(contents)
        saved_spe = int(contents.get("steps_per_epoch", self.steps_per_epoch))
        if saved_spe != self.steps_per_epoch and not self.state.epoch_complete:
            raise ResumeError(f"{path} stopped in the middle of epoch {self.state.epoch} with {saved_spe} steps per "
                              f"epoch; this run has {self.steps_per_epoch} (other data, batch size, grad accumulation "
                              "or number of processes), so the position in the epoch cannot be resumed: resume with "
                              "the same settings, or from an end-of-epoch checkpoint")
        if int(contents.get("total_steps", self.total_steps)) != self.total_steps:
            self.log.warning(f"the lr schedule now spans {self.total_steps} steps (checkpoint: "
                             f"{contents['total_steps']}; {self.steps_per_epoch} steps/epoch now, "
                             f"{saved_spe} in the checkpoint): the lr continues from step {self.state.global_step} "
                             f"of the new schedule and reaches {cfg.lrf:g} x lr at step {self.total_steps}")
        rng = contents.get("rng") or []
        if len(rng) == info.world_size:
            ckpt.restore_rng_state(rng[info.rank])
        else:
            self.log.warning(f"checkpoint has RNG states of {len(rng)} processes, this run has {info.world_size}: "
                             "reseeding (the run is not bit-identical to an uninterrupted one)")
            seed_everything(cfg.seed * 1009 + info.rank + 1 + self.state.global_step)
        self.last_checkpoint = path
        self.log.info(f"resumed from {path} at step {self.state.global_step} (epoch {self.state.epoch}, step "
                      f"{self.state.step_in_epoch} of it)")
        if self.state.epoch_complete:
            self.state.start_next_epoch()

    # ---- epochs -----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        self._log_setup()
        if self._done():
            self.log.info(f"nothing to do: the run in {cfg.save_dir} already reached step {state.global_step}")
            return self._result("already_done")
        self.log.start()
        with signals_deferred():  # SIGTERM/SIGINT: stop at the next step boundary, with a checkpoint
            result = self._run_epochs()
            acknowledge_stop()  # a signal during the very last save: the run is complete anyway
        return result

    def _run_epochs(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        stopped_by = "epochs"
        self.saved_step = state.global_step if self.last_checkpoint is not None else None
        while state.epoch <= cfg.epochs:
            self._stop_if_requested(self._agree_on_stop())
            stop = self._train_epoch()
            if stop is not None:
                self._stop_if_requested(stop)
            finished_epoch = state.step_in_epoch >= self.steps_per_epoch
            hit_max = cfg.max_steps is not None and state.global_step >= cfg.max_steps
            if finished_epoch or hit_max:
                state.epoch_complete = finished_epoch
                if self.val_loader is not None and (state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs
                                                    or hit_max):
                    state.metrics = self._validate()
                self._save()
            if hit_max:
                stopped_by = "max_steps"
                self.log.record("stop", step=state.global_step, epoch=state.epoch,
                                reason=f"--max-steps {cfg.max_steps}")
                self.log.info(f"stopped at --max-steps {cfg.max_steps}")
                break
            state.start_next_epoch()
        else:
            # Loop ran out: the counters point at the epoch after the last one.
            state.epoch, state.epoch_complete = cfg.epochs, True
        return self._result(stopped_by)

    def _agree_on_stop(self) -> int | None:
        """Collective: the stop signal any rank received (SIGTERM wins over SIGINT), or None."""
        flags = torch.zeros(2, device=self.device, dtype=torch.float64)
        received = stop_requested()
        if received is not None:
            flags[0 if received == signal.SIGTERM else 1] = 1.0
        D.all_reduce_sum(flags)
        return signal.SIGTERM if flags[0] > 0 else signal.SIGINT if flags[1] > 0 else None

    def _stop_if_requested(self, signum: int | None) -> None:
        """Every rank agreed on a stop signal: save this step (unless saved already) and raise StoppedBySignal."""
        if signum is None:
            return
        state = self.state
        if self.saved_step != state.global_step and state.global_step > 0:
            self._save()
        acknowledge_stop()
        self.log.record("stop", step=state.global_step, epoch=state.epoch, reason=signal_name(signum))
        self.log.flush()
        what = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated by SIGTERM"
        where = (f"{self.last_checkpoint} holds step {state.global_step}" if self.last_checkpoint is not None
                 else "no checkpoint was written (no step was done)")
        raise StoppedBySignal(signum, f"{what} at step {state.global_step} (epoch {state.epoch}, step "
                                      f"{state.step_in_epoch} of {self.steps_per_epoch}): {where}; rerun the same "
                                      "command to resume")

    def _log_setup(self) -> None:
        cfg, info = self.cfg, self.info
        self.log.info(
            f"RT-1 preset {cfg.preset}: {self.model.num_parameters() / 1e6:.2f} M parameters; {info.world_size} "
            f"process(es), backend {info.backend or 'none'}, device {self.device}; {len(self.train_set)} training "
            f"windows, {len(self.val_set) if self.val_set is not None else 0} validation windows; "
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
            + (f", at most {cfg.max_steps} steps" if cfg.max_steps else "")
            + f"; lr schedule over {self.total_steps} steps in total"
            + f"; batch {cfg.batch_size} x {cfg.grad_accum} accum x {info.world_size} = "
              f"{cfg.batch_size * cfg.grad_accum * info.world_size} windows/step; {cfg.optimizer} lr {self.lr:g} "
              f"(= {cfg.lr:g} x {info.world_size}) -> {self.lr * cfg.lrf:g}; trains on the {cfg.loss_reduction} loss "
              f"reduction (the logged loss is the per-token mean); augmentation {'on' if cfg.augment else 'off'}; "
              f"condition dropout {self.model_config.cond_drop_prob:g}; pixels {self.model_config.pixel_scaling}; "
              f"save dir {cfg.save_dir}")

    def _done(self) -> bool:
        if self.cfg.max_steps is not None and self.state.global_step >= self.cfg.max_steps:
            return True
        return self.state.epoch > self.cfg.epochs

    def _result(self, stopped_by: str) -> TrainResult:
        state = self.state
        if stopped_by == "already_done" and state.step_in_epoch == 0 and state.epoch > 1:
            epoch, complete = state.epoch - 1, True
        else:
            epoch, complete = state.epoch, state.epoch_complete
        return TrainResult(self.cfg.save_dir, state.global_step, epoch, complete, self.last_checkpoint,
                           state.metrics, stopped_by)

    def _train_epoch(self) -> int | None:
        """Train the rest of the current epoch; returns the stop signal every rank agreed on, if any."""
        cfg, state, log = self.cfg, self.state, self.log
        skip_batches = state.step_in_epoch * cfg.grad_accum
        self.train_sampler.set_epoch(state.epoch, skip=skip_batches * cfg.batch_size)
        set_train_mode(self.model, cfg.freeze_bn)
        remaining_batches = self.batches_per_epoch - skip_batches
        steps_left = self.steps_per_epoch - state.step_in_epoch
        if cfg.max_steps is not None:
            steps_left = min(steps_left, cfg.max_steps - state.global_step)
        if steps_left <= 0:
            return None
        meter, batches, stop = ThroughputMeter(), iter(self.train_loader), None
        with self._progress_bar() as bar:
            for step in range(steps_left):
                step_start, micro_batches = time.perf_counter(), min(cfg.grad_accum, remaining_batches)
                loss_sum, windows, data_wait = torch.zeros((), device=self.device), 0, 0.0
                for micro in range(micro_batches):
                    wait_start = time.perf_counter()
                    batch = next(batches)
                    data_wait += time.perf_counter() - wait_start
                    loss_sum += self._forward_backward(batch, sync=micro == micro_batches - 1,
                                                       scale=1.0 / micro_batches)
                    windows += batch["video"].shape[0] * self.info.world_size
                remaining_batches -= micro_batches
                loss, stop = self._agree_on_loss(loss_sum / micro_batches)
                lr = self.optimizer.param_groups[0]["lr"]
                self._optimizer_step()
                state.global_step, state.step_in_epoch = state.global_step + 1, state.step_in_epoch + 1
                meter.add_step(windows, loss, data_wait)
                log.record("train", step=state.global_step, epoch=state.epoch, loss=loss, lr=lr,
                           seconds=round(time.perf_counter() - step_start, 5), data_wait=round(data_wait, 5))
                if state.global_step % cfg.log_every == 0 or state.step_in_epoch == self.steps_per_epoch:
                    self._log_interval(meter, lr, bar)
                if bar is not None:
                    bar.update()
                if stop is not None:
                    if step < steps_left - 1:
                        break
                    stop = None  # the last step of this call: end it normally (validation, save); the run
                    # loop's next check (the flag is still set) stops without another save
                if (cfg.save_every and state.global_step % cfg.save_every == 0
                        and state.step_in_epoch < self.steps_per_epoch
                        and not (cfg.max_steps is not None and state.global_step >= cfg.max_steps)):
                    self._save()  # mid-epoch: this epoch's checkpoint, overwritten atomically
        del batches
        if stop is None:
            self._log_epoch(meter)
        return stop

    @contextlib.contextmanager
    def _progress_bar(self):
        bar = None
        if self.log.active and self.cfg.progress and stderr_is_terminal():
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.state.step_in_epoch, unit="step", leave=True,
                       desc=f"epoch {self.state.epoch}/{self.cfg.epochs}", dynamic_ncols=True)
        try:
            yield bar
        finally:
            if bar is not None:
                bar.close()

    def _log_interval(self, meter: ThroughputMeter, lr: float, bar) -> None:
        loss, rate = meter.take_interval()
        self.log.scalars(self.state.global_step, {"train/loss": loss, "train/lr": lr, "train/samples_per_s": rate})
        tokens = rate * self.model_config.num_frames * self.model_config.num_actions
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", tok_s=f"{tokens:.0f}",
                            refresh=False)
        else:  # no bar (not a terminal, or --no-progress): one line per --log-every steps carries the progress
            state = self.state
            self.log.info(f"step {state.global_step}/{self.total_steps} (epoch {state.epoch}/{self.cfg.epochs}, "
                          f"{state.step_in_epoch}/{self.steps_per_epoch}): loss {loss:.4f}, lr {lr:.3e}, "
                          f"{rate:.1f} windows/s ({tokens:.0f} action tokens/s)")

    def _log_epoch(self, meter: ThroughputMeter) -> None:
        seconds, rate, wait = meter.epoch_summary()
        state = self.state
        self.log.record("epoch", step=state.global_step, epoch=state.epoch, steps=state.step_in_epoch,
                        samples=meter.epoch_windows, seconds=round(seconds, 3), samples_per_s=rate,
                        data_wait_fraction=wait, data_wait_seconds=round(meter.epoch_wait, 3))
        self.log.scalars(state.global_step, {"train/epoch_samples_per_s": rate, "train/data_wait_fraction": wait})
        tokens = rate * self.model_config.num_frames * self.model_config.num_actions
        self.log.info(f"epoch {state.epoch}: {meter.epoch_windows} windows in {seconds:.1f} s ({rate:.1f} windows/s, "
                      f"{tokens:.0f} action tokens/s, waiting for data {100 * wait:.1f}% of it)")

    # ---- one step ---------------------------------------------------------------------------------

    def _forward_backward(self, batch: dict, *, sync: bool, scale: float) -> torch.Tensor:
        """Backward of the configured loss reduction; returns the mean per-token loss (what is logged)."""
        video, text, tokens = to_device(batch, self.device, self.model_config.pixel_scaling)
        no_sync = contextlib.nullcontext() if (sync or self.ddp is None) else self.ddp.no_sync()
        with no_sync:
            with amp_context(self.device, self.cfg.amp):
                logits = self.forward_model(video, text)
                loss = action_loss(logits, tokens, self.cfg.loss_reduction)
            self.scaler.scale(loss * scale).backward()
        if self.cfg.loss_reduction == "mean":
            return loss.detach().float()
        return action_loss(logits.detach(), tokens).float()

    def _agree_on_loss(self, loss: torch.Tensor) -> tuple[float, int | None]:
        """All-reduce [loss, SIGTERM flag, SIGINT flag, one non-finite flag per rank]: every rank learns the mean
        loss, who failed, and whether any rank was asked to stop (then all stop after this same step)."""
        info = self.info
        finite = bool(torch.isfinite(loss))
        stats = torch.zeros(3 + info.world_size, device=self.device, dtype=torch.float64)
        stats[0] = loss.double() if finite else 0.0
        received = stop_requested()
        if received is not None:
            stats[1 if received == signal.SIGTERM else 2] = 1.0
        stats[3 + info.rank] = 0.0 if finite else 1.0
        D.all_reduce_sum(stats)
        bad = [r for r in range(info.world_size) if stats[3 + r] > 0]
        if bad:
            raise NonFiniteLossError(self.state.global_step + 1, self.state.epoch, bad, self.last_checkpoint)
        stop = signal.SIGTERM if stats[1] > 0 else signal.SIGINT if stats[2] > 0 else None
        return float(stats[0]) / info.world_size, stop

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    # ---- validation and checkpoints ---------------------------------------------------------------

    @torch.no_grad()
    def _validate(self) -> dict:
        model, state = self.model, self.state  # the bare module: eval needs no gradient sync
        model.eval()
        num_actions = self.model_config.num_actions
        sums = torch.zeros(2 + num_actions, dtype=torch.float64, device=self.device)  # [loss, frames, correct/dim]
        start = time.perf_counter()
        for batch in self.val_loader:
            video, text, tokens = to_device(batch, self.device, self.model_config.pixel_scaling)
            with amp_context(self.device, self.cfg.amp):
                logits = model(video, text)
            sums[0] += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1),
                                       reduction="sum").double()
            correct, frames = token_correct_counts(logits, tokens)
            sums[1] += frames.double()
            sums[2:] += correct.double()
        D.all_reduce_sum(sums)
        set_train_mode(self.model, self.cfg.freeze_bn)
        frames = float(sums[1])
        if frames == 0:
            return {}
        per_dim = (sums[2:] / frames).tolist()
        metrics = {
            "loss": float(sums[0]) / (frames * num_actions),
            "token_accuracy": float(sums[2:].sum()) / (frames * num_actions),
            "token_accuracy_per_dim": dict(zip(ACTION_DIM_NAMES, per_dim)),
            "windows": int(round(frames / self.model_config.num_frames)),
        }
        self.log.record("val", step=state.global_step, epoch=state.epoch, **metrics)
        scalars = {"val/loss": metrics["loss"], "val/token_accuracy": metrics["token_accuracy"]}
        scalars.update({f"val/token_accuracy/{name}": acc for name, acc in zip(ACTION_DIM_NAMES, per_dim)})
        self.log.scalars(state.global_step, scalars)
        self.log.info(f"validation after step {state.global_step} (epoch {state.epoch}): loss {metrics['loss']:.4f}, "
                      f"token accuracy {metrics['token_accuracy']:.4f} over {metrics['windows']} windows "
                      f"({time.perf_counter() - start:.1f} s)")
        return metrics

    def _save(self) -> None:
        """Collective: gathers every rank's RNG state, rank 0 writes atomically and prunes."""
        rng = D.all_gather_object(ckpt.capture_rng_state())
        path = ckpt.checkpoint_path(self.cfg.save_dir, self.state.epoch)
        if D.is_main_process():
            ckpt.save_checkpoint(path, ckpt.checkpoint_contents(
                self.state, model=self.model, model_config=self.model_config.to_dict(),
                train_args=self.cfg.to_dict(), optimizer=self.optimizer, scheduler=self.scheduler,
                scaler=self.scaler, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, rng=rng))
            removed = ckpt.prune_checkpoints(self.cfg.save_dir, self.cfg.keep_checkpoints)
            self.log.flush()
            self.log.info(f"saved {path}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else ""))
        self.last_checkpoint = path
        self.saved_step = self.state.global_step
        D.barrier()


__all__ = ["train", "TrainResult", "NonFiniteLossError", "ResumeError", "TrainSetupError", "SaveDirInUseError",
           "StoppedBySignal", "schedule_length", "take_save_dir", "cosine_factor",
           "set_train_mode", "build_model", "build_optimizer", "to_device", "ThroughputMeter"]
