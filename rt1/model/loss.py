"""Action-token loss and accuracy.

logits (B, F, num_actions, num_bins), tokens (B, F, num_actions) integer in [0, num_bins).
RT-1 trains on every frame of the window: one cross-entropy over all B x F x num_actions tokens.
`token_correct_counts` returns plain tensors (correct per action dimension, number of frames) so a
trainer can all_reduce them across DDP ranks before dividing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, tokens: Tensor) -> None:
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree: "
                         f"expected logits = tokens shape + (num_bins,)")


def action_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean cross-entropy over every frame and action token -> scalar."""
    _check(logits, tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1).long())


@torch.no_grad()
def token_correct_counts(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """-> (correct (num_actions,) int64: argmax hits per action dimension, total () int64: frames counted)."""
    _check(logits, tokens)
    hits = logits.argmax(dim=-1) == tokens.long()
    correct = hits.reshape(-1, hits.shape[-1]).sum(dim=0)
    total = torch.tensor(hits.numel() // hits.shape[-1], device=logits.device, dtype=torch.int64)
    return correct, total


@torch.no_grad()
def token_accuracy(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """-> (overall accuracy () float, per-dimension accuracy (num_actions,) float)."""
    correct, total = token_correct_counts(logits, tokens)
    per_dim = correct.double() / total.clamp(min=1)
    return per_dim.mean().float(), per_dim.float()
