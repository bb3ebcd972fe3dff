"""Action-token loss and accuracy.

logits (B, F, num_actions, num_bins), tokens (B, F, num_actions) integer in [0, num_bins).
RT-1 trains on every frame of the window. `action_loss` reductions (`LOSS_REDUCTIONS`):

    "mean"                     the mean cross-entropy over all B x F x num_actions tokens
    "sum_frames_mean_tokens"   the original pipeline's: for each of the B x F frames the mean over its
                               num_actions tokens, summed over the frames (= B * F x "mean"; 48x at B=8, F=6)
`reduction` is checked once, by TrainConfig.loss_reduction (rt1.config.LOSS_REDUCTIONS).
`token_correct_counts` returns plain tensors (correct per action dimension, number of frames) so a
trainer can all_reduce them across DDP ranks before dividing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, tokens: Tensor) -> None:
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree: "
            f"expected logits = tokens shape + (num_bins,)"
        )


def action_loss(logits: Tensor, tokens: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of every frame's action tokens -> scalar, reduced as `reduction` says (see above)."""
    _check(logits, tokens)
    flat_logits, flat_tokens = logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1).long()
    if reduction == "mean":
        return F.cross_entropy(flat_logits, flat_tokens)
    ce = F.cross_entropy(flat_logits, flat_tokens, reduction="none")
    return ce.view(-1, tokens.shape[-1]).mean(dim=-1).sum()


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
