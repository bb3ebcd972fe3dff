"""Reading checkpoint files and rebuilding the model from one (plots, evaluation, the policy, the demo).

A checkpoint file is a dict of plain types and tensors, read with `torch.load(weights_only=True)`:

    format, format_version     "rt1-train-checkpoint", 1
    model                      state_dict of the bare RT1
    model_config               the model config's to_dict() (`rt1.model_families`: no model_type = MaxViT)
    train_args                 TrainConfig.to_dict() of the run that wrote it (empty for a converted checkpoint)
    ...                        the training state (rt1/train/checkpoint.py documents those keys)

`load_model(path)` needs only the first four keys; it also takes a directory written by `python -m rt1.export`
(`rt1.model.pretrained`).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from rt1.config import retired_preset
from rt1.errors import RT1Error, one_line
from rt1.model.factory import build_model
from rt1.model.weights import check_weights
from rt1.model_families import ModelConfig, model_config_from_dict

CHECKPOINT_FORMAT = "rt1-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(RT1Error, RuntimeError):
    """A checkpoint cannot be read or does not fit (the message names the file)."""


def torch_load_reason(error: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused a file, on one line, without torch's advice (re-running with
    weights_only=False or allow-listing globals: unpickling a file's objects can run its code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch bolds a sentence with terminal escapes
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled {found.group(1)}: only tensors and plain data are read, never objects"
    if "weights only" in text.lower() or "weights_only" in text:
        reason = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please|\n|$)", text)
        return f"it holds objects other than tensors and plain data ({reason.group(1).strip() if reason else ''})"
    return f"{type(error).__name__}: {one_line(error)}"


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint with weights_only=True and check its format; raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} cannot be read (not a file written by torch.save: checkpoints "
            "are zip archives)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's weights_only unpickler raises KeyError, IndexError, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({torch_load_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = f" (format {state.get('format')!r})" if isinstance(state, dict) else ""
        raise CheckpointError(f"{path} is not an rt1 training checkpoint{found}")
    if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {state.get('format_version')}, "
            f"this code reads {CHECKPOINT_FORMAT_VERSION}"
        )
    return state


def check_model_path(path: Path) -> None:
    """Fail early (one-line error) unless `path` is a readable checkpoint file or exported model directory."""
    if Path(path).is_dir():
        from rt1.model.pretrained import read_pretrained_config

        read_pretrained_config(path)
    else:
        read_checkpoint(path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig, dict]:
    """A checkpoint file or an exported directory -> (the model in eval mode on `device`, its config, the
    train_args dict of the run that wrote it)."""
    if Path(path).is_dir():
        from rt1.model.pretrained import load_pretrained

        model, config, exported = load_pretrained(path, device)
        return model, config, dict((exported.get("training") or {}).get("train_args") or {})
    state = read_checkpoint(path, map_location="cpu")
    try:
        config = model_config_from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_config ({one_line(e)})") from None
    retired = retired_preset(dict(state.get("train_args", {})), config.model_type)
    if retired:
        raise CheckpointError(f"{path} {retired}")
    check_weights(state.get("model"), config, path, CheckpointError, "its model_config")
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: model weights do not fit its model_config ({one_line(e)})") from None
    return model.to(device).eval(), config, dict(state.get("train_args", {}))
