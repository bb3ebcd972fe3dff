"""The training loop: `train(cfg)` runs one training job in this process (one rank of it under DDP).

    model   RT1(RT1Config.preset(cfg.preset)) -> SyncBatchNorm (NCCL only) -> DDP (world > 1) -> torch.compile
    data    RT1Dataset(train_index) via EpochSampler/DistributedSampler; uint8 video normalised on the device
    step    grad_accum micro-batches (DDP no_sync on all but the last), autocast (--amp), GradScaler (fp16),
            one all_reduce of [loss, non-finite flag per rank] (the logged loss, and every rank agrees
            to stop on a non-finite loss before the optimizer step), optional grad clipping,
            optimizer step, per-step cosine lr (lr * world_size -> lrf * lr * world_size)
    epoch   validation (every val_every epochs and the last): loss and token accuracy summed over the
            windows of ALL ranks (unpadded shards) with all_reduce; checkpoint-{epoch}.pt; last N kept
    stop    at --epochs, or --max-steps (a mid-epoch checkpoint then, resumable exactly)

Resume: `cfg.resume`, else the newest checkpoint-*.pt in save_dir. Model, optimizer, scheduler, grad
scaler, counters and every rank's RNG state are restored, the epoch's sampler order is rebuilt and the
steps already done are skipped, so an interrupted run continues as if it had never stopped.

Failures: `NonFiniteLossError` (step, epoch, ranks) before any update with the bad gradient; the
last checkpoint on disk stays the last good one. Other exceptions propagate; `train` always destroys
the process group and closes its files.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rt1.actions import ACTION_DIM_NAMES
from rt1.model import RT1, RT1Config, action_loss, normalize_video, token_correct_counts
from rt1.train import checkpoint as ckpt
from rt1.train import distributed as D
from rt1.train.config import TrainConfig
from rt1.train.data import batches_per_epoch, make_train_loader, make_val_loader
from rt1.train.runlog import RunLog

# Fields of TrainConfig that may change between a run and its resumption without a warning.
_RESUME_FREE_FIELDS = {"epochs", "max_steps", "resume", "num_workers", "log_every", "val_every", "progress",
                       "tensorboard", "dist_timeout", "keep_checkpoints", "device", "data_dir", "train_index",
                       "val_index", "save_dir", "compile"}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; no optimizer step was taken with it."""

    def __init__(self, step: int, epoch: int, ranks: list[int], last_checkpoint: Path | None):
        self.step, self.epoch, self.ranks, self.last_checkpoint = step, epoch, ranks, last_checkpoint
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint is not None
                else "no checkpoint was written before it")
        super().__init__(f"non-finite training loss (NaN or inf) at step {step} (epoch {epoch}) on {where}: "
                         f"training stopped before updating the weights; {kept}")


class TrainSetupError(ValueError):
    """The data does not fit the model (image size, empty index...)."""


class ResumeError(RuntimeError):
    """A checkpoint does not fit this run (different model, world size mismatch that matters...)."""


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


def _amp_context(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _model_config(cfg: TrainConfig) -> RT1Config:
    overrides = {} if cfg.cond_drop_prob is None else {"cond_drop_prob": cfg.cond_drop_prob}
    return RT1Config.preset(cfg.preset, **overrides)


def _check_image_size(dataset, config: RT1Config, what: str, cfg: TrainConfig) -> None:
    if len(dataset) == 0:
        raise TrainSetupError(f"{what} index {getattr(dataset, 'index_csv', '?')} lists no windows")
    shape = tuple(dataset[0]["video"].shape)
    if shape[-2:] != (config.image_size, config.image_size) or shape[1] != config.num_frames:
        raise TrainSetupError(
            f"{what} windows from {cfg.data_dir} are {shape[1]} frames of {shape[-2]}x{shape[-1]}, but preset "
            f"{cfg.preset!r} expects {config.num_frames} frames of {config.image_size}x{config.image_size}: "
            f"preprocess with DataPreprocess_batch_*.py --image-size {config.image_size}")


def _find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (decided on rank 0, the same path on every rank)."""
    path = None
    if D.is_main_process():
        if cfg.resume is not None:
            path = str(cfg.resume)
        else:
            latest = ckpt.latest_checkpoint(cfg.save_dir)
            path = str(latest) if latest is not None else None
    path = D.broadcast_object(path)
    if path is not None and not Path(path).is_file():
        raise ResumeError(f"rank {D.get_rank()} cannot see checkpoint {path}: resuming a multi-node run needs "
                          "--save-dir (or --resume) on a filesystem every node shares")
    return Path(path) if path is not None else None


def _check_resume_fits(state: dict, path: Path, cfg: TrainConfig, model_config: RT1Config, log) -> None:
    saved = state["model_config"]
    current = model_config.to_dict()
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ResumeError(f"{path} was trained with a different model config ({details}); use another --save-dir "
                          "or the same --preset/--cond-drop-prob")
    old = state.get("train_args", {})
    changed = sorted(k for k in cfg.field_names()
                     if k not in _RESUME_FREE_FIELDS and k in old and old[k] != cfg.to_dict()[k])
    if changed:
        log.warning("resuming with changed settings: " + ", ".join(f"{k} {old[k]!r} -> {cfg.to_dict()[k]!r}"
                                                                    for k in changed))


# ---- the run --------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, local_rank: int | None = None) -> TrainResult:
    """Run the training job described by `cfg` in this process; returns when it ends on every rank.

    Starts the process group itself when a launcher set RANK/WORLD_SIZE (see rt1.train.distributed)
    and always destroys it before returning or raising.
    """
    info = D.init_distributed(cfg.device, cfg.dist_timeout, local_rank)
    try:
        return _Trainer(cfg, info).run()
    finally:
        D.cleanup()


class _Trainer:
    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        self.cfg, self.info, self.device = cfg, info, info.device

    # ---- setup ------------------------------------------------------------------------------------

    def _build(self) -> None:
        from rt1.data import RT1Dataset

        cfg, info = self.cfg, self.info
        self.log = RunLog.open(cfg.save_dir, resume_step=None if self.resume_state is None
                               else int(self.resume_state["global_step"]), tensorboard=cfg.tensorboard)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            self.log.warning("--amp fp16 on CPU: autocast runs float16 CPU kernels (slow); bf16 is the CPU choice")
        self.model_config = _model_config(cfg)
        if self.resume_state is not None:
            _check_resume_fits(self.resume_state, self.resume_path, cfg, self.model_config, self.log)

        # Data (built before the model so a wrong image size fails fast).
        self.train_set = RT1Dataset(cfg.train_index, cfg.data_dir, augment=cfg.augment)
        _check_image_size(self.train_set, self.model_config, "training", cfg)
        self.val_set = None
        if cfg.val_index is not None and cfg.val_every > 0:
            self.val_set = RT1Dataset(cfg.val_index, cfg.data_dir, augment=False)
            _check_image_size(self.val_set, self.model_config, "validation", cfg)
        pin = self.device.type == "cuda"
        self.train_loader, self.train_sampler = make_train_loader(
            self.train_set, rank=info.rank, world_size=info.world_size, batch_size=cfg.batch_size,
            shuffle=cfg.shuffle, seed=cfg.seed, num_workers=cfg.num_workers, pin_memory=pin)
        self.val_loader = None if self.val_set is None else make_val_loader(
            self.val_set, rank=info.rank, world_size=info.world_size, batch_size=cfg.batch_size,
            num_workers=cfg.num_workers, pin_memory=pin)
        nb = batches_per_epoch(len(self.train_set), info.world_size, cfg.batch_size)
        self.batches_per_epoch = nb
        self.steps_per_epoch = math.ceil(nb / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        # Model: the same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(cfg.seed)
        model = RT1(self.model_config)
        if self.resume_state is not None:
            try:
                model.load_state_dict(self.resume_state["model"])
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise ResumeError(f"{self.resume_path}: its weights do not fit the current RT1 code ({first}); "
                                  "resume with the code that wrote it, or start a new --save-dir") from None
        if cfg.sync_bn and info.distributed:
            if D.supports_sync_batchnorm(info):
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log.warning(f"--syncBN: SyncBatchNorm needs CUDA (NCCL); with the {info.backend} backend on "
                                 f"{self.device.type} each process normalises with its own batch statistics")
        # The model runs its convolutions channels_last; matching the weights avoids a copy of every conv
        # gradient into the DDP buckets (and DDP's "grad strides do not match bucket view strides" warning).
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.ddp = None
        forward_model: nn.Module = self.model
        if info.distributed:
            # With condition dropout off the null text embedding gets no gradient: tell DDP.
            unused = self.model_config.cond_drop_prob == 0.0
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused, gradient_as_bucket_view=True)
            forward_model = self.ddp
        self.forward_model = torch.compile(forward_model) if cfg.compile else forward_model

        # Optimisation.
        self.lr = cfg.lr * info.world_size
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=self.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=cfg.weight_decay)
        total, lrf = self.total_steps, cfg.lrf
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine_factor(s, total, lrf))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

        # Counters.
        self.epoch, self.step_in_epoch, self.global_step, self.epoch_complete = 1, 0, 0, False
        self.last_checkpoint: Path | None = None
        self.val_metrics: dict = {}
        seed_everything(cfg.seed * 1009 + info.rank + 1)  # per-rank stream (condition dropout)
        if self.resume_state is not None:
            self._restore(self.resume_state)
        self.resume_state = None  # free the memory

    def _restore(self, state: dict) -> None:
        cfg, info = self.cfg, self.info
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(dict(state["scheduler"]))
        # This run's lr (--lr x world size) and schedule length (--epochs/--max-steps) may differ from the
        # checkpoint's: continue at the current step of this run's schedule.
        self.scheduler.base_lrs = [self.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.lr
            group["lr"] = self.lr * cosine_factor(self.scheduler.last_epoch, self.total_steps, cfg.lrf)
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.epoch_complete = bool(state["epoch_complete"])
        self.val_metrics = dict(state.get("metrics", {}))
        saved_spe = int(state.get("steps_per_epoch", self.steps_per_epoch))
        if saved_spe != self.steps_per_epoch and not self.epoch_complete:
            raise ResumeError(f"{self.resume_path} stopped in the middle of epoch {self.epoch} with {saved_spe} steps per "
                              f"epoch; this run has {self.steps_per_epoch} (other data, batch size, grad accumulation or "
                              "number of processes), so the position in the epoch cannot be resumed: resume with the "
                              "same settings, or from an end-of-epoch checkpoint")
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            self.log.warning(f"the lr schedule now spans {self.total_steps} steps (checkpoint: {state['total_steps']}): "
                             "the lr continues from step "
                             f"{self.global_step} of the new schedule")
        rng = state.get("rng") or []
        if len(rng) == info.world_size:
            ckpt.restore_rng_state(rng[info.rank])
        else:
            self.log.warning(f"checkpoint has RNG states of {len(rng)} processes, this run has {info.world_size}: "
                             "reseeding (the run is not bit-identical to an uninterrupted one)")
            seed_everything(cfg.seed * 1009 + info.rank + 1 + self.global_step)
        self.last_checkpoint = self.resume_path
        if self.epoch_complete:
            self.epoch, self.step_in_epoch, self.epoch_complete = self.epoch + 1, 0, False

    # ---- main loop --------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        if D.is_main_process():
            cfg.save_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(cfg.save_dir)
        D.barrier()
        self.resume_path = _find_resume(cfg)
        self.resume_state = None
        if self.resume_path is not None:
            self.resume_state = ckpt.load_checkpoint(self.resume_path, map_location="cpu")
        self.log = None
        try:
            self._build()
            return self._loop()
        finally:
            if self.log is not None:
                self.log.close()
            for ds in (getattr(self, "train_set", None), getattr(self, "val_set", None)):
                if ds is not None:
                    ds.close()

    def _loop(self) -> TrainResult:
        cfg, info, log = self.cfg, self.info, self.log
        params = self.model.num_parameters()
        log.info(f"RT-1 preset {cfg.preset}: {params / 1e6:.2f} M parameters; {info.world_size} process(es), "
                 f"backend {info.backend or 'none'}, device {self.device}; {len(self.train_set)} training windows, "
                 f"{len(self.val_set) if self.val_set is not None else 0} validation windows; "
                 f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
                 + (f", at most {cfg.max_steps} steps" if cfg.max_steps else "")
                 + f"; batch {cfg.batch_size} x {cfg.grad_accum} accum x {info.world_size} = "
                   f"{cfg.batch_size * cfg.grad_accum * info.world_size} windows/step; {cfg.optimizer} lr "
                   f"{self.lr:g} (= {cfg.lr:g} x {info.world_size}) -> {self.lr * cfg.lrf:g}; save dir {cfg.save_dir}")
        if self.last_checkpoint is not None:
            log.info(f"resumed from {self.last_checkpoint} at step {self.global_step} (epoch {self.epoch}, "
                     f"step {self.step_in_epoch} of it)")
        if self._done():
            log.info(f"nothing to do: the run in {cfg.save_dir} already reached step {self.global_step}")
            return self._result("already_done")

        stopped_by = "epochs"
        while self.epoch <= cfg.epochs:
            self._train_epoch()
            finished_epoch = self.step_in_epoch >= self.steps_per_epoch
            hit_max = cfg.max_steps is not None and self.global_step >= cfg.max_steps
            if finished_epoch or hit_max:
                self.epoch_complete = finished_epoch
                if self.val_loader is not None and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs
                                                    or hit_max):
                    self.val_metrics = self._validate()
                self._save()
            if hit_max:
                stopped_by = "max_steps"
                log.record("stop", step=self.global_step, epoch=self.epoch, reason=f"--max-steps {cfg.max_steps}")
                log.info(f"stopped at --max-steps {cfg.max_steps}")
                break
            self.epoch, self.step_in_epoch, self.epoch_complete = self.epoch + 1, 0, False
        else:
            # Loop ran out: the counters point at the epoch after the last one.
            self.epoch, self.epoch_complete = cfg.epochs, True
        return self._result(stopped_by)

    def _done(self) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
            return True
        return self.epoch > cfg.epochs

    def _result(self, stopped_by: str) -> TrainResult:
        if stopped_by == "already_done" and self.step_in_epoch == 0 and self.epoch > 1:
            epoch, complete = self.epoch - 1, True
        else:
            epoch, complete = self.epoch, self.epoch_complete
        return TrainResult(self.cfg.save_dir, self.global_step, epoch, complete, self.last_checkpoint,
                           self.val_metrics, stopped_by)

    # ---- one epoch --------------------------------------------------------------------------------

    def _train_epoch(self) -> None:
        cfg, info, log = self.cfg, self.info, self.log
        skip_batches = self.step_in_epoch * cfg.grad_accum
        self.train_sampler.set_epoch(self.epoch, skip=skip_batches * cfg.batch_size)
        set_train_mode(self.model, cfg.freeze_bn)
        remaining_batches = self.batches_per_epoch - skip_batches
        steps_left = self.steps_per_epoch - self.step_in_epoch
        if cfg.max_steps is not None:
            steps_left = min(steps_left, cfg.max_steps - self.global_step)

        bar = None
        if log.active and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch}/{cfg.epochs}",
                       unit="step", dynamic_ncols=True, leave=True)
        epoch_start = time.perf_counter()
        data_wait = 0.0
        samples_done = 0
        window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
        iterator = iter(self.train_loader)
        frames_tokens = self.model_config.num_frames * self.model_config.num_actions
        try:
            for _ in range(steps_left):
                step_start = time.perf_counter()
                step_wait = 0.0
                group = min(cfg.grad_accum, remaining_batches)
                loss_sum = torch.zeros((), device=self.device)
                batch_windows = 0
                for micro in range(group):
                    t0 = time.perf_counter()
                    batch = next(iterator)
                    step_wait += time.perf_counter() - t0
                    loss = self._forward_backward(batch, last=micro == group - 1, scale=1.0 / group)
                    loss_sum += loss
                    batch_windows += batch["video"].shape[0]
                remaining_batches -= group
                mean_loss = self._agree_on_loss(loss_sum / group)
                lr_used = self.optimizer.param_groups[0]["lr"]
                self._optimizer_step()
                self.global_step += 1
                self.step_in_epoch += 1
                step_samples = batch_windows * info.world_size
                samples_done += step_samples
                data_wait += step_wait
                log.record("train", step=self.global_step, epoch=self.epoch, loss=mean_loss, lr=lr_used,
                           seconds=round(time.perf_counter() - step_start, 5), data_wait=round(step_wait, 5))
                window_loss += mean_loss
                window_steps += 1
                window_samples += step_samples
                if self.global_step % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    rate = window_samples / elapsed
                    log.scalars(self.global_step, {"train/loss": window_loss / window_steps, "train/lr": lr_used,
                                                   "train/samples_per_s": rate})
                    if bar is not None:
                        bar.set_postfix(loss=f"{window_loss / window_steps:.4f}", lr=f"{lr_used:.2e}",
                                        samples_s=f"{rate:.1f}", tok_s=f"{rate * frames_tokens:.0f}", refresh=False)
                    window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
            del iterator
        seconds = time.perf_counter() - epoch_start
        wait_fraction = data_wait / max(seconds, 1e-9)
        rate = samples_done / max(seconds, 1e-9)
        log.record("epoch", step=self.global_step, epoch=self.epoch, steps=self.step_in_epoch, samples=samples_done,
                   seconds=round(seconds, 3), samples_per_s=rate, data_wait_fraction=wait_fraction,
                   data_wait_seconds=round(data_wait, 3))
        log.scalars(self.global_step, {"train/epoch_samples_per_s": rate, "train/data_wait_fraction": wait_fraction})
        log.info(f"epoch {self.epoch}: {samples_done} windows in {seconds:.1f} s ({rate:.1f} windows/s, "
                 f"{rate * frames_tokens:.0f} action tokens/s, waiting for data {100 * wait_fraction:.1f}% of it)")

    def _forward_backward(self, batch: dict, *, last: bool, scale: float) -> torch.Tensor:
        dev = self.device
        video = normalize_video(batch["video"].to(dev, non_blocking=True))
        text = batch["text_embed"].to(dev, non_blocking=True)
        tokens = batch["action_tokens"].to(dev, non_blocking=True)
        sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
        with sync:
            with _amp_context(dev, self.cfg.amp):
                logits = self.forward_model(video, text)
                loss = action_loss(logits, tokens)
            self.scaler.scale(loss * scale).backward()
        return loss.detach().float()

    def _agree_on_loss(self, loss: torch.Tensor) -> float:
        """All-reduce [loss, one non-finite flag per rank]: every rank learns the mean loss and who failed."""
        info = self.info
        finite = bool(torch.isfinite(loss))
        stats = torch.zeros(1 + info.world_size, device=self.device, dtype=torch.float64)
        stats[0] = loss.double() if finite else 0.0
        stats[1 + info.rank] = 0.0 if finite else 1.0
        D.all_reduce_sum(stats)
        bad = [r for r in range(info.world_size) if stats[1 + r] > 0]
        if bad:
            raise NonFiniteLossError(self.global_step + 1, self.epoch, bad, self.last_checkpoint)
        return float(stats[0]) / info.world_size

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    # ---- validation -------------------------------------------------------------------------------

    @torch.no_grad()
    def _validate(self) -> dict:
        cfg, log = self.cfg, self.log
        model = self.model  # the bare module: eval needs no gradient sync
        model.eval()
        num_actions = self.model_config.num_actions
        # [loss sum over tokens, frames, correct per action dimension...]
        sums = torch.zeros(2 + num_actions, dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for batch in self.val_loader:
            video = normalize_video(batch["video"].to(self.device, non_blocking=True))
            text = batch["text_embed"].to(self.device, non_blocking=True)
            tokens = batch["action_tokens"].to(self.device, non_blocking=True)
            with _amp_context(self.device, cfg.amp):
                logits = model(video, text)
            flat = logits.reshape(-1, logits.shape[-1]).float()
            sums[0] += F.cross_entropy(flat, tokens.reshape(-1), reduction="sum").double()
            correct, frames = token_correct_counts(logits, tokens)
            sums[1] += frames.double()
            sums[2:] += correct.double()
        D.all_reduce_sum(sums)
        set_train_mode(self.model, cfg.freeze_bn)
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
        log.record("val", step=self.global_step, epoch=self.epoch, **metrics)
        scalars = {"val/loss": metrics["loss"], "val/token_accuracy": metrics["token_accuracy"]}
        scalars.update({f"val/token_accuracy/{name}": acc for name, acc in zip(ACTION_DIM_NAMES, per_dim)})
        log.scalars(self.global_step, scalars)
        log.info(f"validation after step {self.global_step} (epoch {self.epoch}): loss {metrics['loss']:.4f}, token "
                 f"accuracy {metrics['token_accuracy']:.4f} over {metrics['windows']} windows "
                 f"({time.perf_counter() - start:.1f} s)")
        return metrics

    # ---- checkpoints ------------------------------------------------------------------------------

    def _save(self) -> None:
        """Collective: gathers every rank's RNG state, rank 0 writes atomically and prunes."""
        cfg = self.cfg
        rng = D.all_gather_object(ckpt.capture_rng_state())
        path = ckpt.checkpoint_path(cfg.save_dir, self.epoch)
        if D.is_main_process():
            state = {
                "format": ckpt.CHECKPOINT_FORMAT,
                "format_version": ckpt.CHECKPOINT_FORMAT_VERSION,
                "model": ckpt.unwrap_model(self.model).state_dict(),
                "model_config": self.model_config.to_dict(),
                "train_args": cfg.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "epoch": self.epoch,
                "epoch_complete": self.epoch_complete,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "world_size": self.info.world_size,
                "rng": rng,
                "metrics": self.val_metrics,
                "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-loadable
            }
            ckpt.save_checkpoint(path, state)
            removed = ckpt.prune_checkpoints(cfg.save_dir, cfg.keep_checkpoints)
            self.log.flush()
            self.log.info(f"saved {path}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else ""))
        self.last_checkpoint = path
        D.barrier()


__all__ = ["train", "TrainResult", "NonFiniteLossError", "ResumeError", "TrainSetupError", "cosine_factor", "set_train_mode"]
