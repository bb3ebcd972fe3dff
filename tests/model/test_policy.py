"""Tests of rt1.policy.RT1Policy: the cached closed loop equals the model on training windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rt1.actions import ACTION_KEYS, NUM_ACTION_TOKENS, detokenize
from rt1.config import PRESETS
from rt1.model import RT1
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


def reference_logits(
    model: RT1, images: np.ndarray, text: np.ndarray, cond_scale: float = 1.0
) -> torch.Tensor:
    """Per-step logits from full training-window forwards: the window starting at step 0 for t < 6,
    else the window ending at t (its last frame)."""
    frames = torch.from_numpy(images)[None]  # uint8 (1, T, H, W, 3)
    text = torch.from_numpy(text)[None]
    f = model.config.num_frames
    with torch.no_grad():
        first = model(frames[:, :f], text, cond_scale=cond_scale)[0]
        rows = [
            first[t] if t < f else model(frames[:, t - f + 1 : t + 1], text, cond_scale=cond_scale)[0, -1]
            for t in range(len(images))
        ]
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
    predicted, predicted_logits = policy.predict_episode(
        images[:steps], text, batch_size=3, return_logits=True
    )
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


# ---- inference-only speed-ups (issue 15) -----------------------------------------------------------------


def calibrated(config) -> RT1:
    """A model whose BatchNorms have non-trivial running statistics and affine parameters (folding is
    then a real change of the computation) and whose FiLM layers are not the identity."""
    torch.manual_seed(3)
    m = RT1(config)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".film." in name and not p.any():
                p.normal_(0.0, 0.05)
        for module in m.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return m.eval()


@pytest.mark.parametrize(
    "variants",
    [
        {},
        {
            "attention_memory_kv": 4,
            "token_learner_pooling": "mean",
            "transformer_kv_source": "input",
            "pixel_scaling": "raw",
        },
    ],
)
@pytest.mark.parametrize("cond_scale", [1.0, 2.5])
def test_folded_policy_acts_like_the_unoptimised_one(episode, variants, cond_scale):
    model = calibrated(TINY.replace(**variants))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, text = episode
    _, tokens, logits = run_policy(RT1Policy(model, cond_scale=cond_scale), images, text)
    _, plain_tokens, plain = run_policy(
        RT1Policy(model, cond_scale=cond_scale, fold_batch_norms=False), images, text
    )
    np.testing.assert_array_equal(tokens, plain_tokens)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    for k, v in model.state_dict().items():  # folding leaves the model alone
        assert torch.equal(v, before[k]), k


def test_inference_model_shares_weights_and_cannot_train():
    from rt1.model.inference import FoldedMBConv, inference_model

    model = calibrated(TINY)
    fast = inference_model(model)
    assert all(isinstance(b.mbconv, FoldedMBConv) for b in fast.vit.blocks)
    assert fast.transformer.layers[0][1].fc1.weight is model.transformer.layers[0][1].fc1.weight
    assert fast.vit.blocks[0].mbconv.squeeze_excitation is not None and not model.training
    with pytest.raises(RuntimeError, match="cannot train"):
        fast.train()
    fast.eval()  # allowed
    video = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8)
    text = torch.randn(2, TINY.text_embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(
            fast(video, text, cond_scale=3.0), model(video, text, cond_scale=3.0), atol=1e-5, rtol=1e-5
        )
