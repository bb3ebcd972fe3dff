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

The collate function keeps only what training needs: uint8 frames (B, F, H, W, 3), text_embed
(B, 512), action_tokens (B, F, 11). The frames stay uint8 until they are on the device. With --chunk-windows
K > 1 the training loader's batches are chunks of consecutive windows instead (`rt1.train.chunks`: frames
(T, H, W, 3), chunk_windows (C,), text_embed (C, 512), action_tokens (B, F, 11)); validation stays per window.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rt1.config import RT1Config, TrainConfig
from rt1.data.dataset import RT1Dataset
from rt1.data.index_checks import check_train_val
from rt1.errors import EXIT_ERROR, RT1Error
from rt1.train.chunks import ChunkBatchSampler, collate_chunks

_MASK63 = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one window of one epoch (a fixed integer mix, the same in every process)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK63
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK63
    return x ^ (x >> 29)


class SeededWindows(Dataset):
    """Wraps a dataset; item (epoch, index) is dataset[index] drawn with torch's CPU RNG seeded per sample, item
    (epoch, index, k) the chunk dataset.chunk(index, k) of k windows from it (`rt1.train.chunks`), seeded alike.

    The caller's RNG state is restored afterwards, so this also works with num_workers=0 (where the
    dataset runs in the training process and must not disturb its RNG).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index, *chunk = key
        state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset.chunk(index, chunk[0]) if chunk else self.dataset[index]
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
        "frames": torch.stack([it["frames"] for it in items]),
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


def make_train_loader(
    dataset: Dataset,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    chunk_windows: int = 1,
) -> tuple[DataLoader, EpochSampler | ChunkBatchSampler]:
    """The training loader: windows (EpochSampler over DistributedSampler), or with chunk_windows > 1 batches of
    chunks of consecutive windows (`rt1.train.chunks`); either sampler has set_epoch(epoch, skip windows)."""
    if chunk_windows > 1:
        sampler = ChunkBatchSampler(
            dataset,
            chunk_windows,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
        )
        batching = {"batch_sampler": sampler, "collate_fn": collate_chunks}
    else:
        base = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        sampler = EpochSampler(base)
        batching = {
            "batch_size": batch_size,
            "sampler": sampler,
            "collate_fn": collate_windows,
            "drop_last": False,
        }
    # The generator only seeds the workers (their randomness comes from SeededWindows); giving the loader its
    # own keeps it from drawing on the global RNG, which resumes must reproduce.
    workers = _workers(num_workers, pin_memory, generator_seed=seed * 7919 + rank)
    return DataLoader(SeededWindows(dataset, seed), **batching, **workers), sampler


def _workers(num_workers: int, pin_memory: bool, generator_seed: int) -> dict:
    """A DataLoader's worker options: persistent workers that ignore stop signals, their own generator."""
    return {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
        "worker_init_fn": ignore_stop_signals,
        "generator": torch.Generator().manual_seed(generator_seed),
    }


def make_val_loader(
    dataset: Dataset, *, rank: int, world_size: int, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        collate_fn=collate_windows,
        drop_last=False,
        **_workers(num_workers, pin_memory, generator_seed=rank),
    )


class TrainSetupError(RT1Error, ValueError):
    """The data does not fit the model (image size, empty index...)."""

    exit_code = EXIT_ERROR


def check_data_fits(dataset: RT1Dataset, config: RT1Config, what: str, cfg: TrainConfig) -> None:
    if len(dataset) == 0:
        raise TrainSetupError(f"{what} index {dataset.index_csv} lists no windows")
    shape = tuple(dataset[0]["frames"].shape)  # (F, H, W, 3)
    height, width = config.frame_size
    if shape[1:3] != (height, width) or shape[0] != config.num_frames:
        raise TrainSetupError(
            f"{what} windows from {cfg.data_dir} are {shape[0]} frames of {shape[1]}x{shape[2]}, but preset "
            f"{cfg.preset!r} expects {config.num_frames} frames of {height}x{width}: preprocess with "
            f"DataPreprocess_batch_*.py --image-size {height}x{width} (or native for the camera's 256x320) "
            f"and index with data_emerge.py --window {config.num_frames}"
        )


@dataclass
class RunData:
    """A run's datasets and loaders on this rank; `close()` stops the workers and closes the files."""

    train_set: RT1Dataset
    train_loader: DataLoader
    train_sampler: EpochSampler | ChunkBatchSampler
    val_set: RT1Dataset | None = None
    val_loader: DataLoader | None = None
    batches_per_epoch: int = 0
    steps_per_epoch: int = 0

    @staticmethod
    def open(cfg: TrainConfig, config: RT1Config, rank: int, world_size: int, *, pin_memory: bool) -> RunData:
        """Open the run's data and check that it fits the model (TrainSetupError); closes what it opened on failure."""
        check_train_val(cfg.train_index, cfg.val_index)  # not the same file, not swapped, one build
        train_set, val_set = RT1Dataset(cfg.train_index, cfg.data_dir, augment=cfg.augment), None
        try:
            check_data_fits(train_set, config, "training", cfg)
            shared = {  # what both loaders are given
                "rank": rank,
                "world_size": world_size,
                "batch_size": cfg.batch_size,
                "num_workers": cfg.num_workers,
                "pin_memory": pin_memory,
            }
            train_loader, sampler = make_train_loader(
                train_set, shuffle=cfg.shuffle, seed=cfg.seed, chunk_windows=cfg.chunk_windows, **shared
            )
            data = RunData(train_set, train_loader, sampler)
            if cfg.val_index is not None and cfg.val_every > 0:
                val_set = RT1Dataset(cfg.val_index, cfg.data_dir, augment=False)
                check_data_fits(val_set, config, "validation", cfg)
                data.val_set, data.val_loader = val_set, make_val_loader(val_set, **shared)
        except BaseException:
            for dataset in (train_set, val_set):
                if dataset is not None:
                    dataset.close()
            raise
        data.batches_per_epoch = batches_per_epoch(len(train_set), world_size, cfg.batch_size)
        data.steps_per_epoch = math.ceil(data.batches_per_epoch / cfg.grad_accum)
        return data

    def close(self) -> None:
        for loader in (self.train_loader, self.val_loader):
            shutdown_workers(loader)  # workers ignore SIGTERM: never leave them to the interpreter's exit
        for dataset in (self.train_set, self.val_set):
            if dataset is not None:
                dataset.close()


class TimedBatches:
    """An iterator over a loader's batches that counts the windows (times `world_size`) and the seconds spent
    waiting for them since the last `reset()`."""

    def __init__(self, loader: DataLoader, world_size: int) -> None:
        self.batches, self.world_size = iter(loader), world_size
        self.reset()

    def reset(self) -> None:
        self.windows, self.wait = 0, 0.0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        start = time.perf_counter()
        batch = next(self.batches)
        self.wait += time.perf_counter() - start
        self.windows += batch["action_tokens"].shape[0] * self.world_size  # windows (chunked or not)
        return batch


__all__ = [
    "TimedBatches",
    "TrainSetupError",
    "check_data_fits",
    "RunData",
    "SeededWindows",
    "EpochSampler",
    "ShardSampler",
    "collate_windows",
    "batches_per_epoch",
    "make_train_loader",
    "make_val_loader",
    "sample_seed",
    "ignore_stop_signals",
    "shutdown_workers",
]
