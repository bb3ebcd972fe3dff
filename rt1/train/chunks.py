"""Training batches of chunks of consecutive windows (`--chunk-windows K` > 1; K = 1 is `loaders`' window sampler).

Each epoch, `ChunkBatchSampler`:
    tiles    every episode's windows into chunks of up to K consecutive windows (`RT1Dataset.chunk_table`;
             an episode's tail is a shorter chunk), the same tiling every epoch;
    shuffles the chunks (torch.randperm seeded with seed + epoch, as DistributedSampler), so a batch holds
             chunks of several episodes, and lays their windows end to end: the epoch's window stream, every
             window exactly once; padded with its own first windows to a multiple of the world size W (at most
             W - 1 windows seen twice, as DistributedSampler pads);
    cuts     the stream into steps of B x W windows (B = --batch-size, still windows) and gives rank r the r-th
             B of each (the last step: an equal share each). A chunk that a cut crosses is split into two
             chunks, so every batch is exactly B windows (the last of the epoch fewer) and the steps per epoch,
             the schedule, the lr scaling and the logs are those of K = 1; one process with batch 2B takes the
             windows two processes with batch B take together.

A batch is a list of keys (epoch, row, k): k windows from index row `row`'s window on, read by
`loaders.SeededWindows` with `RT1Dataset.chunk` (one slice of the file, each frame decoded once; the random
shift seeded per (seed, epoch, row), one shift per chunk) and collated by `collate_chunks` into the model's
chunk input (`rt1.model.chunks`). `set_epoch(epoch, skip)` skips `skip` windows (whole batches) of this rank's
epoch: an exact resume mid-epoch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler

from rt1.data.dataset import RT1Dataset


class ChunkBatchSampler(Sampler):
    """Batches of (epoch, row, windows) chunk keys for one rank (see the module docstring)."""

    def __init__(
        self,
        dataset: RT1Dataset,
        chunk_windows: int,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        self.rows, chunk = dataset.chunk_table(chunk_windows)
        self.first = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])  # each chunk's first position
        self.length = np.diff(np.r_[self.first, len(chunk)])
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(len(self.rows) / world_size)  # windows per rank, padding included

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch `epoch` from its window `skip` on (a multiple of the batch size: whole batches)."""
        if skip % self.batch_size:
            raise ValueError(f"skip {skip} is not a whole number of batches of {self.batch_size} windows")
        self.epoch, self.skip = epoch, skip

    def stream(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's window stream over all ranks: (positions in `rows`, chunk of each), padded to W x per_rank."""
        order = np.arange(len(self.first))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).numpy()
        lengths = self.length[order]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        chunks = np.repeat(order, lengths)
        positions = self.first[chunks] + within
        total = self.per_rank * self.world_size
        return np.resize(positions, total), np.resize(chunks, total)  # np.resize repeats from the start

    def __iter__(self):
        positions, chunks = self.stream()
        start_step = self.skip // self.batch_size
        for step in range(start_step, math.ceil(self.per_rank / self.batch_size)):
            base = step * self.batch_size * self.world_size
            share = min(self.batch_size, self.per_rank - step * self.batch_size)
            mine = slice(base + self.rank * share, base + (self.rank + 1) * share)
            yield self._keys(positions[mine], chunks[mine])

    def _keys(self, positions: np.ndarray, chunks: np.ndarray) -> list[tuple[int, int, int]]:
        """Consecutive windows of one chunk -> one key (epoch, row of the first, windows)."""
        cut = np.flatnonzero((chunks[1:] != chunks[:-1]) | (positions[1:] != positions[:-1] + 1)) + 1
        bounds = np.r_[0, cut, len(positions)]
        return [
            (self.epoch, int(self.rows[positions[a]]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])
        ]

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size) - self.skip // self.batch_size


def collate_chunks(items: list[dict]) -> dict:
    """Chunk items -> frames uint8 (T, H, W, 3) (the chunks' frames end to end), chunk_windows int64 (C,),
    text_embed (C, 512), action_tokens (B, F, 11) and actions (B, F, 11) (every window's, chunk by chunk)."""
    windows = [it["windows"] for it in items]
    frames_per_window = len(items[0]["frames"]) - windows[0] + 1

    def per_window(key: str) -> torch.Tensor:
        return torch.cat([it[key].unfold(0, frames_per_window, 1).transpose(1, 2) for it in items])

    return {
        "frames": torch.cat([it["frames"] for it in items]),
        "chunk_windows": torch.tensor(windows, dtype=torch.int64),
        "text_embed": torch.stack([it["text_embed"] for it in items]),
        "action_tokens": per_window("action_tokens"),
        "actions": per_window("actions"),
    }


__all__ = ["ChunkBatchSampler", "collate_chunks"]
