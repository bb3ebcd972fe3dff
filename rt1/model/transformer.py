"""Causal transformer over the learned tokens of a window of frames, FiLM-conditioned on the text.

    tokens (B, F, n, D) + sinusoidal time embedding of the frame index
      --depth x [ x + Attn(FiLM(LN x)), x + FF(FiLM(LN x)) ]--> (B, F, n, D)

The attention's keys and values come from `RT1Config.transformer_kv_source`:
    "modulated": q, k, v all from FiLM(LN x)                    (rt1, tiny)
    "input":     q from FiLM(LN x), k and v from the raw layer input x  (original: robotic-transformer-pytorch)

Attention is causal over time: a token of frame t attends to all tokens of frames 0..t and to
none of frames t+1.. . Attention is multi-query (transformer_heads query heads sharing one key and
value head of transformer_dim_head), as in the original PyTorch RT-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.config import RT1Config
from rt1.model.checkpointing import checkpointed
from rt1.model.dropout import dropout, residual_dropout
from rt1.model.film import FiLM, modulate

# ---- helpers ---------------------------------------------------------------------------------------


def sinusoidal_time_embedding(
    num_frames: int, dim: int, device=None, dtype=torch.float32, temperature: float = 10000.0
) -> Tensor:
    """(num_frames, dim): [sin(t * w_i), cos(t * w_i)], w_i = temperature ** -(i / (dim/2 - 1))."""
    half = dim // 2
    t = torch.arange(num_frames, device=device, dtype=torch.float32)
    omega = torch.arange(half, device=device, dtype=torch.float32) / max(half - 1, 1)
    angles = t[:, None] * temperature ** -omega[None, :]
    emb = torch.cat((angles.sin(), angles.cos()), dim=1)
    if emb.shape[1] < dim:  # odd dim: pad with zeros
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.to(dtype)


def frame_causal_mask(num_frames: int, tokens_per_frame: int, device=None) -> Tensor:
    """(F*n, F*n) bool, True where query token i may attend to key token j (frame(j) <= frame(i))."""
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
    return frame[None, :] <= frame[:, None]


# ---- leaf modules ----------------------------------------------------------------------------------


class CausalAttention(nn.Module):
    """Pre-norm FiLM-conditioned multi-query self-attention; x (B, T, D) -> (B, T, D), no residual.

    modulation (B, 2 * D) comes from self.film; mask (T, T) bool, True = may attend. Dropout on
    the attention probabilities here; the caller adds the residual with output dropout.
    kv_source "modulated": k, v from FiLM(LN x) like q; "input": k, v from x itself (same weights).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cond_dim: int,
        film_mult: int,
        dropout: float,
        kv_source: str = "modulated",
    ) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout, self.kv_source = heads, dim_head, dropout, kv_source
        self.norm = nn.LayerNorm(dim, bias=False)
        self.film = FiLM(cond_dim, dim, film_mult)
        # q: heads * dim_head, then one shared k and one shared v head (fused projection).
        self.to_qkv = nn.Linear(dim, (heads + 2) * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: Tensor, modulation: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        h, dh = self.heads, self.dim_head
        if self.kv_source == "modulated":
            q, k, v = self.to_qkv(modulate(self.norm(x), modulation)).split((h * dh, dh, dh), dim=-1)
        else:  # the fused weight's query rows see FiLM(LN x), its key/value rows the raw x
            w = self.to_qkv.weight
            q = F.linear(modulate(self.norm(x), modulation), w[: h * dh])
            k, v = F.linear(x, w[h * dh :]).split((dh, dh), dim=-1)
        q = q.reshape(b, t, h, dh).transpose(1, 2)  # (B, h, T, dh)
        k = k.unsqueeze(1).expand(b, h, t, dh)  # one key/value head shared by the h query heads
        v = v.unsqueeze(1).expand(b, h, t, dh)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.to_out(out.transpose(1, 2).reshape(b, t, h * dh))


class ConditionedFeedForward(nn.Module):
    """Pre-norm FiLM-conditioned MLP; x (B, T, D), modulation (B, 2 * D) -> (B, T, D), no residual."""

    def __init__(self, dim: int, mult: int, cond_dim: int, film_mult: int, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim, bias=False)
        self.film = FiLM(cond_dim, dim, film_mult)
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        h = F.gelu(self.fc1(modulate(self.norm(x), modulation)))
        return self.fc2(dropout(h, self.dropout, self.training, inplace=True))


# ---- top model -------------------------------------------------------------------------------------


class TransformerLayer(nn.ModuleList):
    """[attention, feed-forward]: x (B, T, D) -> x + Attn(...) -> + FF(...), each with output dropout."""

    def __init__(self, config: RT1Config) -> None:
        c = config
        d = c.embed_dim
        super().__init__(
            [
                CausalAttention(
                    d,
                    c.transformer_heads,
                    c.transformer_dim_head,
                    c.cond_dim,
                    c.film_mult,
                    c.transformer_dropout,
                    c.transformer_kv_source,
                ),
                ConditionedFeedForward(d, c.ff_mult, c.cond_dim, c.film_mult, c.transformer_dropout),
            ]
        )
        self.dropout = c.transformer_dropout

    def forward(self, x: Tensor, attn_modulation: Tensor, ff_modulation: Tensor, mask: Tensor) -> Tensor:
        attn, ff = self
        x = residual_dropout(x, attn(x, attn_modulation, mask), self.dropout, self.training)
        return residual_dropout(x, ff(x, ff_modulation), self.dropout, self.training)


class Transformer(nn.Module):
    """tokens (B, F, n, D), modulations (one (B, 2 * D) per sub-layer) -> (B, F, n, D), causal over frames."""

    def __init__(self, config: RT1Config) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(TransformerLayer(c) for _ in range(c.transformer_depth))
        self.activation_checkpointing = c.activation_checkpointing

    def modulations(self, cond: Tensor) -> tuple[Tensor, ...]:
        """cond (B, cond_dim) -> FiLM modulations (B, 2 * D) of attn 0, ff 0, attn 1, ff 1, ..."""
        return tuple(sub.film(cond) for layer in self.layers for sub in layer)

    def forward(self, tokens: Tensor, modulations: tuple[Tensor, ...]) -> Tensor:
        b, f, n, d = tokens.shape
        x = tokens + sinusoidal_time_embedding(f, d, tokens.device, tokens.dtype)[:, None, :]
        x = x.reshape(b, f * n, d)
        mask = frame_causal_mask(f, n, tokens.device)
        if len(modulations) != 2 * len(self.layers):
            raise ValueError(f"expected {2 * len(self.layers)} modulations, got {len(modulations)}")
        for i, layer in enumerate(self.layers):
            args = (x, modulations[2 * i], modulations[2 * i + 1], mask)
            x = checkpointed(layer, *args) if self.activation_checkpointing else layer(*args)
        return x.view(b, f, n, d)
