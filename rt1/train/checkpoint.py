"""Training checkpoints: atomic writes, the last N kept, weights_only loading, RNG state.

A checkpoint is `{save_dir}/checkpoint-{epoch}.pt` (epoch counted from 1), a dict of plain types and
tensors only, so `torch.load(path, weights_only=True)` reads it:

    format, format_version     "rt1-train-checkpoint", 1
    model                      state_dict of the bare RT1 (no DDP "module." / torch.compile "_orig_mod." prefix)
    model_config               RT1Config.to_dict()
    train_args                 TrainConfig.to_dict() of the run that wrote it (paths as strings)
    optimizer, scheduler       state_dicts
    scaler                     GradScaler state_dict (fp16), or None
    epoch                      the epoch this state belongs to (1-based)
    epoch_complete             True at the end of the epoch; False when --max-steps stopped it midway
    step_in_epoch              optimizer steps done in that epoch
    global_step                optimizer steps done in total
    steps_per_epoch, total_steps   the schedule this run used
    world_size                 processes of the run (the per-rank RNG list has this many entries)
    rng                        list, one per rank: {"python", "numpy", "torch", "cuda"} states as tensors
    metrics                    the last validation metrics (floats), or {}
    torch_version

Writes go to a temporary name in the same directory and are `os.replace`d onto the final name, so
an interrupted write (Ctrl-C, SIGTERM, a crash, a full disk) never leaves a truncated checkpoint;
`remove_stale_temporaries` deletes leftovers of killed writes.

`load_model_from_checkpoint(path, device)` is what plots, evaluation and the demo use.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from rt1.data import atomic

CHECKPOINT_FORMAT = "rt1-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run (message names the file)."""


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
    return atomic.remove_stale_temporaries(save_dir) if save_dir.is_dir() else []


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save `state` to `path` atomically (temporary file in the same directory, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint with weights_only=True and check its format; raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an rt1 training checkpoint (format {state.get('format')!r})"
                              if isinstance(state, dict) else f"{path} is not an rt1 training checkpoint")
    if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format_version {state.get('format_version')}, "
                              f"this code reads {CHECKPOINT_FORMAT_VERSION}")
    return state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def load_model_from_checkpoint(path: Path, device: torch.device | str = "cpu"):
    """-> (RT1 model in eval mode on `device`, RT1Config, train_args dict) from a training checkpoint."""
    from rt1.model import RT1, RT1Config

    state = load_checkpoint(path, map_location="cpu")
    try:
        config = RT1Config.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_config ({e})") from None
    model = RT1(config)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: model weights do not fit its model_config ({first})") from None
    return model.to(device).eval(), config, dict(state.get("train_args", {}))


# ---- RNG state as tensors (weights_only-safe) -----------------------------------------------------


def capture_rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and ints."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
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
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "CheckpointError", "checkpoint_path", "list_checkpoints",
    "latest_checkpoint", "prune_checkpoints", "remove_stale_temporaries", "save_checkpoint", "load_checkpoint",
    "load_model_from_checkpoint", "unwrap_model", "capture_rng_state", "restore_rng_state",
]
