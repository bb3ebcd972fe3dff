"""--chunk-windows, the model side: one forward of a chunk of consecutive windows encodes each frame once and
gives every window the logits of its own forward (eval mode), for both model families at the presets' sizes;
in training mode the loss is the mean over the same windows, and the gradients are the windows' (frozen BN)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model import randomize_film
from test_train import tiny_data  # noqa: F401  (session fixture: preprocessed bundled data at 64x64)

from rt1.config import PRESETS
from rt1.data.dataset import DatasetError, RT1Dataset
from rt1.data.index import read_index
from rt1.data.preprocessed_file import PreprocessedFile
from rt1.model import action_loss, build_model
from rt1.model.chunks import window_index
from rt1.train.chunks import ChunkBatchSampler, collate_chunks
from rt1.train.loaders import batches_per_epoch

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


# ---- the loader side: chunk tiling, one read per chunk, batches of exactly B windows -----------------


def chunk_index(train_index: Path, out: Path, episodes: int, windows: int) -> Path:
    """The first `windows` windows of each of the first `episodes` episodes of an index: runs of consecutive
    windows to chunk (an index CSV without sidecar)."""
    idx = read_index(train_index)
    order = np.lexsort((idx.starts, idx.file_ids))
    rows, run = [], []
    for i in order:
        start, name = int(idx.starts[i]), idx.files[idx.file_ids[i]]
        if run and (name != run[-1][1] or start != run[-1][0] + 1):
            rows += run[:windows] if len(run) >= windows else []
            run = []
        run.append((start, name))
        if len(rows) >= episodes * windows:
            break
    out.write_text("start_index,file\n" + "".join(f"{s},{n}\n" for s, n in rows[: episodes * windows]))
    return out


@pytest.fixture(scope="module")
def train_set(tiny_data):
    return RT1Dataset(tiny_data.train_index, tiny_data.data_dir)


def test_chunk_table_tiles_every_episode_into_chunks_of_consecutive_windows(train_set):
    rows, chunk = train_set.chunk_table(6)
    assert sorted(rows.tolist()) == list(range(len(train_set)))
    starts, files = train_set._starts[rows], train_set._file_ids[rows]
    sizes = np.bincount(chunk)
    assert sizes.max() == 6 and (sizes >= 1).all() and (np.diff(chunk) >= 0).all()
    same_chunk = chunk[1:] == chunk[:-1]
    assert (starts[1:][same_chunk] == starts[:-1][same_chunk] + 1).all()
    assert (files[1:][same_chunk] == files[:-1][same_chunk]).all()
    episodes = [train_set[int(rows[i])]["source_index"] for i in range(0, 200)]
    for i in range(199):
        if chunk[i] == chunk[i + 1]:
            assert episodes[i] == episodes[i + 1]
    # an episode of n windows gives ceil(n / 6) chunks: its tail is a shorter chunk, never two episodes' tails
    run = np.cumsum(np.r_[True, (files[1:] != files[:-1]) | (starts[1:] != starts[:-1] + 1)]) - 1
    assert len(sizes) == sum(math.ceil(n / 6) for n in np.bincount(run))
    assert (
        len(train_set.chunk_table(1)[1]) == len(train_set)
        and train_set.chunk_table(1)[1][-1] == len(train_set) - 1
    )


def test_a_chunk_is_its_windows_read_as_one_slice_decoded_once(train_set, monkeypatch):
    rows, chunk = train_set.chunk_table(6)
    first = int(np.flatnonzero(np.bincount(chunk) == 6)[0])
    positions = np.flatnonzero(chunk == first)
    calls = []
    original = PreprocessedFile.decode_frames
    monkeypatch.setattr(
        PreprocessedFile,
        "decode_frames",
        lambda self, a, b, out=None: calls.append((a, b)) or original(self, a, b, out),
    )
    item = train_set.chunk(int(rows[positions[0]]), 6)
    assert (
        len(calls) == 1 and calls[0][1] - calls[0][0] == 11
    )  # one slice of 6 + 5 steps, each frame decoded once
    assert item["frames"].shape == (11, 64, 64, 3) and item["action_tokens"].shape == (11, 11)
    batch = collate_chunks([item, train_set.chunk(int(rows[positions[0]]), 2)])
    assert batch["chunk_windows"].tolist() == [6, 2] and batch["frames"].shape[0] == 11 + 7
    for j, p in enumerate(positions):
        window = train_set[int(rows[p])]
        assert torch.equal(item["frames"][j : j + 6], window["frames"])
        assert torch.equal(batch["action_tokens"][j], window["action_tokens"])
        assert torch.equal(batch["actions"][j], window["actions"])
        assert torch.equal(item["text_embed"], window["text_embed"])
    assert torch.equal(batch["action_tokens"][6:], batch["action_tokens"][:2])


def test_a_chunk_across_the_end_of_an_episode_is_refused_naming_the_row(train_set):
    rows, chunk = train_set.chunk_table(6)
    last_of_tail = int(rows[np.flatnonzero(np.diff(chunk))[0]])
    with pytest.raises(DatasetError, match=f"row {last_of_tail}.*crosses the end of episode"):
        train_set.chunk(last_of_tail, 30)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_an_epoch_of_chunk_batches_visits_every_window_once_in_batches_of_b(train_set, world, shuffle):
    b, k = 8, 6
    samplers = [
        ChunkBatchSampler(train_set, k, rank=r, world_size=world, batch_size=b, shuffle=shuffle, seed=3)
        for r in range(world)
    ]
    for s in samplers:
        s.set_epoch(2)
    batches = [list(s) for s in samplers]
    steps = batches_per_epoch(len(train_set), world, b)
    assert all(len(bs) == steps == len(s) for bs, s in zip(batches, samplers))
    seen = []
    for rank_batches in batches:
        for i, keys in enumerate(rank_batches):
            windows = sum(n for _, _, n in keys)
            assert windows == b or i == steps - 1
            assert all(e == 2 and 1 <= n <= k for e, _, n in keys)
            seen += [(row, j) for _, row, n in keys for j in range(n)]
    rows, _ = train_set.chunk_table(k)
    position = {int(r): p for p, r in enumerate(rows)}
    windows = [int(rows[position[row] + j]) for row, j in seen]
    assert len(windows) - len(set(windows)) < world and set(windows) == set(range(len(train_set)))
    if shuffle:  # chunks of several episodes per batch
        assert np.mean([len(keys) for keys in batches[0]]) > 1


def test_one_rank_with_batch_2b_takes_the_windows_of_two_ranks_with_batch_b(train_set):
    one = ChunkBatchSampler(train_set, 6, rank=0, world_size=1, batch_size=8, shuffle=True, seed=1)
    two = [
        ChunkBatchSampler(train_set, 6, rank=r, world_size=2, batch_size=4, shuffle=True, seed=1)
        for r in (0, 1)
    ]

    def windows(keys):
        rows, _ = train_set.chunk_table(6)
        position = {int(r): p for p, r in enumerate(rows)}
        return sorted(int(rows[position[row] + j]) for _, row, n in keys for j in range(n))

    for step, (a, b0, b1) in enumerate(zip(one, *two)):
        if step < len(one) - 1:
            assert windows(a) == windows(b0 + b1)


def test_skip_resumes_the_epoch_where_it_stopped_and_epochs_differ(train_set):
    s = ChunkBatchSampler(train_set, 6, rank=0, world_size=1, batch_size=8, shuffle=True, seed=0)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, skip=5 * 8)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    s.set_epoch(2)
    assert [key[1:] for keys in s for key in keys] != [key[1:] for keys in full for key in keys]
    with pytest.raises(ValueError, match="whole number of batches"):
        s.set_epoch(1, skip=3)


def test_the_chunk_loader_trains_a_step_and_counts_windows(tiny_data, tmp_path):
    from rt1.train.loaders import TimedBatches, make_train_loader
    from rt1.train.step import StepSettings, train_step

    index = chunk_index(tiny_data.train_index, tmp_path / "train.csv", 3, 10)
    dataset = RT1Dataset(index, tiny_data.data_dir, augment=True)
    loader, sampler = make_train_loader(
        dataset,
        rank=0,
        world_size=1,
        batch_size=8,
        shuffle=True,
        seed=0,
        num_workers=0,
        pin_memory=False,
        chunk_windows=6,
    )
    sampler.set_epoch(1)
    batches = TimedBatches(loader, 1)
    model = built("tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = train_step(model, batches, optimizer, StepSettings(torch.device("cpu")))
    assert torch.isfinite(loss) and batches.windows == 8
    assert len(loader) == 4  # 30 windows in batches of 8
    again = next(iter(loader))
    assert again["frames"].shape[0] == int(again["chunk_windows"].sum()) + 5 * len(again["chunk_windows"])
