"""Dropout with a cheap random mask, and dropout fused into a residual add.

PyTorch's CPU dropout draws one `bernoulli_` sample per element from a serial generator, which
costs more than the feed-forward layer it regularises. Here each element gets 16 random bits (one
64-bit draw from the same seeded generator serves four elements) and is dropped when they fall
below round(p * 65536): p is rounded to a multiple of 1/65536 (0.1 -> 0.100006) and kept values
are scaled by the exact 1 / (1 - p_rounded), so the layer stays unbiased. The mask is a float
tensor of 0 and that scale: applying it is one multiply (forward and backward), and
`residual_dropout(x, y)` = x + dropout(y) is one addcmul. Under torch.compile and on accelerators
the mask is drawn with torch.rand (exact p).
"""

from __future__ import annotations

import torch
from torch import Tensor

_LEVELS = 65536


def dropout_mask(
    shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor | None:
    """Float mask of `shape`: 0 where dropped, 1 / (1 - p) where kept; None if p rounds to 0."""
    if p >= 1.0:
        return torch.zeros(shape, device=device, dtype=dtype)
    if torch.compiler.is_compiling() or device.type != "cpu":
        # torch.compile cannot trace random_ (and fuses this anyway); accelerators draw fast.
        return (torch.rand(shape, device=device) >= p).to(dtype) * (1.0 / (1.0 - p))
    threshold = round(p * _LEVELS)
    if threshold <= 0:
        return None
    if threshold >= _LEVELS:
        return torch.zeros(shape, device=device, dtype=dtype)
    n = shape.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(shape) >= threshold - _LEVELS // 2
    scale = torch.tensor(_LEVELS / (_LEVELS - threshold), dtype=dtype, device=device)
    return torch.where(keep, scale, torch.zeros((), dtype=dtype, device=device))  # one pass


def dropout(x: Tensor, p: float, training: bool, inplace: bool = False) -> Tensor:
    """inplace=True multiplies x in place (for a fresh tensor autograd does not need, e.g. a GELU output)."""
    mask = dropout_mask(x.shape, p, x.device, x.dtype) if training and p > 0.0 else None
    if mask is None:
        return x
    return x.mul_(mask) if inplace else x * mask


def residual_dropout(x: Tensor, y: Tensor, p: float, training: bool) -> Tensor:
    """x + dropout(y) in one pass."""
    mask = dropout_mask(y.shape, p, y.device, y.dtype) if training and p > 0.0 else None
    return x + y if mask is None else torch.addcmul(x, y, mask)
