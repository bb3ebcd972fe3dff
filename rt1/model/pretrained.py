"""Exported models: the Hugging Face directory layout `python -m rt1.export` writes, and loading it.

    DIR/model.safetensors   the state_dict of the bare model (safetensors: tensors and a JSON header, no pickle)
    DIR/config.json         what a user of the weights needs besides them (below)
    DIR/README.md           a short model card

config.json (plain JSON):

    format, format_version   "rt1-pretrained", 1 (a directory of another version is refused)
    model_type               "rt1" (the file's kind; the network's family is model_config's model_type)
    preset                   the preset the model config is (or was trained from), or null
    model_config             the model config's to_dict() (`rt1.model_families`; no model_type: MaxViT). Google's
                             network may carry `action_order`, the RLDS key of each of its output slots (a
                             converted rt1main or RT-1-X: terminate_episode first); its logits come out in
                             rt1.actions' order
    action_tokenizer         num_bins (the model_config's), the token order of the logits (`names`), and per
                             RLDS action key its token slice and bounds: those of `rt1.actions` with the
                             model_config's bins and world_vector bound (`ActionTokenizer.of`; RT-1-X: 512,
                             [-2, 2]); a mismatch is refused; the policy detokenizes with them)
    image_preprocessing      camera frame -> model input: JPEG at the dataset's quality, squash-resize to
                             image_size (H, W), JPEG at stage 2's quality, decode
                             (`rt1.data.images.training_frame`), then what the network does inside
    instruction_embedding    dim and `source`: "universal-sentence-encoder" (fractal20220817_data; callers send
                             the embedding) or "mini-fractal" (the bundled dataset's word-hash embedding,
                             `rt1.sim.scene.instruction_embedding`; the server also takes instruction text)
    training                 the run that wrote the checkpoint: train_args (path options by file or folder name,
                             never the local path), epoch, global_step, metrics
    source_checkpoint        file name of the checkpoint it was exported from
    conversion               (converted models only) the source's kind, the action order and its evidence

`load_pretrained(DIR)` checks the format version, the tokenizer, and that the tensors are exactly the
model's (names, shapes, dtypes); anything else is a one-line `PretrainedError` naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from rt1.actions import (
    ACTION_DIM_NAMES,
    CONTINUOUS_KEYS,
    NUM_TERMINATE_CLASSES,
    TERMINATE_KEY,
    ActionTokenizer,
)
from rt1.config import retired_preset
from rt1.errors import RT1Error, one_line
from rt1.model.factory import build_model
from rt1.model.weights import check_weights
from rt1.model_families import ModelConfig, model_config_from_dict

PRETRAINED_FORMAT = "rt1-pretrained"
PRETRAINED_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EMBEDDING_SOURCES = ("universal-sentence-encoder", "mini-fractal")


class PretrainedError(RT1Error, RuntimeError):
    """An exported model directory cannot be read or does not fit (the message names the file)."""


def tokenizer_spec(tokenizer: ActionTokenizer | None = None) -> dict:
    """The action tokenizer of `rt1.actions` as config.json stores it, with a model's bins and bounds
    (`ActionTokenizer.of(model_config)`; RT-1's if None)."""
    tokenizer = tokenizer if tokenizer is not None else ActionTokenizer()
    low, high = tokenizer.bounds
    keys, start = [], 0
    for spec in CONTINUOUS_KEYS:
        keys.append(
            {
                "key": spec.key,
                "tokens": [start, start + spec.dims],
                "low": float(low[start]),
                "high": float(high[start]),
            }
        )
        start += spec.dims
    keys.append(
        {
            "key": TERMINATE_KEY,
            "tokens": [start, start + 1],
            "classes": NUM_TERMINATE_CLASSES,
            "decode": "one-hot of the token, clipped to the classes",
        }
    )
    return {
        "num_bins": tokenizer.num_bins,
        "names": list(ACTION_DIM_NAMES),
        "keys": keys,
        "encode": "token = floor((clip(a, low, high) - low) / (high - low) * (num_bins - 1))",
        "decode": "a = token / (num_bins - 1) * (high - low) + low",
    }


def read_pretrained_config(directory: Path) -> dict:
    """DIR/config.json, checked: format and version, model config, tokenizer; raises PretrainedError."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise PretrainedError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise PretrainedError(f"{directory} is not an exported rt1 model: no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path} cannot be read ({one_line(e)})") from None
    if not isinstance(config, dict) or config.get("format") != PRETRAINED_FORMAT:
        found = f" (format {config.get('format')!r})" if isinstance(config, dict) else ""
        raise PretrainedError(f"{path} is not an rt1 pretrained config{found}")
    if config.get("format_version") != PRETRAINED_FORMAT_VERSION:
        raise PretrainedError(
            f"{path} has format_version {config.get('format_version')!r}, "
            f"this code reads {PRETRAINED_FORMAT_VERSION}"
        )
    for key in ("model_config", "image_preprocessing", "instruction_embedding", "training"):
        if key in config and not isinstance(config[key], dict):
            raise PretrainedError(f"{path}: {key} must be an object, got {json.dumps(config[key])[:60]}")
    try:
        model_config = model_config_of(config)
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(f"{path}: bad model_config ({one_line(e)})") from None
    # The model's logits are in rt1.actions' token order (a network with another slot order, e.g. a converted
    # rt1main or RT-1-X, permutes its own: its model_config.action_order), with its model_config's bins and
    # bounds (ActionTokenizer.of: RT-1-X's world_vector in [-2, 2]).
    tokenizer = ActionTokenizer.of(model_config)
    if not _same_tokenizer(config.get("action_tokenizer"), tokenizer_spec(tokenizer)):
        raise PretrainedError(
            f"{path}: action_tokenizer differs from this code's (rt1.actions: {tokenizer.num_bins} bins and "
            f"world_vector bound {tokenizer.world_vector_bound} as model_config says, order "
            f"{list(ACTION_DIM_NAMES)} and the other keys' fixed bounds)"
        )
    if not isinstance((config.get("training") or {}).get("train_args", {}), dict):
        raise PretrainedError(f"{path}: training.train_args must be an object")
    quality = (config.get("image_preprocessing") or {}).get("jpeg_quality")
    if quality is not None and (
        not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100
    ):
        raise PretrainedError(
            f"{path}: image_preprocessing.jpeg_quality must be an integer 1..100 or null (frames not re-encoded), "
            f"got {json.dumps(quality)[:60]}"
        )
    source = (config.get("instruction_embedding") or {}).get("source")
    if source not in EMBEDDING_SOURCES:
        raise PretrainedError(
            f"{path}: instruction_embedding.source must be one of {list(EMBEDDING_SOURCES)}, got {source!r}"
        )
    return config


def _same_tokenizer(found, expected) -> bool:
    """Equal as JSON, bounds compared as floats (json round-trips them, but be lenient on 1e-12 noise)."""
    if isinstance(found, dict) and isinstance(expected, dict):
        return found.keys() == expected.keys() and all(
            _same_tokenizer(found[k], expected[k]) for k in expected
        )
    if isinstance(found, list) and isinstance(expected, list):
        return len(found) == len(expected) and all(map(_same_tokenizer, found, expected))
    if isinstance(expected, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return math.isclose(found, expected, rel_tol=0, abs_tol=1e-12)
    return type(found) is type(expected) and found == expected


def model_config_of(config: dict) -> ModelConfig:
    return model_config_from_dict(config["model_config"])


def load_pretrained(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelConfig, dict]:
    """-> (the model in eval mode on `device`, its config, the whole config.json dict); raises PretrainedError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_pretrained_config(directory)
    model_config = model_config_of(config)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise PretrainedError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise PretrainedError(f"{weights} cannot be read ({one_line(e)})") from None
    retired = retired_preset((config.get("training") or {}).get("train_args") or {}, model_config.model_type)
    if retired:
        raise PretrainedError(f"{directory} {retired}")
    check_weights(tensors, model_config, weights, PretrainedError, f"its {CONFIG_NAME}'s model_config")
    model = build_model(model_config)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), model_config, config


__all__ = [
    "PretrainedError",
    "PRETRAINED_FORMAT",
    "PRETRAINED_FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CARD_NAME",
    "EMBEDDING_SOURCES",
    "tokenizer_spec",
    "read_pretrained_config",
    "model_config_of",
    "load_pretrained",
]
