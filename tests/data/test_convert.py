"""Stage 1: RLDS -> segment HDF5, checked value by value against what TFDS reads and what was generated."""

import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import (
    BUNDLED_EPISODES,
    BUNDLED_SEED,
    BUNDLED_SHARDS,
    REPO,
    SEGMENT_LEN,
    h5_contents,
    run_script,
)

from rt1.data.convert import ConversionError, ConvertConfig, convert
from rt1.data.filters import TASK_FILTERS, is_pick_object
from rt1.data.rlds_reader import open_builder, read_episodes
from rt1.data.segment_schema import FORMAT_VERSION, read_segment, write_segment
from rt1.io import TEMP_MARKER
from rt1.rlds_spec import ACTION_SPEC, OBSERVATION_VECTORS
from rt1.sim.mini_fractal import make_episode

ALL_SCRIPT = REPO / "data_preprocessing" / "rt_data_generator_all.py"
PICK_SCRIPT = REPO / "data_preprocessing" / "rt_data_generator_pick_batch.py"
KILL_SEGMENT_LEN = 5  # 26 segments: room to kill early, in the middle and near the end


def _segments(directory):
    return sorted(directory.glob("*_episode.h5"), key=lambda p: int(p.name.split("-")[0]))


def _stored(directory):
    return [e for f in _segments(directory) for e in read_segment(f).episodes]


def _rlds_episodes(rlds_dir):
    return [steps for _, steps in read_episodes(open_builder(rlds_dir), 0, BUNDLED_EPISODES)]


def _generated_actions(index):
    """The actions the bundled dataset generated for episode `index`: independent of any TFDS read."""
    steps = make_episode(index, BUNDLED_SEED)["steps"]
    return {k: np.stack([s["action"][k] for s in steps]) for k in ACTION_SPEC}


def _assert_each_episode_once_in_source_order(directory, start=0, end=BUNDLED_EPISODES):
    episodes = _stored(directory)
    assert [e.source_index for e in episodes] == list(range(start, end))
    assert len({e.fingerprint for e in episodes}) == len(episodes)
    for e in episodes:
        generated = _generated_actions(e.source_index)
        for key in ACTION_SPEC:
            assert e.actions[key].tobytes() == generated[key].astype(ACTION_SPEC[key].dtype).tobytes(), (
                e.source_index,
                key,
            )


def _assert_same_files(a, b):
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for f in _segments(a):
        assert h5_contents(f) == h5_contents(b / f.name), f.name


def test_bundled_dataset_is_above_the_interleave_block_and_read_in_canonical_order(rlds_dir):
    builder = open_builder(rlds_dir)
    lengths = builder.info.splits["train"].shard_lengths
    assert len(lengths) == BUNDLED_SHARDS and min(lengths) >= 40 and len(set(lengths)) > 1
    # TFDS's default read interleaves shards in blocks of 16: position p of a full read is not episode p...
    default = builder.as_dataset(split="train", shuffle_files=False)
    default_order = [
        np.concatenate([s["action"]["world_vector"] for s in tfds.as_numpy(e["steps"])]).ravel()
        for e in default.take(20)
    ]
    generated = [_generated_actions(i)["world_vector"].ravel() for i in range(20)]
    assert [np.array_equal(a, b) for a, b in zip(default_order, generated)] == [True] * 16 + [False] * 4
    # ...the canonical read is: position p is episode p, for any slice.
    for p, steps in read_episodes(builder, 40, 60):
        assert steps["action"]["world_vector"].tobytes() == _generated_actions(p)["world_vector"].tobytes()


def test_every_episode_once_in_order_and_values_equal_rlds(rlds_dir, segment_dir):
    files = _segments(segment_dir)
    assert [f.name for f in files] == [
        f"{a}-{min(a + SEGMENT_LEN, BUNDLED_EPISODES)}_episode.h5"
        for a in range(0, BUNDLED_EPISODES, SEGMENT_LEN)
    ]
    _assert_each_episode_once_in_source_order(segment_dir)
    episodes = _stored(segment_dir)
    for episode, steps in zip(episodes, _rlds_episodes(rlds_dir)):
        assert episode.num_steps == len(steps["reward"])
        assert episode.instruction == steps["observation"]["natural_language_instruction"][0].decode()
        assert np.array_equal(
            episode.language_embedding, steps["observation"]["natural_language_embedding"][0]
        )
        assert episode.images == list(steps["observation"]["image"])  # the JPEG bytes, untouched
        for key in ACTION_SPEC:
            stored, source = episode.actions[key], steps["action"][key]
            assert stored.dtype == source.dtype and stored.tobytes() == source.tobytes(), key
        for key in OBSERVATION_VECTORS:
            assert episode.observations[key].tobytes() == steps["observation"][key].tobytes(), key
        for flag in ("is_first", "is_last", "is_terminal", "reward"):
            assert np.array_equal(getattr(episode, flag), steps[flag]), flag
    with h5py.File(files[0], "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f["steps/action/terminate_episode"].dtype == np.int32
        assert f["steps/action/world_vector"].dtype == np.float32


def test_decoded_images_match_tfds_decoding(rlds_dir, segment_dir):
    import tensorflow as tf

    _, decoded = next(read_episodes(open_builder(rlds_dir), 0, 1, decode_images=True))
    first = decoded["observation"]["image"][0]
    stored = read_segment(_segments(segment_dir)[0]).episodes[0].images[0]
    assert np.array_equal(tf.io.decode_jpeg(stored).numpy(), first)  # TF's decoder, as TFDS uses


def test_pick_variant_keeps_exactly_the_rule(rlds_dir, segment_dir, tmp_path):
    run_script(
        PICK_SCRIPT,
        "--data-dir",
        rlds_dir,
        "--out-dir",
        tmp_path,
        "--episode-sec-len",
        SEGMENT_LEN,
        "--workers",
        "2",
        "--no-progress",
    )
    kept = [e for f in _segments(tmp_path) for e in read_segment(f).episodes]
    everything = [e for f in _segments(segment_dir) for e in read_segment(f).episodes]
    expected = [e.source_index for e in everything if "pick" in e.instruction and "from" not in e.instruction]
    assert [e.source_index for e in kept] == expected
    assert 0 < len(expected) < len(everything)
    assert any("pick" in e.instruction and "from" in e.instruction for e in everything)  # the rule matters
    assert TASK_FILTERS["pick"] is is_pick_object
    assert len(_segments(tmp_path)) == len(
        _segments(segment_dir)
    )  # same ranges, some files hold fewer episodes


@pytest.fixture(scope="module")
def clean_run(rlds_dir, tmp_path_factory):
    """One uninterrupted run with KILL_SEGMENT_LEN episodes per segment: the reference for reruns and splits."""
    out = tmp_path_factory.mktemp("clean")
    convert(ConvertConfig(rlds_dir, out, "all", episodes_per_segment=KILL_SEGMENT_LEN), progress=False)
    _assert_each_episode_once_in_source_order(out)
    return out


def _kill_after(rlds_dir, out, segments_done):
    """Start stage 1, SIGKILL it once `segments_done` segments are finished; returns how many were."""
    args = [
        sys.executable,
        str(ALL_SCRIPT),
        "--data-dir",
        str(rlds_dir),
        "--out-dir",
        str(out),
        "--episode-sec-len",
        str(KILL_SEGMENT_LEN),
        "--no-progress",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if out.exists() and len(list(out.glob("*_episode.h5"))) >= segments_done:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before the kill"
    return len(list(out.glob("*_episode.h5")))


@pytest.mark.slow
@pytest.mark.parametrize("segments_done", [1, 13, 22], ids=["after-first", "middle", "near-end"])
def test_kill_and_rerun_equals_one_clean_run(rlds_dir, clean_run, tmp_path, segments_done):
    total = -(-BUNDLED_EPISODES // KILL_SEGMENT_LEN)
    done = _kill_after(rlds_dir, tmp_path, segments_done)
    assert segments_done <= done < total
    rerun = run_script(
        ALL_SCRIPT,
        "--data-dir",
        rlds_dir,
        "--out-dir",
        tmp_path,
        "--episode-sec-len",
        KILL_SEGMENT_LEN,
        "--no-progress",
    )
    assert f"{total - done} written, {done} already complete and verified" in rerun.stdout
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))
    _assert_same_files(clean_run, tmp_path)
    _assert_each_episode_once_in_source_order(tmp_path)


@pytest.mark.slow
def test_workers_and_a_range_split_equal_one_clean_run(rlds_dir, clean_run, tmp_path):
    workers, split = tmp_path / "workers", tmp_path / "split"
    convert(
        ConvertConfig(rlds_dir, workers, "all", episodes_per_segment=KILL_SEGMENT_LEN, workers=2),
        progress=False,
    )
    _assert_same_files(clean_run, workers)
    convert(
        ConvertConfig(rlds_dir, split, "all", episodes_per_segment=KILL_SEGMENT_LEN, end_episode=65),
        progress=False,
    )
    convert(
        ConvertConfig(
            rlds_dir, split, "all", episodes_per_segment=KILL_SEGMENT_LEN, start_episode=65, workers=2
        ),
        progress=False,
    )
    _assert_same_files(clean_run, split)
    # A split that is not on a segment boundary gives other files but the same episodes, once each.
    odd = tmp_path / "odd"
    convert(
        ConvertConfig(
            rlds_dir, odd, "all", episodes_per_segment=KILL_SEGMENT_LEN, start_episode=3, end_episode=47
        ),
        progress=False,
    )
    convert(
        ConvertConfig(
            rlds_dir, odd, "all", episodes_per_segment=KILL_SEGMENT_LEN, start_episode=47, end_episode=101
        ),
        progress=False,
    )
    _assert_each_episode_once_in_source_order(odd, 3, 101)


def test_rerun_verifies_finished_segments_by_content(rlds_dir, tmp_path):
    cfg = ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=8, end_episode=24)
    first = convert(cfg, progress=False)
    assert (first.written, first.verified, first.episodes_read) == (3, 0, 24)
    (tmp_path / f"0-8_episode.h5{TEMP_MARKER}999").write_bytes(b"leftover")
    second = convert(cfg, progress=False)
    assert (second.written, second.verified, second.episodes_read) == (0, 3, 24)
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))
    # What the old stage 1 did: other episodes stored under this range's labels. Refused, naming the file.
    wrong = read_segment(tmp_path / "16-24_episode.h5").episodes
    for episode, label in zip(wrong, range(8, 16)):
        episode.source_index = label
    write_segment(tmp_path / "8-16_episode.h5", wrong, (8, 16), "all")
    before = h5_contents(tmp_path / "8-16_episode.h5")
    with pytest.raises(
        ConversionError, match=r"8-16_episode.h5 holds source episode 8 with fingerprint \w+, but "
    ):
        convert(cfg, progress=False)
    assert h5_contents(tmp_path / "8-16_episode.h5") == before


def test_file_in_the_way_is_refused_not_overwritten(rlds_dir, tmp_path):
    (tmp_path / "8-16_episode.h5").write_bytes(b"my notes")
    line = _error(
        run_script(
            ALL_SCRIPT,
            "--data-dir",
            rlds_dir,
            "--out-dir",
            tmp_path,
            "--episode-sec-len",
            8,
            "--end-episode",
            24,
            "--no-progress",
            check=False,
        )
    )
    assert "8-16_episode.h5 exists and is not an HDF5 file" in line
    assert (tmp_path / "8-16_episode.h5").read_bytes() == b"my notes"
    assert not (tmp_path / "0-8_episode.h5").exists()  # refused before any work
    (tmp_path / "8-16_episode.h5").unlink()
    with h5py.File(tmp_path / "8-16_episode.h5", "w") as f:
        f.attrs["format"] = "rt1-segment"
        f.attrs["format_version"] = 1
    line = _error(
        run_script(
            ALL_SCRIPT,
            "--data-dir",
            rlds_dir,
            "--out-dir",
            tmp_path,
            "--episode-sec-len",
            8,
            "--end-episode",
            24,
            "--no-progress",
            check=False,
        )
    )
    assert "8-16_episode.h5 is a segment of format_version 1" in line


def _corrupt_copy(rlds_dir, tmp_path, damage):
    copy = tmp_path / "rlds"
    shutil.copytree(rlds_dir, copy)
    shard = sorted(copy.glob("*.tfrecord-*"))[1]
    data = bytearray(shard.read_bytes())
    shard.write_bytes(damage(data))
    return copy, shard


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: bytes(d[: len(d) // 2]),
        lambda d: bytes(d[:5000] + bytes(b ^ 0xFF for b in d[5000:5100]) + d[5100:]),
    ],
    ids=["truncated", "flipped-bytes"],
)
def test_corrupt_shard_is_named(rlds_dir, tmp_path, damage):
    copy, shard = _corrupt_copy(rlds_dir, tmp_path, damage)
    out = tmp_path / "out"
    line = _error(
        run_script(
            ALL_SCRIPT,
            "--data-dir",
            copy,
            "--out-dir",
            out,
            "--episode-sec-len",
            SEGMENT_LEN,
            "--no-progress",
            check=False,
        )
    )
    assert f"{shard}: corrupt or truncated TFRecord shard" in line
    # Segments finished before the damaged shard stay, complete and correct.
    assert (out / "0-10_episode.h5").exists()
    _assert_each_episode_once_in_source_order(out, 0, 10 * len(_segments(out)))


def _mount_tmpfs(path, size):
    path.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root): the unit test of check_free_space still runs")


def test_full_disk_gives_a_one_line_error_and_keeps_finished_segments(rlds_dir, tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "6m")
    try:
        line = _error(
            run_script(
                ALL_SCRIPT,
                "--data-dir",
                rlds_dir,
                "--out-dir",
                small,
                "--episode-sec-len",
                SEGMENT_LEN,
                "--no-progress",
                check=False,
            )
        )
        assert "not enough free space in" in line and str(small) in line
        done = _segments(small)
        assert done and not list(small.glob(f"*{TEMP_MARKER}*"))
        _assert_each_episode_once_in_source_order(small, 0, 10 * len(done))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_free_space_is_checked_before_each_segment(rlds_dir, tmp_path, monkeypatch):
    import collections

    import rt1.io as atomic

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: collections.namedtuple("u", "free")(2 << 20))
    with pytest.raises(OSError, match=f"not enough free space in {tmp_path} for 0-10_episode.h5"):
        convert(
            ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=10, end_episode=20), progress=False
        )
    assert not list(tmp_path.iterdir())


def test_aligned_ranges_for_a_partial_selection(rlds_dir, tmp_path):
    convert(
        ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=10, start_episode=5, end_episode=23),
        progress=False,
    )
    assert [f.name for f in _segments(tmp_path)] == [
        "5-10_episode.h5",
        "10-20_episode.h5",
        "20-23_episode.h5",
    ]


def _error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_not_a_tfds_directory(tmp_path):
    line = _error(run_script(ALL_SCRIPT, "--data-dir", tmp_path, "--out-dir", tmp_path / "o", check=False))
    assert str(tmp_path) in line and "not a TFDS dataset directory" in line
    assert not (tmp_path / "o").exists()


def test_features_not_the_fractal_spec(rlds_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(rlds_dir, bad)
    features = (bad / "features.json").read_text()
    (bad / "features.json").write_text(features.replace('"world_vector"', '"world_vectr"'))
    line = _error(run_script(ALL_SCRIPT, "--data-dir", bad, "--out-dir", tmp_path / "o", check=False))
    assert "not the fractal spec" in line and "steps/action/world_vector" in line


def test_empty_selection_and_unwritable_output(rlds_dir, tmp_path):
    line = _error(
        run_script(
            ALL_SCRIPT,
            "--data-dir",
            rlds_dir,
            "--out-dir",
            tmp_path / "o",
            "--start-episode",
            "1000",
            check=False,
        )
    )
    assert "empty selection" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _error(run_script(ALL_SCRIPT, "--data-dir", rlds_dir, "--out-dir", blocker / "sub", check=False))
    assert "cannot create output directory" in line and str(blocker / "sub") in line


def test_config_validation_names_the_value(tmp_path):
    with pytest.raises(ConversionError, match="--episode-sec-len must be >= 1, got 0"):
        ConvertConfig(tmp_path, tmp_path, episodes_per_segment=0)
    with pytest.raises(KeyError, match="unknown task filter 'nope'"):
        ConvertConfig(tmp_path, tmp_path, task_filter="nope")
