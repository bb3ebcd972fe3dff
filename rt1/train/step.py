"""One optimizer step and one pass of evaluation, on `rt1.model.loss` only: what the trainer, the benchmarks and
a notebook call.

    train_step   `accumulate` micro-batches: forward (autocast), the loss, backward (GradScaler; DDP no_sync
                 on all but the last), then optionally a check of the loss on every rank, gradient
                 clipping, the optimizer and scheduler steps
    evaluate     loss and token accuracy over a loader, summed over every rank's windows before dividing

Batches are the loader's dicts: "frames" uint8 (B, F, H, W, 3), "text_embed" (B, E), "action_tokens"
(B, F, 11); or chunks of consecutive windows (--chunk-windows): "frames" (T, H, W, 3), "chunk_windows" (C,) (kept
on the CPU), "text_embed" (C, E), "action_tokens" (B, F, 11). The model normalises the pixels itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from rt1.actions import ACTION_DIM_NAMES
from rt1.model import action_loss, token_correct_counts
from rt1.train import distributed as D
from rt1.train.optim import Optimisation


def amp_context(device: torch.device, amp: str):
    """autocast for --amp fp16/bf16, nothing for off."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """model.train(), with BatchNorm layers left in eval mode (running statistics) when freeze_bn."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated batch -> (uint8 frames (B, F, H, W, 3), text_embed (B, E), action_tokens (B, F, 11)) on device."""
    return tuple(batch[k].to(device, non_blocking=True) for k in ("frames", "text_embed", "action_tokens"))


def chunks_of(batch: dict) -> dict:
    """The model's chunk argument of a chunked batch ({"chunk_windows": (C,) on the CPU}), {} for windows."""
    return {"chunk_windows": batch["chunk_windows"]} if "chunk_windows" in batch else {}


@dataclass(frozen=True)
class StepSettings:
    """How `train_step` steps, besides the optimizer: the run's device and the config's step options."""

    device: torch.device  # where the batches go
    accumulate: int = 1  # micro-batches per optimizer step (--grad-accum, fewer at an epoch's end)
    loss_reduction: str = "mean"  # what the optimizer minimises (rt1.model.loss)
    amp: str = "off"  # autocast: off | fp16 | bf16
    clip_grad_norm: float | None = None  # the gradient norm's bound, None for no clipping

    @staticmethod
    def of(cfg, device: torch.device, accumulate: int) -> StepSettings:
        """A TrainConfig's step options, for `accumulate` micro-batches."""
        return StepSettings(device, accumulate, cfg.loss_reduction, cfg.amp, cfg.clip_grad_norm)


def train_step(
    model: nn.Module,
    batches: Iterator[dict],
    opt: Optimisation | torch.optim.Optimizer,
    settings: StepSettings,
    *,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    before_update: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One optimizer step over the next `settings.accumulate` batches of `batches`; -> the mean per-token loss
    () float.

    `opt` is the run's Optimisation (optimizer, scheduler, grad scaler), or a bare optimizer (no schedule, no
    scaling). The optimizer minimises `settings.loss_reduction` (rt1.model.loss), each micro-batch's loss
    scaled by 1/accumulate; the returned loss is always the per-token mean (what is logged). `no_sync` (DDP's)
    skips the gradient all-reduce on all but the last micro-batch. `before_update(loss)` runs after the
    backward passes and before any weight changes (the trainer agrees on the loss across ranks there, and
    raises on a non-finite one).
    """
    optimizer, scheduler, scaler = _parts(opt, settings.device)
    mean_loss = _backward(model, batches, scaler, settings, no_sync)
    if before_update is not None:
        before_update(mean_loss)
    if settings.clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], settings.clip_grad_norm
        )
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return mean_loss


def _parts(opt: Optimisation | torch.optim.Optimizer, device: torch.device) -> tuple:
    """(optimizer, scheduler or None, grad scaler) of `opt`; a disabled scaler for a bare optimizer."""
    if isinstance(opt, Optimisation):
        return opt.optimizer, opt.scheduler, opt.scaler
    return opt, None, torch.amp.GradScaler(device.type, enabled=False)


def _backward(model: nn.Module, batches, scaler, settings: StepSettings, no_sync) -> torch.Tensor:
    """The forward and backward passes of `settings.accumulate` micro-batches; -> their mean per-token loss."""
    device, accumulate = settings.device, settings.accumulate
    loss_sum = torch.zeros((), device=device)
    for micro in range(accumulate):
        batch = next(batches)
        frames, text, tokens = to_device(batch, device)
        last = micro == accumulate - 1
        with contextlib.nullcontext() if (last or no_sync is None) else no_sync():
            with amp_context(device, settings.amp):
                logits = model(frames, text, **chunks_of(batch))
                loss = action_loss(logits, tokens, settings.loss_reduction)
            scaler.scale(loss * (1.0 / accumulate)).backward()
        loss_sum += (
            loss.detach().float()
            if settings.loss_reduction == "mean"
            else action_loss(logits.detach(), tokens).float()
        )
    return loss_sum / accumulate


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, amp: str = "off") -> dict:
    """Mean per-token loss and token accuracy over `loader` (all ranks' windows); {} when it has none. `model` is the
    bare RT1 (evaluation needs no gradient sync).

    -> {"loss", "token_accuracy", "token_accuracy_per_dim": {action dim: accuracy}, "windows"}. Puts the model in
    eval mode; the caller restores its training mode.
    """
    model.eval()
    num_actions = len(ACTION_DIM_NAMES)
    sums = torch.zeros(2 + num_actions, dtype=torch.float64, device=device)  # [loss, frames, correct per dim]
    for batch in loader:
        frames, text, tokens = to_device(batch, device)
        with amp_context(device, amp):
            logits = model(frames, text, **chunks_of(batch))
        sums[0] += action_loss(logits, tokens).double() * tokens.numel()  # the per-token mean, summed
        correct, counted = token_correct_counts(logits, tokens)
        sums[1] += counted.double()
        sums[2:] += correct.double()
    D.all_reduce_sum(sums)
    counted = float(sums[1])  # frames evaluated
    if counted == 0:
        return {}
    return {
        "loss": float(sums[0]) / (counted * num_actions),
        "token_accuracy": float(sums[2:].sum()) / (counted * num_actions),
        "token_accuracy_per_dim": dict(zip(ACTION_DIM_NAMES, (sums[2:] / counted).tolist())),
        "windows": int(round(counted / model.config.num_frames)),
    }


__all__ = [
    "StepSettings",
    "chunks_of",
    "amp_context",
    "set_train_mode",
    "to_device",
    "train_step",
    "evaluate",
]
