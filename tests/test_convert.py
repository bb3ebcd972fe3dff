"""Stage 1: RLDS -> segment HDF5, checked value by value against what TFDS reads."""

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import BUNDLED_EPISODES, REPO, SEGMENT_LEN, h5_contents, run_script
from rt1.data.atomic import TEMP_MARKER
from rt1.data.convert import ConversionError, ConvertConfig, convert
from rt1.data.filters import TASK_FILTERS, is_pick_object
from rt1.data.rlds_spec import ACTION_SPEC, OBSERVATION_VECTORS
from rt1.data.segment_schema import FORMAT_VERSION, read_segment

ALL_SCRIPT = REPO / "data_preprocessing" / "rt_data_generator_all.py"
PICK_SCRIPT = REPO / "data_preprocessing" / "rt_data_generator_pick_batch.py"


def _segments(directory):
    return sorted(directory.glob("*_episode.h5"), key=lambda p: int(p.name.split("-")[0]))


def _rlds_episodes(rlds_dir):
    builder = tfds.builder_from_directory(str(rlds_dir))
    raw = builder.as_dataset(split="train", shuffle_files=False,
                             decoders={"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}})
    return [list(e["steps"]) for e in tfds.as_numpy(raw)]


def test_every_episode_once_in_order_and_values_equal_rlds(rlds_dir, segment_dir):
    files = _segments(segment_dir)
    assert [f.name for f in files] == [f"{a}-{min(a + SEGMENT_LEN, BUNDLED_EPISODES)}_episode.h5"
                                       for a in range(0, BUNDLED_EPISODES, SEGMENT_LEN)]
    episodes = [e for f in files for e in read_segment(f).episodes]
    assert [e.source_index for e in episodes] == list(range(BUNDLED_EPISODES))
    for episode, steps in zip(episodes, _rlds_episodes(rlds_dir)):
        assert episode.num_steps == len(steps)
        assert episode.instruction == steps[0]["observation"]["natural_language_instruction"].decode()
        assert np.array_equal(episode.language_embedding, steps[0]["observation"]["natural_language_embedding"])
        for t, step in enumerate(steps):
            assert episode.images[t] == step["observation"]["image"]  # the JPEG bytes, untouched
            for key in ACTION_SPEC:
                stored, source = episode.actions[key][t], step["action"][key]
                assert stored.dtype == source.dtype and stored.tobytes() == source.tobytes(), key
            for key in OBSERVATION_VECTORS:
                assert episode.observations[key][t].tobytes() == step["observation"][key].tobytes(), key
            for flag in ("is_first", "is_last", "is_terminal"):
                assert getattr(episode, flag)[t] == step[flag]
            assert episode.reward[t] == step["reward"]
    with h5py.File(files[0], "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f["steps/action/terminate_episode"].dtype == np.int32
        assert f["steps/action/world_vector"].dtype == np.float32


def test_decoded_images_match_tfds_decoding(rlds_dir, segment_dir):
    import tensorflow as tf

    builder = tfds.builder_from_directory(str(rlds_dir))
    decoded = next(iter(tfds.as_numpy(builder.as_dataset(split="train[:1]"))))
    first = list(decoded["steps"])[0]["observation"]["image"]
    stored = read_segment(_segments(segment_dir)[0]).episodes[0].images[0]
    assert np.array_equal(tf.io.decode_jpeg(stored).numpy(), first)  # TF's decoder, as TFDS uses


def test_pick_variant_keeps_exactly_the_rule(rlds_dir, segment_dir, tmp_path):
    run_script(PICK_SCRIPT, "--data-dir", rlds_dir, "--out-dir", tmp_path, "--episode-sec-len", SEGMENT_LEN,
               "--workers", "2", "--no-progress")
    kept = [e for f in _segments(tmp_path) for e in read_segment(f).episodes]
    everything = [e for f in _segments(segment_dir) for e in read_segment(f).episodes]
    expected = [e.source_index for e in everything if "pick" in e.instruction and "from" not in e.instruction]
    assert [e.source_index for e in kept] == expected
    assert 0 < len(expected) < len(everything)
    assert any("pick" in e.instruction and "from" in e.instruction for e in everything)  # the rule matters
    assert TASK_FILTERS["pick"] is is_pick_object
    assert len(_segments(tmp_path)) == len(_segments(segment_dir))  # same ranges, some files hold fewer episodes


def test_resume_after_kill_gives_the_same_files(rlds_dir, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = ["--data-dir", rlds_dir, "--episode-sec-len", "4", "--end-episode", "24", "--no-progress"]
    run_script(ALL_SCRIPT, *args, "--out-dir", clean)
    proc = subprocess.Popen([sys.executable, str(ALL_SCRIPT), *map(str, args), "--out-dir", str(killed)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob("*_episode.h5")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(killed.glob("*_episode.h5")))
    assert 1 <= done_before < 6, "the kill should land part-way through the run"
    rerun = run_script(ALL_SCRIPT, *args, "--out-dir", killed)
    assert f"{done_before} already complete, skipped" in rerun.stdout
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in clean.iterdir())
    assert not list(killed.glob(f"*{TEMP_MARKER}*"))
    for f in _segments(clean):
        assert h5_contents(f) == h5_contents(killed / f.name), f.name


def test_rerun_skips_complete_segments_and_redoes_a_corrupt_one(rlds_dir, tmp_path):
    cfg = ConvertConfig(rlds_dir, tmp_path, "all", episode_sec_len=8, end_episode=16)
    first = convert(cfg, progress=False)
    assert first.skipped_segments == 0 and first.episodes_read == 16
    reference = h5_contents(tmp_path / "8-16_episode.h5")
    (tmp_path / "8-16_episode.h5").write_bytes(b"truncated garbage")
    (tmp_path / f"0-8_episode.h5{TEMP_MARKER}999").write_bytes(b"leftover")
    second = convert(cfg, progress=False)
    assert second.skipped_segments == 1 and second.episodes_read == 8
    assert h5_contents(tmp_path / "8-16_episode.h5") == reference
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))


def test_workers_give_the_same_files(rlds_dir, segment_dir, tmp_path):
    convert(ConvertConfig(rlds_dir, tmp_path, "all", episode_sec_len=SEGMENT_LEN, workers=2), progress=False)
    for f in _segments(segment_dir):
        assert h5_contents(f) == h5_contents(tmp_path / f.name)


def test_aligned_ranges_for_a_partial_selection(rlds_dir, tmp_path):
    convert(ConvertConfig(rlds_dir, tmp_path, "all", episode_sec_len=10, start_episode=5, end_episode=23),
            progress=False)
    assert [f.name for f in _segments(tmp_path)] == ["5-10_episode.h5", "10-20_episode.h5", "20-23_episode.h5"]


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
    line = _error(run_script(ALL_SCRIPT, "--data-dir", rlds_dir, "--out-dir", tmp_path / "o",
                             "--start-episode", "1000", check=False))
    assert "empty selection" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _error(run_script(ALL_SCRIPT, "--data-dir", rlds_dir, "--out-dir", blocker / "sub", check=False))
    assert "cannot create output directory" in line and str(blocker / "sub") in line


def test_config_validation_names_the_value(tmp_path):
    with pytest.raises(ConversionError, match="--episode-sec-len must be >= 1, got 0"):
        ConvertConfig(tmp_path, tmp_path, episode_sec_len=0)
    with pytest.raises(KeyError, match="unknown task filter 'nope'"):
        ConvertConfig(tmp_path, tmp_path, task_filter="nope")
