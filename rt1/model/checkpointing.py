"""Activation checkpointing (`RT1Config.activation_checkpointing`): store a block's input, not its insides.

    out = checkpointed(block, x, modulation)      # = block(x, modulation), same value and gradients

In training with gradients enabled, the block runs under torch.utils.checkpoint (use_reentrant=False):
its intermediate activations are dropped after the forward and recomputed in the backward, so only the
inputs of every MaxViT block and transformer layer stay alive between the passes (plus one block's
activations while its backward runs). Otherwise the block is simply called.

Two things make the recomputation the same function as the first pass:
  - random numbers: the checkpoint restores the RNG state the forward started with, so the dropout
    masks are drawn again identically (rt1.model.dropout uses the default generator);
  - BatchNorm running statistics: training-mode BatchNorm updates them as a side effect, which a
    recomputation would do a second time. The recomputation runs inside `_keep_batch_norm_statistics`,
    which puts every running statistic of the block back as the forward left it (the outputs use the
    batch statistics, so they do not change).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _batch_norm_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [
        buffer
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]


@contextmanager
def _keep_batch_norm_statistics(buffers: list[torch.Tensor]):
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def checkpointed(block: nn.Module, *args):
    """block(*args), with its activations recomputed in the backward pass when training with gradients."""
    if not (block.training and torch.is_grad_enabled()):
        return block(*args)
    buffers = _batch_norm_buffers(block)
    return checkpoint(
        block,
        *args,
        use_reentrant=False,
        context_fn=lambda: (nullcontext(), _keep_batch_norm_statistics(buffers)),
    )
