"""rt1.actions: the RT-1 tokenizer against the formula written out here, for numpy and torch."""

import math

import numpy as np
import pytest
import torch

from rt1.actions import (
    ACTION_DIM_NAMES,
    CONTINUOUS_KEYS,
    NUM_ACTION_TOKENS,
    TERMINATE_KEY,
    detokenize,
    flatten_actions,
    tokenize,
)

BOUNDS = {
    "world_vector": (3, -1.0, 1.0),
    "rotation_delta": (3, -math.pi / 2, math.pi / 2),
    "gripper_closedness_action": (1, -1.0, 1.0),
    "base_displacement_vector": (2, -1.0, 1.0),
    "base_displacement_vertical_rotation": (1, -math.pi, math.pi),
}
ORDER = [
    "world_vector",
    "rotation_delta",
    "gripper_closedness_action",
    "base_displacement_vector",
    "base_displacement_vertical_rotation",
]


def reference_token(value: float, low: float, high: float) -> int:
    """RT-1: clip to the fixed bounds, then floor((a - low) / (high - low) * 255)."""
    value = min(max(value, low), high)
    return int(math.floor((value - low) / (high - low) * 255))


def action_dict(
    values: dict[str, list[float]],
    terminate_class: int = 1,
    batch: int = 1,
    lib: str = "numpy",
    dtype=np.float32,
) -> dict:
    """Actions of `batch` identical steps."""
    out = {k: np.tile(np.asarray(v, dtype), (batch, 1)) for k, v in values.items()}
    one_hot = np.zeros((batch, 3), np.int32)
    one_hot[:, terminate_class] = 1
    out[TERMINATE_KEY] = one_hot
    if lib == "torch":
        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out


def uniform(value_of) -> dict[str, list[float]]:
    return {k: [value_of(lo, hi)] * dims for k, (dims, lo, hi) in BOUNDS.items()}


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize(
    "case,value_of,expected",
    [
        ("exactly min", lambda lo, hi: lo, 0),
        ("exactly max", lambda lo, hi: hi, 255),
        ("below min", lambda lo, hi: lo - 5.0, 0),
        ("above max", lambda lo, hi: hi + 5.0, 255),
        ("centre", lambda lo, hi: (lo + hi) / 2, 127),
    ],
)
def test_edge_values(lib, case, value_of, expected):
    # float64, so that the bounds pi/2 and pi are exactly the bounds (float32 cannot hold them)
    tokens = tokenize(action_dict(uniform(value_of), lib=lib, dtype=np.float64))
    assert tokens.shape == (1, NUM_ACTION_TOKENS)
    assert [int(t) for t in tokens[0, :10]] == [expected] * 10, case
    assert int(tokens[0, 10]) == 1


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_gripper_is_continuous(lib):
    """The seed cast the float gripper to int32, so its token was always 0; here 0.5 -> 191."""
    for value, expected in [(0.5, 191), (-0.5, 63), (0.0, 127), (1.0, 255), (-1.0, 0), (0.999, 254)]:
        values = uniform(lambda lo, hi: 0.0)
        values["gripper_closedness_action"] = [value]
        tokens = tokenize(action_dict(values, lib=lib))
        assert ACTION_DIM_NAMES[6] == "gripper"
        assert int(tokens[0, 6]) == expected == reference_token(np.float32(value), -1.0, 1.0), value


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_dtypes_and_terminate(lib):
    for cls in range(3):
        tokens = tokenize(action_dict(uniform(lambda lo, hi: 0.0), terminate_class=cls, batch=4, lib=lib))
        assert int(tokens[0, 10]) == cls
        if lib == "numpy":
            assert tokens.dtype == np.uint8
        else:
            assert tokens.dtype == torch.int64
        back = detokenize(tokens)
        expected = np.eye(3, dtype=np.int32)[cls]
        assert np.array_equal(np.asarray(back[TERMINATE_KEY][0]), expected)


def random_actions(rng, n, margin=0.0):
    """Random actions, `margin` of the range beyond each bound on both sides."""
    actions = {}
    for key, (dims, lo, hi) in BOUNDS.items():
        span = hi - lo
        actions[key] = rng.uniform(lo - margin * span, hi + margin * span, (n, dims)).astype(np.float32)
    actions[TERMINATE_KEY] = np.eye(3, dtype=np.int32)[rng.integers(0, 3, n)]
    return actions


def test_random_values_match_the_formula_numpy_and_torch():
    rng = np.random.default_rng(0)
    actions = random_actions(rng, 2000, margin=0.2)
    tokens_np = tokenize(actions)
    tokens_torch = tokenize({k: torch.from_numpy(v) for k, v in actions.items()})
    assert np.array_equal(tokens_np.astype(np.int64), tokens_torch.numpy())
    column = 0
    for key in ORDER:
        dims, lo, hi = BOUNDS[key]
        for d in range(dims):
            expected = [reference_token(float(v), lo, hi) for v in actions[key][:, d]]
            assert np.array_equal(tokens_np[:, column], expected), key
            column += 1
    assert np.array_equal(tokens_np[:, 10], np.argmax(actions[TERMINATE_KEY], axis=1))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_round_trip_within_one_bin(lib):
    rng = np.random.default_rng(1)
    actions = random_actions(rng, 3000)
    inputs = actions if lib == "numpy" else {k: torch.from_numpy(v) for k, v in actions.items()}
    back = detokenize(tokenize(inputs))
    for key, (dims, lo, hi) in BOUNDS.items():
        width = (hi - lo) / 255
        restored = np.asarray(back[key], np.float64)
        original = actions[key].astype(np.float64)
        assert restored.shape == original.shape
        assert np.all(np.abs(restored - original) <= width + 1e-5), key
        assert np.all(restored <= original + 1e-5), key  # floor: the bin's lower edge
    assert np.array_equal(np.asarray(back[TERMINATE_KEY]), actions[TERMINATE_KEY])


def test_detokenize_formula_on_every_token():
    tokens = np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, NUM_ACTION_TOKENS))
    back = detokenize(tokens)
    for key, (dims, lo, hi) in BOUNDS.items():
        expected = np.arange(256) / 255 * (hi - lo) + lo
        assert np.allclose(back[key], expected[:, None], atol=1e-6), key
    # any token the model emits for terminate maps to a valid one-hot
    assert np.array_equal(back[TERMINATE_KEY].sum(axis=1), np.ones(256))
    back_torch = detokenize(torch.from_numpy(tokens.astype(np.int64)))
    for key in BOUNDS:
        assert np.allclose(back_torch[key].numpy(), back[key], atol=1e-6)


def test_leading_shapes_and_flatten():
    rng = np.random.default_rng(2)
    flat_actions = random_actions(rng, 24)
    actions = {k: v.reshape(2, 3, 4, -1) for k, v in flat_actions.items()}
    tokens = tokenize(actions)
    assert tokens.shape == (2, 3, 4, NUM_ACTION_TOKENS)
    assert np.array_equal(tokens.reshape(24, -1), tokenize(flat_actions))
    flat = flatten_actions(actions)
    assert flat.shape == (2, 3, 4, NUM_ACTION_TOKENS) and flat.dtype == np.float32
    assert np.allclose(flat[..., 6], actions["gripper_closedness_action"][..., 0])
    assert np.array_equal(flat[..., 10], np.argmax(actions[TERMINATE_KEY], axis=-1))
    assert [k.key for k in CONTINUOUS_KEYS] == ORDER
