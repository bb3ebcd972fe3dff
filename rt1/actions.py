"""The RT-1 action space and its tokenizer, in one place.

RT-1 predicts 11 action dimensions per step, each as one of 256 tokens. The order is the
original PyTorch pipeline's:

    index  key                                   dims  bounds
    0-2    world_vector                          3     [-1, 1]
    3-5    rotation_delta                        3     [-pi/2, pi/2]
    6      gripper_closedness_action             1     [-1, 1]   (continuous: +1 close, -1 open)
    7-8    base_displacement_vector              2     [-1, 1]
    9      base_displacement_vertical_rotation   1     [-pi, pi]
    10     terminate_episode                     1     one-hot (3,) -> its argmax

Float dimension:  token = floor((clip(a, lo, hi) - lo) / (hi - lo) * 255)   (255 only at hi)
                  a     = token / 255 * (hi - lo) + lo
terminate_episode: token = argmax(one_hot); detokenize gives the one-hot of the token clipped to [0, 2]
(a model may emit any of the 256 tokens for that dimension).

`tokenize` and `detokenize` work on numpy arrays and torch tensors with any leading shape.

`ActionTokenizer` is the same scheme with a model's own bins and world_vector bound
(`ActionTokenizer.of(config)`): RT-1-X (the Open X-Embodiment release) has 512 bins and world_vector in
[-2, 2]. Its invalid terminate tokens (3..511) give [0, 0, 1], as the release's RT1Policy does
(rt1_inference_example.py L140-144) and as the clipping here does. The token order is always this
module's: a network whose output slots follow another order (`check_action_order`, e.g. rt1main's and
RT-1-X's, terminate_episode first) permutes its logits with `token_index` before anyone reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rt1.rlds_spec import ACTION_SPEC

NUM_BINS = 256
TERMINATE_KEY = "terminate_episode"
NUM_TERMINATE_CLASSES = ACTION_SPEC[TERMINATE_KEY].shape[0]


@dataclass(frozen=True)
class ContinuousActionKey:
    """One float action key of the RLDS `action` dict with its fixed RT-1 bounds (dims from the dataset spec)."""

    key: str
    low: float
    high: float

    @property
    def dims(self) -> int:
        return ACTION_SPEC[self.key].shape[0]


CONTINUOUS_KEYS: tuple[ContinuousActionKey, ...] = (
    ContinuousActionKey("world_vector", -1.0, 1.0),
    ContinuousActionKey("rotation_delta", -math.pi / 2, math.pi / 2),
    ContinuousActionKey("gripper_closedness_action", -1.0, 1.0),
    ContinuousActionKey("base_displacement_vector", -1.0, 1.0),
    ContinuousActionKey("base_displacement_vertical_rotation", -math.pi, math.pi),
)
NUM_ACTION_TOKENS = sum(k.dims for k in CONTINUOUS_KEYS) + 1  # 11: terminate is one token

ACTION_KEYS: tuple[str, ...] = tuple(k.key for k in CONTINUOUS_KEYS) + (TERMINATE_KEY,)

# One readable name per token, used by metrics, logs and plots.
ACTION_DIM_NAMES: tuple[str, ...] = (
    "world_x",
    "world_y",
    "world_z",
    "roll",
    "pitch",
    "yaw",
    "gripper",
    "base_x",
    "base_y",
    "base_yaw",
    "terminate",
)

# Per-token bounds of the 10 continuous tokens (index 10 is terminate).
TOKEN_LOW = np.array([k.low for k in CONTINUOUS_KEYS for _ in range(k.dims)], dtype=np.float64)
TOKEN_HIGH = np.array([k.high for k in CONTINUOUS_KEYS for _ in range(k.dims)], dtype=np.float64)
NUM_CONTINUOUS_TOKENS = len(TOKEN_LOW)
assert NUM_CONTINUOUS_TOKENS + 1 == NUM_ACTION_TOKENS == len(ACTION_DIM_NAMES)


def check_action_order(order) -> tuple[str, ...]:
    """A model's token order (every RLDS action key once, e.g. Google's rt1main starts with terminate_episode)
    as a tuple; ValueError naming what is wrong."""
    order = tuple(order) if isinstance(order, (list, tuple)) else order
    if not isinstance(order, tuple) or sorted(map(str, order)) != sorted(ACTION_KEYS):
        raise ValueError(f"an action order names each of {list(ACTION_KEYS)} once, got {order!r}")
    return order


def token_index(order) -> tuple[int, ...]:
    """For a model whose tokens follow `order` (each key's dims in turn, terminate_episode one token): for each
    token of this module's order, the model's token that carries it (logits[..., token_index(order), :])."""
    theirs = [(key, d) for key in check_action_order(order) for d in range(_token_dims(key))]
    return tuple(theirs.index((key, d)) for key in ACTION_KEYS for d in range(_token_dims(key)))


def _token_dims(key: str) -> int:
    return 1 if key == TERMINATE_KEY else ACTION_SPEC[key].shape[0]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _check_keys(actions: dict) -> None:
    missing = [k for k in ACTION_KEYS if k not in actions]
    if missing:
        raise KeyError(f"action dict is missing keys {missing}; expected {list(ACTION_KEYS)}")
    for spec in CONTINUOUS_KEYS:
        if actions[spec.key].shape[-1] != spec.dims:
            raise ValueError(
                f"action '{spec.key}' has last dimension {actions[spec.key].shape[-1]}, expected {spec.dims}"
            )
    if actions[TERMINATE_KEY].shape[-1] != NUM_TERMINATE_CLASSES:
        raise ValueError(
            f"action '{TERMINATE_KEY}' has last dimension {actions[TERMINATE_KEY].shape[-1]}, "
            f"expected {NUM_TERMINATE_CLASSES}"
        )


def tokenize(actions: dict, num_bins: int = NUM_BINS, low=TOKEN_LOW, high=TOKEN_HIGH):
    """RLDS action dict (arrays shaped (..., dims)) -> tokens (..., 11).

    numpy input gives a uint8 array (int64 above 256 bins); torch input gives an int64 tensor on the same
    device. num_bins, low and high (10 continuous tokens) are `ActionTokenizer`'s; the defaults are RT-1's.
    """
    _check_keys(actions)
    if _is_torch(actions[TERMINATE_KEY]):
        import torch

        continuous = torch.cat([actions[k.key].to(torch.float64) for k in CONTINUOUS_KEYS], dim=-1)
        low = torch.as_tensor(low, device=continuous.device)
        high = torch.as_tensor(high, device=continuous.device)
        scaled = (torch.minimum(torch.maximum(continuous, low), high) - low) / (high - low)
        tokens = torch.floor(scaled * (num_bins - 1)).to(torch.int64)
        terminate = actions[TERMINATE_KEY].argmax(dim=-1, keepdim=True).to(torch.int64)
        return torch.cat([tokens, terminate], dim=-1)
    continuous = np.concatenate(
        [np.asarray(actions[k.key], dtype=np.float64) for k in CONTINUOUS_KEYS], axis=-1
    )
    scaled = (np.clip(continuous, low, high) - low) / (high - low)
    dtype = np.uint8 if num_bins <= 256 else np.int64
    tokens = np.floor(scaled * (num_bins - 1)).astype(dtype)
    terminate = np.argmax(np.asarray(actions[TERMINATE_KEY]), axis=-1)[..., None].astype(dtype)
    return np.concatenate([tokens, terminate], axis=-1)


def detokenize(tokens, num_bins: int = NUM_BINS, low=TOKEN_LOW, high=TOKEN_HIGH) -> dict:
    """Tokens (..., 11) -> RLDS action dict: float32 arrays (..., dims), terminate int32 one-hot (..., 3).

    Returns numpy arrays for numpy input and torch tensors for torch input. num_bins, low and high are the
    model's (`ActionTokenizer.of(config)`: e.g. RT-1-X's 512 bins, world_vector in [-2, 2]); the defaults are
    RT-1's (the pipeline's data: 256 bins).
    """
    if tokens.shape[-1] != NUM_ACTION_TOKENS:
        raise ValueError(f"tokens have last dimension {tokens.shape[-1]}, expected {NUM_ACTION_TOKENS}")
    if _is_torch(tokens):
        import torch

        low = torch.as_tensor(low, device=tokens.device)
        high = torch.as_tensor(high, device=tokens.device)
        values = tokens[..., :NUM_CONTINUOUS_TOKENS].to(torch.float64) / (num_bins - 1) * (high - low) + low
        values = values.to(torch.float32)
        terminate_index = tokens[..., NUM_CONTINUOUS_TOKENS].long().clamp(0, NUM_TERMINATE_CLASSES - 1)
        terminate = torch.nn.functional.one_hot(terminate_index, NUM_TERMINATE_CLASSES).to(torch.int32)
    else:
        tokens = np.asarray(tokens)
        values = (
            tokens[..., :NUM_CONTINUOUS_TOKENS].astype(np.float64) / (num_bins - 1) * (high - low) + low
        ).astype(np.float32)
        terminate_index = np.clip(
            tokens[..., NUM_CONTINUOUS_TOKENS].astype(np.int64), 0, NUM_TERMINATE_CLASSES - 1
        )
        terminate = np.eye(NUM_TERMINATE_CLASSES, dtype=np.int32)[terminate_index]
    out = {}
    start = 0
    for spec in CONTINUOUS_KEYS:
        out[spec.key] = values[..., start : start + spec.dims]
        start += spec.dims
    out[TERMINATE_KEY] = terminate
    return out


@dataclass(frozen=True)
class ActionTokenizer:
    """A model's action tokenizer: this module's scheme (and token order) with its bins and world_vector bound."""

    num_bins: int = NUM_BINS
    world_vector_bound: float = 1.0

    @classmethod
    def of(cls, config) -> ActionTokenizer:
        """The tokenizer of a model config (fields num_bins, world_vector_bound; RT-1's if absent)."""
        return cls(getattr(config, "num_bins", NUM_BINS), float(getattr(config, "world_vector_bound", 1.0)))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the 10 continuous tokens in this module's order."""
        low, high = TOKEN_LOW.copy(), TOKEN_HIGH.copy()
        low[:3], high[:3] = -self.world_vector_bound, self.world_vector_bound  # world_vector: tokens 0-2
        return low, high

    def tokenize(self, actions: dict):
        """RLDS action dict -> tokens (..., 11) (see `tokenize`)."""
        return tokenize(actions, self.num_bins, *self.bounds)

    def detokenize(self, tokens) -> dict:
        """Tokens (..., 11), e.g. the argmax of a model's logits -> RLDS action dict (see `detokenize`)."""
        return detokenize(tokens, self.num_bins, *self.bounds)


def flatten_actions(actions: dict):
    """RLDS action dict -> continuous values (..., 11) in token order; terminate as its class index.

    Used for plotting and for error metrics in action units.
    """
    _check_keys(actions)
    if _is_torch(actions[TERMINATE_KEY]):
        import torch

        parts = [actions[k.key].to(torch.float32) for k in CONTINUOUS_KEYS]
        parts.append(actions[TERMINATE_KEY].argmax(dim=-1, keepdim=True).to(torch.float32))
        return torch.cat(parts, dim=-1)
    parts = [np.asarray(actions[k.key], dtype=np.float32) for k in CONTINUOUS_KEYS]
    parts.append(np.argmax(np.asarray(actions[TERMINATE_KEY]), axis=-1)[..., None].astype(np.float32))
    return np.concatenate(parts, axis=-1)
