"""Training checkpoints: `TrainState`, the checkpoint format, atomic writes, the last N kept, RNG state.

A checkpoint is `{save_dir}/checkpoint-{epoch}.pt` (epoch counted from 1), a dict of plain types and
tensors only, so `torch.load(path, weights_only=True)` reads it (`rt1.model.load` reads the model part):

    format, format_version     "rt1-train-checkpoint", 1
    model                      state_dict of the bare RT1 (no DDP "module." / torch.compile "_orig_mod." prefix)
    model_config               the model config's to_dict() (`rt1.model_families`)
    train_args                 TrainConfig.to_dict() of the run that wrote it (paths as strings)
    optimizer, scheduler       state_dicts
    scaler                     GradScaler state_dict (fp16), or None
    epoch                      the epoch this state belongs to (1-based)           \
    epoch_complete             True at the end of the epoch; False when the run     |
                               stopped midway (--max-steps)                         |  TrainState
    step_in_epoch              optimizer steps done in that epoch                   |
    global_step                optimizer steps done in total                        |
    metrics                    the last validation metrics (floats), or {}          /
    steps_per_epoch, total_steps   the schedule this run used
    world_size                 processes of the run (the per-rank RNG list has this many entries)
    rng                        list, one per rank: {"python", "numpy", "torch", "cuda"} states as tensors
    torch_version

Writes go to a temporary name in the same directory and are `os.replace`d onto the final name, so
an interrupted write (Ctrl-C, SIGTERM, a crash, a full disk) never leaves a truncated checkpoint;
`remove_stale_temporaries` deletes leftovers of killed writes.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rt1 import io
from rt1.errors import one_line
from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, CheckpointError, read_checkpoint

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_STATE_KEYS = (
    "model",
    "model_config",
    "optimizer",
    "scheduler",
    "epoch",
    "epoch_complete",
    "step_in_epoch",
    "global_step",
)


@dataclass
class TrainState:
    """Where a run is: the counters a checkpoint stores next to the weights and the optimizer."""

    epoch: int = 1  # 1-based
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0  # optimizer steps done in total
    epoch_complete: bool = False
    metrics: dict = field(default_factory=dict)  # the last validation metrics

    def start_next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.epoch_complete = self.epoch + 1, 0, False


def checkpoint_path(save_dir: Path, epoch: int) -> Path:
    return Path(save_dir) / f"checkpoint-{epoch}.pt"


def list_checkpoints(save_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint-{epoch}.pt in save_dir, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = []
    for path in save_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(save_dir: Path) -> Path | None:
    found = list_checkpoints(save_dir)
    return found[-1][1] if found else None


def prune_checkpoints(save_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints; returns the deleted paths."""
    found = list_checkpoints(save_dir)
    removed = []
    for _, path in found[:-keep] if keep > 0 else found:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_stale_temporaries(save_dir: Path) -> list[Path]:
    """Delete half-written checkpoints left by a killed process (never a final checkpoint)."""
    save_dir = Path(save_dir)
    return io.remove_stale_temporaries(save_dir) if save_dir.is_dir() else []


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list (about the size of a checkpoint holding them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous checkpoints are untouched."""


def save_checkpoint(path: Path, contents: dict) -> Path:
    """torch.save `contents` to `path` atomically (temporary file in the same directory, fsync, os.replace).

    The free space is checked first (about the size of the tensors, +10%), and a write that fails anyway
    (torch reports a full disk as a RuntimeError) raises `CheckpointWriteError` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        io.check_free_space(path.parent, tensor_bytes(contents), path.name)
    except (io.DiskFullError, io.OutputPathError) as e:  # full, or read-only
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {e}; the previous checkpoints are kept"
        ) from None
    try:
        with io.atomic_output(path) as tmp:
            torch.save(contents, tmp)
    except (RuntimeError, OSError) as e:
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointWriteError(
            f"cannot write checkpoint {path} ({one_line(e)}; {free:.1f} MiB free in "
            f"{path.parent}); the previous checkpoints are kept"
        ) from None
    return path


def checkpoint_contents(state: TrainState, run, rng: list) -> dict:
    """The dict a checkpoint file holds (format above): the training `state` of `run` (the trainer: its
    `model`, `cfg`, `opt` (optimizer, scheduler, scaler, total_steps) and `data.steps_per_epoch`), with every
    rank's RNG state `rng`."""
    opt = run.opt
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": run.model.state_dict(),
        "model_config": run.model.config.to_dict(),
        "train_args": run.cfg.to_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict() if opt.scaler.is_enabled() else None,
        "epoch": state.epoch,
        "epoch_complete": state.epoch_complete,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "metrics": state.metrics,
        "steps_per_epoch": run.data.steps_per_epoch,
        "total_steps": opt.total_steps,
        "world_size": len(rng),
        "rng": rng,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-loadable
    }


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A training checkpoint (weights_only), checked to hold every key a resume needs; raises CheckpointError.

    Any file that is not one (a text file, random bytes, a truncated copy) is a one-line CheckpointError
    naming it (`rt1.model.load.read_checkpoint`).
    """
    contents = read_checkpoint(path, map_location)
    missing = [k for k in _STATE_KEYS if k not in contents]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {', '.join(missing)}): it cannot be resumed"
        )
    try:
        train_state_of(contents)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad training state ({one_line(e)})") from None
    return contents


def train_state_of(contents: dict) -> TrainState:
    return TrainState(
        int(contents["epoch"]),
        int(contents["step_in_epoch"]),
        int(contents["global_step"]),
        bool(contents["epoch_complete"]),
        dict(contents.get("metrics", {})),
    )


# ---- RNG state as tensors (weights_only-safe) -----------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) in this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and ints."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def restore_rng(contents: dict, rank: int, world_size: int, reseed: int, log) -> None:
    """This rank's RNG state from a checkpoint; with another number of processes, seed `reseed` (with a warning)."""
    rng = contents.get("rng") or []
    if len(rng) == world_size:
        restore_rng_state(rng[rank])
    else:
        log.warning(
            f"checkpoint has RNG states of {len(rng)} processes, this run has {world_size}: "
            "reseeding (the run is not bit-identical to an uninterrupted one)"
        )
        seed_everything(reseed)


__all__ = [
    "restore_rng",
    "CheckpointError",
    "CheckpointWriteError",
    "tensor_bytes",
    "TrainState",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
    "checkpoint_contents",
    "load_checkpoint",
    "train_state_of",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
]
