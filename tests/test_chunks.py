"""--chunk-windows, the model side: one forward of a chunk of consecutive windows encodes each frame once and
gives every window the logits of its own forward (eval mode), for both model families at the presets' sizes;
in training mode the loss is the mean over the same windows, and the gradients are the windows' (frozen BN)."""

from __future__ import annotations

import pytest
import torch
from test_model import randomize_film

from rt1.config import PRESETS
from rt1.model import action_loss, build_model
from rt1.model.chunks import window_index

TOLERANCE = 1e-5


def chunk_inputs(config, windows: list[int], seed: int = 0):
    """Frames of len(windows) chunks (T, H, W, 3), their texts (C, E), and each window's frames (B, F, H, W, 3)
    and text (B, E) cut from them as the loader's windows would be."""
    g = torch.Generator().manual_seed(seed)
    f = config.num_frames
    chunks = [
        torch.randint(0, 256, (k + f - 1, *config.frame_size, 3), generator=g, dtype=torch.uint8)
        for k in windows
    ]
    texts = torch.randn(len(windows), config.text_embed_dim, generator=g)
    window_frames = torch.stack([c[j : j + f] for c in chunks for j in range(len(c) - f + 1)])
    window_texts = texts.repeat_interleave(torch.tensor(windows), dim=0)
    return torch.cat(chunks), texts, torch.tensor(windows), window_frames, window_texts


def built(preset: str, **overrides):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset].model.replace(**overrides))
    return randomize_film(model) if preset != "rt1" else model


def test_window_index_points_at_each_windows_frames():
    assert window_index([2, 1], 3).tolist() == [[0, 1, 2], [1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "preset, windows",
    [
        ("tiny", [6, 3, 1]),
        ("demo", [6, 6, 2]),
        pytest.param("original", [6], marks=pytest.mark.slow),  # ~60 s on 2 shared cores
        pytest.param("rt1", [6], marks=pytest.mark.slow),  # ~28 s
    ],
)
def test_every_windows_logits_from_a_chunk_equal_its_own_forward(preset, windows):
    """Eval mode, the real presets' configurations (randomly initialised; FiLM randomised so the text matters)."""
    model = built(preset).eval()
    frames, texts, per_chunk, window_frames, window_texts = chunk_inputs(model.config, windows)
    with torch.no_grad():
        chunked = model(frames, texts, chunk_windows=per_chunk)
        own = torch.cat(
            [model(window_frames[i : i + 1], window_texts[i : i + 1]) for i in range(len(window_frames))]
        )
    assert chunked.shape == own.shape == (sum(windows), model.config.num_frames, 11, model.config.num_bins)
    assert (chunked - own).abs().max().item() <= TOLERANCE


def test_guidance_over_chunks_equals_the_windows_guidance():
    model = built("tiny").eval()
    frames, texts, per_chunk, window_frames, window_texts = chunk_inputs(model.config, [3, 2])
    with torch.no_grad():
        chunked = model(frames, texts, chunk_windows=per_chunk, cond_scale=3.0)
        own = model(window_frames, window_texts, cond_scale=3.0)
    assert (chunked - own).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("preset", ["tiny", "rt1"])
def test_training_mode_loss_is_the_mean_over_the_windows_and_the_gradients_are_theirs(preset):
    """With BatchNorm frozen (running statistics) and no dropout, training a chunk is training its windows: the
    same loss (the mean over the same windows' tokens) and the same gradient of every parameter."""
    overrides = {"dropout": 0.0, "drop_connect_rate": 0.0} if preset == "rt1" else {"cond_drop_prob": 0.0}
    if preset == "rt1":  # a reduced Google network: the full one's gradients take minutes on a CPU
        overrides.update(width_coefficient=0.1, depth_coefficient=0.5, num_layers=2)
    model = built(preset, **overrides)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    frames, texts, per_chunk, window_frames, window_texts = chunk_inputs(model.config, [4, 2], seed=3)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, model.config.num_bins, (6, model.config.num_frames, 11), generator=g)

    def loss_and_grads(*args, **kwargs):
        model.zero_grad()
        loss = action_loss(model(*args, **kwargs), tokens)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunk_loss, chunk_grads = loss_and_grads(frames, texts, chunk_windows=per_chunk)
    window_loss, window_grads = loss_and_grads(window_frames, window_texts)
    assert chunk_loss.item() == pytest.approx(window_loss.item(), abs=1e-5)
    assert chunk_grads.keys() == window_grads.keys()
    for name, grad in chunk_grads.items():
        assert torch.allclose(grad, window_grads[name], atol=1e-5, rtol=1e-4), name


def test_training_mode_with_batch_statistics_trains_the_chunks_frames_once():
    """BatchNorm in training mode normalises over the chunks' frames (each once): the loss is the mean over the
    windows' tokens of logits decoded from those frames' tokens, and it trains."""
    model = built("tiny", cond_drop_prob=0.0).train()
    frames, texts, per_chunk, _, _ = chunk_inputs(model.config, [6, 1], seed=4)
    tokens = torch.randint(0, 256, (7, 6, 11), generator=torch.Generator().manual_seed(1))
    logits = model(frames, texts, chunk_windows=per_chunk)
    per_window = torch.stack([action_loss(logits[i : i + 1], tokens[i : i + 1]) for i in range(7)])
    loss = action_loss(logits, tokens)
    assert loss.item() == pytest.approx(per_window.mean().item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "null_text_embed" not in n)


@pytest.mark.parametrize("preset", ["tiny", "rt1"])
def test_chunk_input_errors_are_one_line(preset):
    model = built(preset, **({"width_coefficient": 0.1, "depth_coefficient": 0.5} if preset == "rt1" else {}))
    frames, texts, per_chunk, _, _ = chunk_inputs(model.config, [2, 1])
    for args, words in [
        ((frames[:-1], texts, per_chunk), "must be (13, H, W, 3)"),
        ((frames, texts[:1], per_chunk), "1 text embeddings for 2 chunks"),
        ((frames, texts, torch.tensor([2.0, 1.0])), "integer tensor"),
        ((frames, texts, torch.tensor([3, 0])), ">= 1"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
            model(args[0], args[1], chunk_windows=args[2])
        assert "\n" not in str(e.value)
