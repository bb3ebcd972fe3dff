"""The loader: rt1.data.dataset.RT1Dataset and the episode reader, on real preprocessed files."""

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from rt1.actions import flatten_actions, tokenize
from rt1.data import images
from rt1.data.dataset import DatasetError, RT1Dataset, random_offset, shifted_frames
from rt1.data.index import build_index
from rt1.data.preprocess import preprocess_dir
from rt1.data.preprocessed_file import PreprocessedFile, read_episodes
from rt1.data.preprocessed_schema import FORMAT_VERSION

try:
    from tests.synthetic_segments import (
        DEFAULT_LAYOUT,
        embedding_of,
        step_colour,
        synthetic_actions,
        write_synthetic_segments,
    )
except ImportError:
    from synthetic_segments import (
        DEFAULT_LAYOUT,
        embedding_of,
        step_colour,
        synthetic_actions,
        write_synthetic_segments,
    )

LENGTHS = [n for f in DEFAULT_LAYOUT for n, _ in f]  # steps per source episode
SIZE = 96  # small frames keep the tests fast; the layout logic does not depend on the size


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    seg = tmp_path_factory.mktemp("seg")
    write_synthetic_segments(seg, DEFAULT_LAYOUT)
    pre = tmp_path_factory.mktemp("pre")
    preprocess_dir(seg, pre, workers=1, image_size=SIZE, progress=False)
    index = tmp_path_factory.mktemp("index")
    result = build_index(pre, index, val_fraction=0.3, seed=0)
    return pre, result


@pytest.fixture
def train(data):
    pre, result = data
    ds = RT1Dataset(result.train_csv, pre)
    yield ds
    ds.close()


def copy_data(data, tmp_path) -> tuple[Path, Path]:
    pre, result = data
    shutil.copytree(pre, tmp_path / "pre")
    shutil.copy(result.train_csv, tmp_path)
    shutil.copy(result.train_csv.with_suffix(".json"), tmp_path)
    return tmp_path / "pre", tmp_path / result.train_csv.name


def assert_same_item(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_item_content(train, data):
    assert len(train) == data[1].train_windows
    for row in range(len(train)):
        item = train[row]
        assert item["frames"].shape == (6, SIZE, SIZE, 3) and item["frames"].dtype == torch.uint8
        assert item["frames"].is_contiguous()
        assert item["text_embed"].shape == (512,) and item["text_embed"].dtype == torch.float32
        assert item["action_tokens"].shape == (6, 11) and item["action_tokens"].dtype == torch.int64
        assert item["actions"].shape == (6, 11) and item["actions"].dtype == torch.float32
        src, step = item["source_index"], item["episode_step"]
        # the right frames, in order: each flat frame encodes (episode, step)
        for k in range(6):
            mean = item["frames"][k, 20:76, 20:76].float().mean(dim=(0, 1)).numpy()
            assert np.allclose(mean, step_colour(src, step + k), atol=4), (row, k)
        actions = synthetic_actions(src, LENGTHS[src])
        window = {key: v[step : step + 6] for key, v in actions.items()}
        assert torch.equal(item["action_tokens"], torch.from_numpy(tokenize(window).astype(np.int64)))
        assert torch.equal(item["actions"], torch.from_numpy(flatten_actions(window)))
        assert torch.equal(item["text_embed"], torch.from_numpy(embedding_of(item["instruction"])))
        assert item["row"] == row and isinstance(item["file"], str) and isinstance(item["start_index"], int)
    assert train[-1]["row"] == len(train) - 1
    with pytest.raises(IndexError):
        train[len(train)]


def test_dataloader_with_two_workers_matches_direct_indexing(train):
    direct = [train[i] for i in range(len(train))]  # opens files in the parent before the workers fork
    loader = DataLoader(
        train,
        batch_size=4,
        shuffle=False,
        num_workers=2,
        persistent_workers=True,
        pin_memory=torch.cuda.is_available(),
    )
    for _ in range(2):  # persistent workers serve a second epoch
        batches = list(loader)
        expected = [default_collate(direct[i : i + 4]) for i in range(0, len(direct), 4)]
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            assert_same_item(got, want)


def test_distributed_sampler_covers_every_window_once(train):
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(train, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        sampler.set_epoch(1)
        for batch in DataLoader(train, batch_size=3, sampler=sampler, num_workers=2):
            for i, row in enumerate(batch["row"].tolist()):
                assert torch.equal(batch["frames"][i], train[row]["frames"])
                seen.append(row)
    assert len(seen) == len(set(seen)) == 2 * (len(train) // 2)


def test_handles_of_another_process_are_not_used(train):
    train[0]
    file_id = int(train._file_ids[0])
    parent_handle = train._open[file_id]
    train._pid = -1  # as seen from a forked worker: the handles belong to another process
    train[0]
    assert train._open[file_id] is not parent_handle
    parent_handle.close()


def test_pickles_without_file_handles(train):
    train[0]
    clone = pickle.loads(pickle.dumps(train))
    assert len(clone._open) == 0
    assert_same_item(clone[3], train[3])


def test_validation_items_do_not_change(data):
    pre, result = data
    val = RT1Dataset(result.val_csv, pre)
    assert len(val) == result.val_windows
    assert_same_item(val[0], val[0])


def test_augmentation_shifts_all_frames_alike(data):
    pre, result = data
    plain = RT1Dataset(result.train_csv, pre)
    augmented = RT1Dataset(result.train_csv, pre, augment=True)
    torch.manual_seed(0)
    shifted = 0
    for row in range(0, len(plain), 3):
        a, b = plain[row]["frames"], augmented[row]["frames"]
        assert b.shape == a.shape
        border = (b == 0).all(dim=-1)  # (6, H, W): zero padding brought in by the shift
        assert all(torch.equal(border[0], border[k]) for k in range(6))
        rows_zero = border[0].all(dim=1).sum().item()
        cols_zero = border[0].all(dim=0).sum().item()
        assert rows_zero <= round(SIZE * 20 / 256) and cols_zero <= round(SIZE * 50 / 320)
        shifted += not torch.equal(a, b)
    assert shifted > 0
    torch.manual_seed(1)
    first = augmented[5]["frames"]
    torch.manual_seed(1)
    assert torch.equal(first, augmented[5]["frames"])  # reproducible from torch's seed


def test_shifted_frames_moves_content():
    """Each output pixel is the input pixel at one offset (the same for every frame), or zero padding."""
    height, width = 8, 10
    ids = np.arange(1, height * width + 1, dtype=np.uint8).reshape(height, width)
    frames = np.stack([np.stack([ids, ids + 100, ids], -1), np.stack([ids, ids + 150, ids], -1)])
    offsets_seen = set()
    for seed in range(30):
        out = shifted_frames(frames, random_offset((2, 3), generator=torch.Generator().manual_seed(seed)))
        offsets = set()
        for k in range(2):
            for y in range(height):
                for x in range(width):
                    value = int(out[k, y, x, 0])
                    if value == 0:
                        continue
                    sy, sx = divmod(value - 1, width)
                    offsets.add((sy - y, sx - x))
                    assert out[k, y, x, 1] == frames[k, sy, sx, 1]
        assert len(offsets) == 1
        dy, dx = offsets.pop()
        assert abs(dy) <= 2 and abs(dx) <= 3
        assert (out[..., 0] != 0).sum() == 2 * (height - abs(dy)) * (width - abs(dx))
        offsets_seen.add((dy, dx))
    assert len(offsets_seen) > 5


# -- episodes ------------------------------------------------------------------------------------


def test_read_episodes_and_index_episodes(train, data):
    pre, result = data
    episodes = read_episodes(pre / "0-4_episode.h5")
    assert [e.num_steps for e in episodes] == [n for n, _ in DEFAULT_LAYOUT[0]]
    for ep in episodes:
        assert ep.images.shape == (ep.num_steps, SIZE, SIZE, 3)
        assert np.array_equal(ep.action_tokens, tokenize(synthetic_actions(ep.source_index, ep.num_steps)))
    listed = train.episodes()
    assert sum(e.num_windows for e in listed) == len(train)
    assert {e.instruction for e in listed} <= {i for f in DEFAULT_LAYOUT for _, i in f}


def test_decoders_agree(data):
    if images._simplejpeg is None:
        pytest.skip("simplejpeg not installed: Pillow is the only decoder")
    pre, _ = data
    with h5py.File(pre / "4-7_episode.h5") as f:
        blob, offsets = f["images/jpeg"][:], f["images/offset"][:]
    for t in range(0, len(offsets) - 1, 5):
        frame = blob[offsets[t] : offsets[t + 1]]
        assert np.array_equal(images.decode_jpeg(frame), images.decode_jpeg(frame, use_pillow=True))


def test_pillow_fallback_gives_the_same_items(train, monkeypatch):
    expected = [train[i]["frames"] for i in range(0, len(train), 7)]
    monkeypatch.setattr(images, "_simplejpeg", None)  # as without the optional simplejpeg package
    assert images.decoder_name() == "pillow"
    for k, i in enumerate(range(0, len(train), 7)):
        assert torch.equal(train[i]["frames"], expected[k])
    with pytest.raises(images.ImageDecodeError, match="undecodable JPEG"):
        images.decode_jpeg(b"\xff\xd8" + b"\0" * 100)


# -- errors: clear, naming the file, never a wrong sample ---------------------------------------


def test_index_naming_a_missing_file(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    (pre / "4-7_episode.h5").unlink()
    with pytest.raises(DatasetError, match=r"missing from .*4-7_episode.h5"):
        RT1Dataset(csv, pre)
    ds = RT1Dataset(csv, pre, check_files=False)
    rows = [i for i in range(len(ds)) if ds.files[ds._file_ids[i]] == "4-7_episode.h5"]
    with pytest.raises(DatasetError, match=r"row \d+: file .*4-7_episode.h5 does not exist"):
        ds[rows[0]]


def test_window_past_an_episode_end(data, tmp_path):
    pre, _ = data
    with PreprocessedFile(pre / "0-4_episode.h5") as f:
        last_start = int(f.episodes.step_start[0] + f.episodes.num_steps[0] - 6)
    csv = tmp_path / "hand_made.csv"  # no sidecar: a hand-made index
    csv.write_text(f"start_index,file\n{last_start},0-4_episode.h5\n{last_start + 1},0-4_episode.h5\n")
    ds = RT1Dataset(csv, pre)
    assert ds[0]["start_index"] == last_start
    with pytest.raises(
        DatasetError,
        match=r"hand_made.csv row 1: .*0-4_episode.h5: window of 6 steps from step "
        r"row \d+ crosses the end of episode 0",
    ):
        ds[1]


def test_other_format_version(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    with h5py.File(pre / "0-4_episode.h5", "r+") as f:
        f.attrs["format_version"] = 99
    ds = RT1Dataset(csv, pre)
    with pytest.raises(
        DatasetError,
        match=rf"0-4_episode.h5: preprocessed format_version 99, this code reads {FORMAT_VERSION}",
    ):
        ds[0]


def test_corrupt_file(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    size = (pre / "0-4_episode.h5").stat().st_size
    with open(pre / "0-4_episode.h5", "r+b") as f:
        f.truncate(size // 3)
    ds = RT1Dataset(csv, pre)
    with pytest.raises(DatasetError, match=r"0-4_episode.h5: (not a readable HDF5 file|corrupt)"):
        ds[0]


def test_corrupt_frame(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    with h5py.File(pre / "0-4_episode.h5", "r+") as f:
        offsets = f["images/offset"][:]
        f["images/jpeg"][offsets[2] : offsets[2] + 40] = 0  # damage the header of frame 2
    ds = RT1Dataset(csv, pre)
    with pytest.raises(DatasetError, match=r"0-4_episode.h5: frame at step row 2"):
        for i in range(3):
            ds[i]


def test_file_changed_after_indexing(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    with h5py.File(pre / "0-4_episode.h5", "r+") as f:
        f.attrs["content_digest"] = "0" * 64
    with pytest.raises(DatasetError, match=r"0-4_episode.h5 changed after .* was built"):
        RT1Dataset(csv, pre)[0]


def test_window_length_must_match_the_index(data):
    pre, result = data
    with pytest.raises(DatasetError, match="windows of 6 steps, not 4"):
        RT1Dataset(result.train_csv, pre, window=4)


def test_error_in_a_worker_reaches_the_trainer(data, tmp_path):
    pre, csv = copy_data(data, tmp_path)
    with h5py.File(pre / "0-4_episode.h5", "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    loader = DataLoader(RT1Dataset(csv, pre), batch_size=2, num_workers=1)
    with pytest.raises(
        DatasetError, match=f"0-4_episode.h5: preprocessed format_version {FORMAT_VERSION + 1}"
    ):
        next(iter(loader))


# -- end to end on the bundled dataset (conftest: mini_fractal -> stage 1 -> stage 2 -> stage 3) --------


def test_bundled_dataset_end_to_end(segment_dir, preprocessed_dir, index_dir):
    from rt1.data.segment_schema import read_segment

    segments = {p.name: read_segment(p) for p in sorted(segment_dir.glob("*_episode.h5"))}
    episodes = {}
    for name, segment in segments.items():
        stored = read_episodes(preprocessed_dir / name)
        assert [e.source_index for e in stored] == [e.source_index for e in segment.episodes]
        for src, ep in zip(segment.episodes, stored):
            assert ep.instruction == src.instruction
            assert np.array_equal(ep.action_tokens, tokenize(src.actions))
            assert ep.images.shape[1:] == (64, 64, 3)
            episodes[ep.source_index] = ep
    assert any(e.num_steps < 6 for e in episodes.values())  # mini_fractal cuts some episodes short

    csvs = {split: next(index_dir.glob(f"{split}_idx_*.csv")) for split in ("train", "val")}
    sets = {split: RT1Dataset(csv, preprocessed_dir) for split, csv in csvs.items()}
    assert len(sets["train"]) + len(sets["val"]) == sum(max(0, e.num_steps - 5) for e in episodes.values())
    seen = {split: set() for split in sets}
    for split, ds in sets.items():
        for row in range(0, len(ds), 3):
            item = ds[row]
            ep = episodes[item["source_index"]]
            step = item["episode_step"]
            assert 0 <= step <= ep.num_steps - 6
            assert torch.equal(
                item["action_tokens"], torch.from_numpy(ep.action_tokens[step : step + 6].astype(np.int64))
            )
            assert torch.equal(item["frames"], torch.from_numpy(ep.images[step : step + 6]))
            assert item["instruction"] == ep.instruction
            seen[split].add(item["source_index"])
    assert seen["train"] and seen["val"] and not seen["train"] & seen["val"]
