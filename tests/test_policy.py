"""Tests of rt1.policy.RT1Policy: the cached closed loop equals the model on training windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rt1.actions import ACTION_KEYS, NUM_ACTION_TOKENS, detokenize
from rt1.config import PRESETS
from rt1.model import RT1, normalize_video
from rt1.policy import RT1Policy

TINY = PRESETS["tiny"].model
STEPS = 10


@pytest.fixture(scope="module")
def model() -> RT1:
    torch.manual_seed(0)
    m = RT1(TINY.replace(dropout=0.1))
    with torch.no_grad():  # FiLM starts as identity: give it weights so the text matters
        for name, p in m.named_parameters():
            if ".film." in name and not p.any():
                p.normal_(0.0, 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def episode():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (STEPS, TINY.image_size, TINY.image_size, 3), dtype=np.uint8)
    text = rng.standard_normal(TINY.text_embed_dim).astype(np.float32)
    return images, text


def reference_logits(model: RT1, images: np.ndarray, text: np.ndarray, cond_scale: float = 1.0) -> torch.Tensor:
    """Per-step logits from full training-window forwards: the window starting at step 0 for t < 6,
    else the window ending at t (its last frame)."""
    video = normalize_video(torch.from_numpy(images).permute(3, 0, 1, 2)[None])  # (1, 3, T, H, W)
    text = torch.from_numpy(text)[None]
    f = model.config.num_frames
    with torch.no_grad():
        first = model(video[:, :, :f], text, cond_scale=cond_scale)[0]
        rows = [first[t] if t < f else model(video[:, :, t - f + 1:t + 1], text, cond_scale=cond_scale)[0, -1]
                for t in range(len(images))]
    return torch.stack(rows)


def run_policy(policy: RT1Policy, images, text):
    policy.reset()
    actions, tokens, logits = [], [], []
    for image in images:
        action, token = policy.step(image, text, return_tokens=True)
        actions.append(action)
        tokens.append(token)
        logits.append(policy.last_logits)
    return actions, np.stack(tokens), torch.stack(logits)


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_cached_steps_equal_training_windows(model, episode, cond_scale):
    images, text = episode
    expected = reference_logits(model, images, text, cond_scale)
    actions, tokens, logits = run_policy(RT1Policy(model, cond_scale=cond_scale), images, text)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)  # t < 5 and t >= 5
    np.testing.assert_array_equal(tokens, expected.argmax(-1).numpy())
    expected_actions = detokenize(expected.argmax(-1).numpy())
    for t, action in enumerate(actions):
        assert set(action) == set(ACTION_KEYS)
        for key in ACTION_KEYS:
            np.testing.assert_array_equal(action[key], expected_actions[key][t])


def test_history_matters(model, episode):
    """Sanity check that the comparison above can fail: a policy that forgets history differs."""
    images, text = episode
    expected = reference_logits(model, images, text)
    policy = RT1Policy(model)
    single = []
    for image in images:
        policy.reset()
        policy.step(image, text)
        single.append(policy.last_logits)
    assert (torch.stack(single)[1:] - expected[1:]).abs().max() > 1e-3


def test_uncached_policy_matches_cached(model, episode):
    images, text = episode
    _, cached_tokens, cached = run_policy(RT1Policy(model), images, text)
    _, tokens, logits = run_policy(RT1Policy(model, use_cache=False), images, text)
    torch.testing.assert_close(logits, cached, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(tokens, cached_tokens)


@pytest.mark.parametrize("steps", [4, STEPS])
@pytest.mark.parametrize("cond_scale", [1.0, 2.5])
def test_predict_episode_matches_steps(model, episode, steps, cond_scale):
    images, text = episode
    policy = RT1Policy(model, cond_scale=cond_scale)
    _, tokens, logits = run_policy(policy, images[:steps], text)
    predicted, predicted_logits = policy.predict_episode(images[:steps], text, batch_size=3, return_logits=True)
    assert predicted.shape == (steps, NUM_ACTION_TOKENS)
    np.testing.assert_array_equal(predicted, tokens)
    torch.testing.assert_close(predicted_logits, logits, atol=1e-4, rtol=1e-4)


def test_reset_starts_a_new_episode(model, episode):
    images, text = episode
    policy = RT1Policy(model)
    for image in images[:7]:
        policy.step(image, text)
    policy.reset()
    assert policy.t == 0
    _, first = policy.step(images[0], text, return_tokens=True)
    _, fresh = RT1Policy(model).step(images[0], text, return_tokens=True)
    np.testing.assert_array_equal(first, fresh)


def test_tensor_and_numpy_inputs_agree(model, episode):
    images, text = episode
    a = RT1Policy(model).step(images[0], text, return_tokens=True)[1]
    b = RT1Policy(model).step(torch.from_numpy(images[0]), torch.from_numpy(text), return_tokens=True)[1]
    np.testing.assert_array_equal(a, b)


def test_policy_input_checks(model, episode):
    images, text = episode
    policy = RT1Policy(model)
    with pytest.raises(ValueError, match="64, 64, 3"):
        policy.step(images[0, :32, :32], text)
    with pytest.raises(TypeError, match="uint8"):
        policy.step(images[0].astype(np.float32), text)
    with pytest.raises(ValueError, match="512"):
        policy.step(images[0], text[:10])
    policy.step(images[0], text)
    with pytest.raises(ValueError, match="reset"):
        policy.step(images[1], text + 1.0)
