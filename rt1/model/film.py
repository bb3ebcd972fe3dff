"""Text conditioning: the shared text stem, condition dropout, FiLM layers and precomputed modulations.

    text_embeds (N, text_embed_dim) --TextConditioner--> cond (N, cond_dim)
    cond --FiLM generator of one layer--> modulation (N, 2 * dim) = [scale, shift]
    x (N, ..., dim) --modulate--> x * (1 + scale) + shift

Every FiLM layer has its own small MLP generator whose last layer starts at zero, so an untrained
FiLM layer is exactly the identity. The modulations depend on the instruction only, so the model
computes all of them once per sample (`Conditioning`), shares them across the frames of a window,
and the policy reuses them for a whole episode. Classifier-free guidance replaces the instruction
embedding by a learned null embedding (`TextConditioner.null_text_embed`) before the stem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# ---- helpers ---------------------------------------------------------------------------------------


def modulate(x: Tensor, modulation: Tensor) -> Tensor:
    """x (N, ..., dim), modulation (N, 2 * dim) -> x * (1 + scale) + shift, (N, ..., dim)."""
    scale, shift = modulation.chunk(2, dim=-1)
    shape = (modulation.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return torch.addcmul(shift.reshape(shape), x, (scale + 1.0).reshape(shape))


@dataclass(frozen=True)
class Conditioning:
    """All FiLM modulations of a model for N instructions (from its `condition`).

    encoder:     one (N, 2 * width) tensor per FiLM layer of the image encoder, in order (MaxViT: one per
                 block; Google's EfficientNet: one per MBConv block, then the 1x1 projection's)
    transformer: one (N, 2 * embed_dim) tensor per transformer sub-layer (attn, ff, attn, ff, ...); empty
                 for a decoder that is not conditioned (Google's)
    """

    encoder: tuple[Tensor, ...]
    transformer: tuple[Tensor, ...]

    @property
    def batch(self) -> int:
        return (self.encoder + self.transformer)[0].shape[0]

    def repeat_interleave(self, repeats: int | Tensor) -> Conditioning:
        """Each row repeated `repeats` times in place (e.g. once per frame of its window); a (N,) int64 tensor
        repeats row i repeats[i] times (e.g. once per frame of its chunk)."""
        if isinstance(repeats, Tensor):  # an index built on the CPU: no device sync for the output size
            index = torch.repeat_interleave(torch.arange(len(repeats)), repeats.cpu())
            return Conditioning(
                tuple(m.index_select(0, index.to(m.device, non_blocking=True)) for m in self.encoder),
                tuple(m.index_select(0, index.to(m.device, non_blocking=True)) for m in self.transformer),
            )
        if repeats == 1:
            return self
        return Conditioning(
            tuple(m.repeat_interleave(repeats, dim=0) for m in self.encoder),
            tuple(m.repeat_interleave(repeats, dim=0) for m in self.transformer),
        )


# ---- leaf modules ----------------------------------------------------------------------------------


class TextConditioner(nn.Module):
    """Instruction embedding -> conditioning vector shared by every FiLM generator, plus the null embedding."""

    def __init__(self, text_embed_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.null_text_embed = nn.Parameter(torch.randn(text_embed_dim))
        self.stem = nn.Sequential(nn.Linear(text_embed_dim, cond_dim), nn.SiLU())

    def drop(self, text_embeds: Tensor, prob: float) -> Tensor:
        """Replace each row of text_embeds (N, E) by the null embedding with probability `prob`."""
        if prob <= 0.0:
            return text_embeds
        null = self.null_text_embed.to(text_embeds.dtype)
        if prob >= 1.0:
            return null.expand_as(text_embeds)
        drop = torch.rand(text_embeds.shape[0], 1, device=text_embeds.device) < prob
        return torch.where(drop, null, text_embeds)

    def forward(self, text_embeds: Tensor) -> Tensor:
        """(N, text_embed_dim) -> (N, cond_dim)"""
        return self.stem(text_embeds)


class FiLM(nn.Module):
    """The FiLM generator of one layer: cond (N, cond_dim) -> modulation (N, 2 * dim), zero at init."""

    def __init__(self, cond_dim: int, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_dim, dim * mult), nn.SiLU(), nn.Linear(dim * mult, dim * 2))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond: Tensor) -> Tensor:
        return self.net(cond)
