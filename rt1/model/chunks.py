"""Chunks of consecutive windows: every frame encoded once, every window decoded (`--chunk-windows`).

A chunk is the k + F - 1 consecutive frames of one episode that hold its k windows of F frames (window j is
frames j .. j + F - 1 of the chunk). Frames are encoded independently and the decoder is causal over a
window's frames, so the tokens of a chunk's frames, gathered per window, give every window's logits with
each frame encoded once instead of up to F times (k = 6, F = 6: 11 frames for 6 windows instead of 36).

    frames         (T, H, W, 3) uint8   the frames of C chunks one after another, T = sum(k_c) + C (F - 1)
    chunk_windows  (C,) int64           k_c >= 1, the windows of chunk c (a CPU tensor: no device sync)
    cond           Conditioning of C rows (one instruction per chunk)
    -> logits      (B, F, num_actions, num_bins), B = sum(k_c): chunk 0's windows in order, then chunk 1's...

Both families' `forward(frames, text, chunk_windows=...)` call `chunk_logits`: the same `encode_frames` and
`decode` as the window forward, no second model. In eval mode each window's logits equal its own forward's;
in training mode BatchNorm normalises over the chunks' T frames (each frame once, consecutive frames of a
few episodes) instead of the B x F frames of B windows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rt1.model.film import Conditioning


def check_chunks(frames: Tensor, chunk_windows: Tensor, num_frames: int, texts: int) -> list[int]:
    """-> the windows per chunk as a list; a one-line ValueError when frames, chunk_windows and texts disagree."""
    if (
        not isinstance(chunk_windows, Tensor)
        or chunk_windows.ndim != 1
        or chunk_windows.is_floating_point()
        or len(chunk_windows) == 0
    ):
        raise ValueError(f"chunk_windows must be a non-empty (C,) integer tensor, got {chunk_windows!r}")
    windows = [int(k) for k in chunk_windows.tolist()]
    if min(windows) < 1:
        raise ValueError(f"chunk_windows must be >= 1 each, got {windows}")
    total = sum(windows) + len(windows) * (num_frames - 1)
    if frames.ndim != 4 or frames.shape[0] != total:
        raise ValueError(
            f"the frames of chunks of {windows} windows of {num_frames} frames must be ({total}, H, W, 3), "
            f"got {tuple(frames.shape)}"
        )
    if texts != len(windows):
        raise ValueError(f"got {texts} text embeddings for {len(windows)} chunks (one per chunk)")
    return windows


def window_index(windows: list[int], num_frames: int) -> Tensor:
    """(B, F) int64: row i holds the positions of window i's frames among the chunks' concatenated frames."""
    starts, offset = [], 0
    for k in windows:
        starts.append(torch.arange(offset, offset + k))
        offset += k + num_frames - 1
    return torch.cat(starts)[:, None] + torch.arange(num_frames)


def chunk_logits(model, frames: Tensor, cond: Conditioning, windows: list[int]) -> Tensor:
    """`model`'s logits (B, F, A, bins) of every window of the chunks (see the module docstring); `windows` from
    `check_chunks`. Each frame goes through `model.encode_frames` once."""
    f = model.config.num_frames
    per_chunk = torch.tensor(windows)
    tokens = model.encode_frames(frames, cond.repeat_interleave(per_chunk + (f - 1)))  # (T, n, D)
    index = window_index(windows, f).to(tokens.device, non_blocking=True)
    return model.decode(tokens[index], cond.repeat_interleave(per_chunk))  # tokens (B, F, n, D)


__all__ = ["check_chunks", "chunk_logits", "window_index"]
