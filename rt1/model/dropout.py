"""Dropout that is cheaper on CPU.

PyTorch's CPU dropout draws one `bernoulli_` sample per element from a serial generator, which
costs more than the feed-forward layer it regularises. Here each element gets 16 random bits (one
64-bit draw from the same seeded generator serves four elements) and is dropped when they fall
below round(p * 65536): p is rounded to a multiple of 1/65536 (0.1 -> 0.100006) and kept values
are scaled by the exact 1 / (1 - p_rounded), so the layer stays unbiased. Backward keeps a bool
mask (1 byte per element). Other devices use the stock fused `F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 65536


class _MaskedScale(torch.autograd.Function):
    """y = where(keep, x, 0) * scale, backward the same on the gradient (one pass each way)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    threshold = round(p * _LEVELS)
    if threshold == 0:
        return x
    if threshold >= _LEVELS:
        return x * 0.0
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= threshold - _LEVELS // 2
    return _MaskedScale.apply(x, keep, _LEVELS / (_LEVELS - threshold))


class Dropout(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
