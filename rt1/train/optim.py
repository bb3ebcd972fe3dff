"""The optimizer and its learning-rate schedule: the one place the schedule is defined.

    lr(step) = lr x world_size x lr_factor(step, total, cfg)      per optimizer step, `total` = schedule_length

The factor is a cosine from 1 at step 0 to `cfg.lrf` at the last step (a warmup would be a field of
TrainConfig read here). A resumed run rebuilds its scheduler at the saved step with this run's lr and
length, so a changed --lr, --epochs or number of processes continues on the new schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rt1.config import TrainConfig
from rt1.train.checkpoint import TrainState


def lr_factor(step: int, total: int, cfg) -> float:
    """lr multiplier of the optimizer step after `step` steps: 1 at step 0, cfg.lrf at step total - 1 and after."""
    if total <= 1:
        return 1.0
    x = min(step, total - 1) / (total - 1)
    return cfg.lrf + (1.0 - cfg.lrf) * 0.5 * (1.0 + math.cos(math.pi * x))


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


def peak_lr(cfg: TrainConfig, world_size: int) -> float:
    """The optimizer's lr: --lr per process times the number of processes, as the original."""
    return cfg.lr * world_size


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float, total: int, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of `lr` over `total` steps, positioned after `step` steps (a resume)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = lr  # LambdaLR's base lr; a restored optimizer carries the old run's
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg), last_epoch=step - 1
    )


def build_grad_scaler(cfg: TrainConfig, device: torch.device, log=None) -> torch.amp.GradScaler:
    if cfg.amp == "fp16" and device.type != "cuda" and log is not None:
        log.warning("--amp fp16 on CPU: autocast runs float16 CPU kernels (slow); bf16 is the CPU choice")
    return torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")


@dataclass
class Optimisation:
    """The optimizer, its schedule and grad scaler, and the numbers they were built from."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None  # None: a constant lr
    scaler: torch.amp.GradScaler
    lr: float
    total_steps: int

    @staticmethod
    def build(
        model: nn.Module,
        cfg: TrainConfig,
        world_size: int,
        device: torch.device,
        total_steps: int,
        contents: dict | None = None,
        step: int = 0,
        log=None,
    ) -> Optimisation:
        """Fresh, or restored from a checkpoint's `contents` and positioned after `step` steps of this run's
        schedule (its --lr, world size and length may differ from the checkpoint's)."""
        lr = peak_lr(cfg, world_size)
        optimizer, scaler = build_optimizer(model, cfg, lr), build_grad_scaler(cfg, device, log)
        if contents is not None:
            optimizer.load_state_dict(contents["optimizer"])
            if scaler.is_enabled() and contents.get("scaler"):
                scaler.load_state_dict(contents["scaler"])
        return Optimisation(
            optimizer, build_scheduler(optimizer, cfg, lr, total_steps, step), scaler, lr, total_steps
        )

    @property
    def lr_now(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


__all__ = [
    "Optimisation",
    "lr_factor",
    "schedule_length",
    "peak_lr",
    "build_optimizer",
    "build_scheduler",
    "build_grad_scaler",
]
