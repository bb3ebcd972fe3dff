"""Google's RT-1 decoder (robotics_transformer/transformer.py + the sequence logic of transformer_network.py).

    image tokens (B, F, n, 512) -> sequence (B, F * (n + A), 512): per step t, [n image tokens of frame t]
    [A action slots of step t] (transformer_network.py L630-646), A = 11 action tokens
      x = Linear_d(tokens) + Linear_d(one_hot(position))      (transformer.py L156-161; d = model_dim)
      num_layers x pre-LayerNorm block:                       (transformer.py L70-88, LayerNorm eps 1e-6)
          x += MHA(LN1(x))            heads x key_dim, back to d, dropout on the attention probabilities
          x += Dropout(Linear_d(LN2(x)))   a single linear feed-forward, no activation
      logits = Linear_vocab(x)                                 (no final LayerNorm)
    -> action logits (B, F, A, vocab): action token k of step t is read one position earlier, at
       t * (n + A) + n + k - 1 (transformer_network.py L370-371, L307-316)

Action slots: Google embeds the action tokens and then zeroes the embedding (L635, `b/260260205`), so a
slot's input is the token embedding of a zero vector (its bias) plus its position: the decoder never sees
action values, and `action_token_embedding` (kept for Google's checkpoint) has no effect on the output.
Attention mask (L192-212): causal, except that an action slot attends to no action slot, its own included.

RT-1-X (the Open X-Embodiment release's rt1.py; GoogleRT1Config fields): `feed_forward="swiglu"` is
w2(swish(w1 y) * w3 y) with no biases, hidden width d (L56-60); `image_attends_past_actions=False` adds the
mask rule of L547-549, image tokens do not attend to earlier steps' action slots, so no token attends to an
action slot; its action slots are zero vectors with no embedding layer (L453-455): the same input
(Linear_d(0) = its bias) as the zeroed embedding here.
With F < num_frames frames the sequence is the prefix of a full window's (positions 0..F*(n+A)-1): the
logits equal those of a full window whose later frames are hidden by the causal mask, as Google's
step-by-step policy computes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.google_config import IMAGE_TOKEN_WIDTH, GoogleRT1Config
from rt1.model.checkpointing import checkpointed

LAYER_NORM_EPS = 1e-6


# ---- helpers ---------------------------------------------------------------------------------------


def attention_mask(num_frames: int, image_tokens: int, action_tokens: int) -> Tensor:
    """(L, L) bool, True = query i may attend to key j; L = num_frames * (image_tokens + action_tokens)."""
    step = image_tokens + action_tokens
    position = torch.arange(num_frames * step)
    is_action = position % step >= image_tokens
    causal = position[None, :] <= position[:, None]
    return causal & ~(is_action[:, None] & is_action[None, :])


def rtx_attention_mask(num_frames: int, image_tokens: int, action_tokens: int) -> Tensor:
    """RT-1-X's mask (image_attends_past_actions=False): `attention_mask` and image queries do not see
    earlier steps' action slots either (the release's rt1.py L547-549): no key is an action slot."""
    step = image_tokens + action_tokens
    is_action = torch.arange(num_frames * step) % step >= image_tokens
    return attention_mask(num_frames, image_tokens, action_tokens) & ~is_action[None, :]


def action_read_positions(num_frames: int, image_tokens: int, action_tokens: int) -> Tensor:
    """(F * A,) the output position whose logits predict each action token: one before the token."""
    step = image_tokens + action_tokens
    starts = torch.arange(num_frames)[:, None] * step + image_tokens - 1
    return (starts + torch.arange(action_tokens)[None, :]).flatten()


# ---- leaf modules ----------------------------------------------------------------------------------


class Attention(nn.Module):
    """Keras MultiHeadAttention(num_heads, key_dim) over x (B, L, d) -> (B, L, d)."""

    def __init__(self, dim: int, heads: int, key_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        inner = heads * key_dim
        self.query, self.key, self.value = (nn.Linear(dim, inner) for _ in range(3))
        self.output = nn.Linear(inner, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, length, _ = x.shape
        q, k, v = (
            proj(x).view(b, length, self.heads, -1).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # scale 1 / sqrt(key_dim), as Keras scales the query
        return self.output(out.transpose(1, 2).reshape(b, length, -1))


class SwiGLU(nn.Module):
    """RT-1-X's feed-forward (the release's rt1.py L56-60): y (..., d) -> w2(swish(w1 y) * w3 y), no biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1, self.w3, self.w2 = (nn.Linear(dim, dim, bias=False) for _ in range(3))

    def forward(self, y: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(y)) * self.w3(y))


class DecoderLayer(nn.Module):
    """One of Google's _TransformerLayer: pre-LN attention and a feed-forward (Google's single linear one or
    RT-1-X's SwiGLU), both residual."""

    def __init__(
        self, dim: int, heads: int, key_dim: int, dropout: float, feed_forward: str = "linear"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = Attention(dim, heads, key_dim, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = nn.Linear(dim, dim) if feed_forward == "linear" else SwiGLU(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.dropout(self.ff(self.norm2(x)))


# ---- the decoder -----------------------------------------------------------------------------------


class Decoder(nn.Module):
    """Image tokens (B, F, n, 512) -> action logits (B, F, num_actions, num_bins)."""

    def __init__(self, config: GoogleRT1Config) -> None:
        super().__init__()
        self.config = c = config
        self.activation_checkpointing = c.activation_checkpointing
        self.token_embedding = nn.Linear(IMAGE_TOKEN_WIDTH, c.model_dim)
        self.position_embedding = nn.Linear(c.num_frames * c.tokens_per_step, c.model_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(c.model_dim, c.num_heads, c.key_dim, c.dropout, c.feed_forward)
            for _ in range(c.num_layers)
        )
        self.to_logits = nn.Linear(c.model_dim, c.num_bins)
        shape = (c.num_frames, c.num_learned_tokens, c.num_actions)
        mask = attention_mask(*shape) if c.image_attends_past_actions else rtx_attention_mask(*shape)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("read_positions", action_read_positions(*shape), persistent=False)

    def embed(self, image_tokens: Tensor) -> Tensor:
        """(B, F, n, 512) -> the embedded sequence (B, F * (n + A), d) with zero-input action slots."""
        b, f, n, _ = image_tokens.shape
        c = self.config
        images = self.token_embedding(image_tokens)  # (B, F, n, d)
        slots = self.token_embedding.bias.expand(b, f, c.num_actions, -1)  # Linear(0) = its bias
        x = torch.cat((images, slots.to(images.dtype)), dim=2).flatten(1, 2)
        return x + self.position_embedding.weight.t()[: x.shape[1]] + self.position_embedding.bias

    def forward(self, image_tokens: Tensor) -> Tensor:
        """image tokens (B, F, n, 512), F <= num_frames -> logits (B, F, num_actions, num_bins)"""
        b, f = image_tokens.shape[:2]
        c = self.config
        x = self.embed(image_tokens)
        length = x.shape[1]
        mask = self.mask[:length, :length]
        for layer in self.layers:
            x = checkpointed(layer, x, mask) if self.activation_checkpointing else layer(x, mask)
        read = self.read_positions[: f * c.num_actions]
        return self.to_logits(x[:, read]).view(b, f, c.num_actions, c.num_bins)
