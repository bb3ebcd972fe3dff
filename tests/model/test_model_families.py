"""The contract every model family keeps (rt1.model.factory): the same tests over the MaxViT `RT1` and Google's
network, at small sizes, so the trainer, RT1Policy, export and closed-loop evaluation need no branch per family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rt1.config import PRESETS
from rt1.google_config import GoogleRT1Config
from rt1.model import build_model, load_model
from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
from rt1.model_families import model_config_from_dict
from rt1.policy import RT1Policy

# Google's network at a small size (frames 64x80 resized to 64x64 inside, 10 MBConv blocks of width 8-32)
GOOGLE_SMALL = GoogleRT1Config(
    image_height=64,
    image_width=80,
    encoder_input_size=64,
    width_coefficient=0.1,
    depth_coefficient=0.5,
    num_layers=2,
    num_heads=2,
    key_dim=16,
    model_dim=64,
    num_frames=4,
)
FAMILIES = {"maxvit": PRESETS["tiny"].model.replace(num_frames=4), "google_rt1": GOOGLE_SMALL}


def randomized(config) -> torch.nn.Module:
    """Seeded random weights with FiLM away from the identity, BatchNorm statistics from one training-mode
    pass over the test frames (a random network's activations otherwise vanish and the image stops mattering)."""
    torch.manual_seed(0)
    model = build_model(config)
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 1.0  # the running statistics become this batch's
        model.train()(*inputs(config, batch=2))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return model.eval()


def inputs(config, batch: int = 2, frames: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = frames or config.num_frames
    video = torch.randint(0, 256, (batch, f, *config.frame_size, 3), generator=g, dtype=torch.uint8)
    return video, torch.randn(batch, config.text_embed_dim, generator=g)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    config = FAMILIES[request.param]
    return config, randomized(config)


def test_forward_shapes_and_the_interface(family):
    config, model = family
    frames, text = inputs(config)
    with torch.no_grad():
        logits = model(frames, text)
    assert logits.shape == (2, config.num_frames, config.num_actions, config.num_bins)
    assert config.frame_size == tuple(frames.shape[2:4])
    assert isinstance(model.supports_guidance, bool) and isinstance(model.trains_every_parameter, bool)
    assert model_config_from_dict(config.to_dict()) == config


def test_frame_t_depends_only_on_frames_up_to_t(family):
    config, model = family
    frames, text = inputs(config)
    changed = frames.clone()
    changed[:, 2:] = inputs(config, seed=1)[0][:, 2:]
    with torch.no_grad():
        a, b = model(frames, text), model(changed, text)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3


def test_cached_policy_equals_uncached_and_the_windowed_forward(family):
    """Over more steps than the window: the cached policy, re-encoding every frame, and the forward of the
    window that ends at each step (from the episode's start while it is shorter) give the same logits."""
    config, model = family
    steps = config.num_frames + 3
    frames, text = inputs(config, batch=1, frames=steps)
    cached = RT1Policy(model)
    uncached = RT1Policy(model, use_cache=False, fold_batch_norms=False)
    for t in range(steps):
        image, embed = frames[0, t].numpy(), text[0].numpy()
        cached.step(image, embed)
        uncached.step(image, embed)
        start = max(0, t + 1 - config.num_frames)
        with torch.no_grad():
            expected = model(frames[:, start : t + 1], text)[0, -1]
        assert torch.allclose(cached.last_logits, expected, atol=1e-4), t
        assert torch.allclose(uncached.last_logits, expected, atol=1e-4), t
    predicted = cached.predict_episode(frames[0].numpy(), text[0].numpy())
    assert predicted.shape == (steps, config.num_actions)


def test_the_inference_form_gives_the_same_logits(family):
    config, model = family
    frames, text = inputs(config)
    with torch.no_grad():
        expected = model(frames, text)
        fast = model.for_inference()
        assert torch.allclose(fast(frames, text), expected, atol=1e-4)
    with pytest.raises(RuntimeError):
        fast.train()


def test_a_checkpoint_and_an_export_load_as_the_same_model(family, tmp_path):
    from rt1.export import export

    config, model = family
    path = tmp_path / "checkpoint-1.pt"
    state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION}
    torch.save(
        {**state, "model": model.state_dict(), "model_config": config.to_dict(), "train_args": {}}, path
    )
    frames, text = inputs(config)
    with torch.no_grad():
        expected = model(frames, text)
        for source in (path, export(path, tmp_path / "export", embedding_source="mini-fractal")):
            loaded, loaded_config, _ = load_model(source)
            assert loaded_config == config and type(loaded) is type(model)
            assert torch.equal(loaded(frames, text), expected)


def test_a_training_step_reaches_every_parameter_it_says_it_trains(family):
    from rt1.model import action_loss

    config, model = family
    model = randomized(config).train()
    frames, text = inputs(config, batch=8)  # MaxViT: P(no condition dropout in 8 samples at 0.2) = 0.17
    torch.manual_seed(3)
    tokens = torch.randint(0, config.num_bins, (8, config.num_frames, config.num_actions))
    action_loss(model(frames, text), tokens).backward()
    without = [name for name, p in model.named_parameters() if p.grad is None]
    assert bool(without) == (not model.trains_every_parameter), without


def test_the_policy_acts_in_the_simulated_scene(family):
    """Closed-loop evaluation drives either family through RT1Policy (frames resized to its frame_size)."""
    from rt1.evaluation.closed_loop import evaluate_policy, rt1_policy_factory

    config, model = family
    result = evaluate_policy(rt1_policy_factory(model), 1, seed=0, max_steps=3)
    assert result["overall"]["episodes"] == 1
    assert np.isfinite(result["seconds"])
