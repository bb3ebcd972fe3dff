"""Training and validation loaders over `rt1.data.RT1Dataset`, for one or many processes.

Training: a `DistributedSampler` (rank r of W takes every W-th index of a permutation reseeded each
epoch with seed + epoch; with W = 1 it is a plain seeded shuffle) wrapped by `EpochSampler`, which
tags each index with the epoch and can skip the first steps of an epoch (to resume a checkpoint
written in the middle of one). `SeededWindows` seeds the dataset's random shift per sample from
(seed, epoch, index), so a window gets the same augmentation whatever the number of processes,
DataLoader workers or resumes: runs are reproducible and one process with batch 2B sees exactly
the batches two processes with batch B see together.

DistributedSampler pads the training list by repeating a few windows when W does not divide it
(every rank must take the same number of steps); at most W - 1 windows per epoch are seen twice.

Validation: `ShardSampler` gives rank r the windows r, r + W, r + 2W, ... with no padding, so the
sums the trainer all-reduces count every validation window exactly once.

The collate function keeps only what training needs: uint8 video (B, 3, F, H, W), text_embed
(B, 512), action_tokens (B, F, 11). The video stays uint8 until it is on the device.
"""

from __future__ import annotations

import math
import signal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

_MASK63 = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one window of one epoch (a fixed integer mix, the same in every process)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK63
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK63
    return x ^ (x >> 29)


class SeededWindows(Dataset):
    """Wraps a dataset; item (epoch, index) is dataset[index] drawn with torch's CPU RNG seeded per sample.

    The caller's RNG state is restored afterwards, so this also works with num_workers=0 (where the
    dataset runs in the training process and must not disturb its RNG).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class EpochSampler(Sampler):
    """Yields (epoch, index) from a DistributedSampler, skipping the first `skip` indices of this epoch."""

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch = epoch
        self.skip = skip

    def __iter__(self):
        for i, index in enumerate(self.base):
            if i >= self.skip:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class ShardSampler(Sampler):
    """Indices rank, rank + world, ... of range(n): each index on exactly one rank, no padding."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate_windows(items: list[dict]) -> dict:
    return {
        "video": torch.stack([it["video"] for it in items]),
        "text_embed": torch.stack([it["text_embed"] for it in items]),
        "action_tokens": torch.stack([it["action_tokens"] for it in items]),
    }


def batches_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches each rank takes in one epoch (DistributedSampler pads to a multiple of world_size)."""
    per_rank = math.ceil(num_samples / world_size)
    return math.ceil(per_rank / batch_size)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers ignore SIGTERM and SIGINT.

    A scheduler's SIGTERM (or Ctrl-C's SIGINT) reaches every process of the job, DataLoader workers
    included; a worker killed by it makes the main process fail with a "DataLoader worker ... is killed
    by signal" traceback before it can save. Ignoring them leaves the decision to the main process (which
    stops at a step boundary and saves); workers still exit when it shuts them down (`shutdown_workers`,
    on every way out of the trainer) or dies (torch's worker watchdog).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shutdown_workers(loader: DataLoader | None) -> None:
    """Stop a loader's persistent workers now (normal shutdown: done event, then join).

    Needed because workers ignore SIGTERM (`ignore_stop_signals`): left to interpreter exit, they would
    be stopped by multiprocessing's SIGTERM and joined, which would wait forever. The trainer calls this
    on every way out of a run, errors included.
    """
    iterator = getattr(loader, "_iterator", None) if loader is not None else None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def make_train_loader(dataset: Dataset, *, rank: int, world_size: int, batch_size: int, shuffle: bool, seed: int,
                      num_workers: int, pin_memory: bool) -> tuple[DataLoader, EpochSampler]:
    base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=False)
    sampler = EpochSampler(base)
    loader = DataLoader(
        SeededWindows(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_windows, pin_memory=pin_memory, drop_last=False,
        persistent_workers=num_workers > 0, worker_init_fn=ignore_stop_signals,
        # The generator only seeds the workers (their randomness comes from SeededWindows); giving the
        # loader its own keeps it from drawing on the global RNG, which resumes must reproduce.
        generator=torch.Generator().manual_seed(seed * 7919 + rank),
    )
    return loader, sampler


def make_val_loader(dataset: Dataset, *, rank: int, world_size: int, batch_size: int, num_workers: int,
                    pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers, collate_fn=collate_windows, pin_memory=pin_memory, drop_last=False,
        persistent_workers=num_workers > 0, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(rank),
    )


__all__ = ["SeededWindows", "EpochSampler", "ShardSampler", "collate_windows", "batches_per_epoch",
           "make_train_loader", "make_val_loader", "sample_seed", "ignore_stop_signals",
           "shutdown_workers"]
