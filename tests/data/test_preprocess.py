"""Stage 2: DataPreprocess_batch_all.py / _pick.py (rt1.data.preprocess) on real segment files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rt1.actions import flatten_actions, tokenize
from rt1.data import preprocess as pp
from rt1.data.preprocess import PreprocessError, main, preprocess_dir
from rt1.data.preprocessed_file import PreprocessedFile, read_episodes
from rt1.data.preprocessed_schema import FORMAT_VERSION, verify_preprocessed
from rt1.data.segment_schema import read_segment, write_segment

try:
    from tests.synthetic_segments import (
        DEFAULT_LAYOUT,
        NOT_PICK,
        PICK,
        embedding_of,
        expected_is_pick,
        make_episode,
        step_colour,
        synthetic_actions,
        write_synthetic_segments,
    )
except ImportError:
    from synthetic_segments import (
        DEFAULT_LAYOUT,
        NOT_PICK,
        PICK,
        embedding_of,
        expected_is_pick,
        make_episode,
        step_colour,
        synthetic_actions,
        write_synthetic_segments,
    )

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    write_synthetic_segments(root, DEFAULT_LAYOUT)
    return root


@pytest.fixture(scope="module")
def clean_all(segments, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre_all")
    summary = preprocess_dir(segments, out, task_filter="all", workers=1, progress=False)
    return out, summary


def copy_segments(segments: Path, dest: Path) -> Path:
    shutil.copytree(segments, dest)
    return dest


def digests(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.glob("*.h5")):
        with PreprocessedFile(path) as f:
            out[path.name] = f.content_digest
    return out


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- content --------------------------------------------------------------------------------------


def test_outputs_keep_names_and_content(segments, clean_all):
    out, summary = clean_all
    inputs = sorted(p.name for p in segments.glob("*_episode.h5"))
    assert sorted(p.name for p in out.glob("*.h5")) == inputs
    assert summary.written == 3 and summary.skipped == 0
    assert summary.episodes == sum(len(f) for f in DEFAULT_LAYOUT)
    assert summary.steps == sum(n for f in DEFAULT_LAYOUT for n, _ in f)
    for name in inputs:
        source = read_segment(segments / name)
        episodes = read_episodes(out / name)
        assert [e.source_index for e in episodes] == [e.source_index for e in source.episodes]
        for src, ep in zip(source.episodes, episodes):
            assert ep.instruction == src.instruction
            assert np.array_equal(ep.language_embedding, embedding_of(src.instruction))
            assert ep.action_tokens.dtype == np.uint8 and ep.action_tokens.shape == (src.num_steps, 11)
            assert np.array_equal(
                ep.action_tokens, tokenize(synthetic_actions(src.source_index, src.num_steps))
            )
            assert ep.actions.dtype == np.float32
            assert np.array_equal(ep.actions, flatten_actions(src.actions))
            for key, value in src.actions.items():
                assert np.array_equal(ep.raw_actions[key], value)
            assert ep.images.shape == (src.num_steps, 224, 224, 3)
            for t in range(src.num_steps):
                mean = ep.images[t, 50:170, 50:170].reshape(-1, 3).mean(axis=0)
                assert np.allclose(mean, step_colour(src.source_index, t), atol=4), (
                    name,
                    src.source_index,
                    t,
                )


def test_schema_attributes(clean_all):
    out, _ = clean_all
    with h5py.File(out / "0-4_episode.h5") as f:
        assert f.attrs["format"] == "rt1-preprocessed"
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert list(f.attrs["image_size"]) == [224, 224]
        assert f.attrs["task_filter"] == "all" and f.attrs["source_file"] == "0-4_episode.h5"
        assert list(f.attrs["episode_range"]) == [0, 4]
        # frames are stored once per step, never per window
        assert f["images/offset"].shape == (f.attrs["num_steps"] + 1,)
    verify_preprocessed(out / "0-4_episode.h5")


def test_gripper_token_uses_fixed_bounds(clean_all):
    out, _ = clean_all
    for ep in read_episodes(out / "4-7_episode.h5", decode_images=False):
        gripper = ep.raw_actions["gripper_closedness_action"][:, 0].astype(np.float64)
        expected = np.floor((np.clip(gripper, -1, 1) + 1) / 2 * 255).astype(np.uint8)
        assert np.array_equal(ep.action_tokens[:, 6], expected)
        assert len(set(expected.tolist())) > 1  # continuous, not always 0


def test_image_size_option(segments, tmp_path):
    summary = preprocess_dir(segments, tmp_path / "small", image_size=64, workers=1, progress=False)
    assert summary.written == 3
    ep = read_episodes(tmp_path / "small" / "0-4_episode.h5")[0]
    assert ep.images.shape == (12, 64, 64, 3)


def test_pick_keeps_exactly_the_pick_episodes(segments, tmp_path):
    summary = preprocess_dir(segments, tmp_path / "pick", task_filter="pick", workers=2, progress=False)
    kept = [
        (ep.source_index, ep.instruction)
        for p in sorted((tmp_path / "pick").glob("*.h5"))
        for ep in read_episodes(p, decode_images=False)
    ]
    everything = [(i, instr) for i, instr in enumerate(instr for f in DEFAULT_LAYOUT for _, instr in f)]
    assert kept == [(i, instr) for i, instr in everything if expected_is_pick(instr)]
    assert {instr for _, instr in kept} == set(PICK)
    assert not any(instr in NOT_PICK for _, instr in kept)  # includes "pick ... from top drawer ..."
    assert summary.episodes == len(kept)
    assert sum(r.dropped_episodes for r in summary.files) == len(everything) - len(kept)
    with h5py.File(tmp_path / "pick" / "0-4_episode.h5") as f:
        assert f.attrs["task_filter"] == "pick"


# -- resume, parallel, delete-input --------------------------------------------------------------


def test_rerun_skips_complete_outputs(segments, clean_all):
    out, _ = clean_all
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    summary = preprocess_dir(segments, out, workers=1, progress=False)
    assert summary.written == 0 and summary.skipped == 3
    assert summary.steps == sum(n for f in DEFAULT_LAYOUT for n, _ in f)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before


def test_resume_after_interruption_matches_clean_run(segments, clean_all, tmp_path, monkeypatch):
    clean = digests(clean_all[0])
    out = tmp_path / "resumed"
    real = pp.write_preprocessed
    calls = []

    class Interrupting(dict):
        def __getitem__(self, key):
            raise KeyboardInterrupt  # Ctrl-C while the output file is being written

    def interrupted(path, episodes, **kwargs):
        if calls:
            kwargs["source"] = Interrupting(kwargs["source"])
        calls.append(path)
        return real(path, episodes, **kwargs)

    monkeypatch.setattr(pp, "write_preprocessed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dir(segments, out, workers=1, progress=False)
    monkeypatch.setattr(pp, "write_preprocessed", real)
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["0-4_episode.h5"]  # no partial file left

    # what a killed process leaves: a stale temporary; plus an output truncated by a crashed disk
    (out / "4-7_episode.h5.partial-99999").write_bytes(b"half a file")
    shutil.copy(clean_all[0] / "7-11_episode.h5", out / "7-11_episode.h5")
    with open(out / "7-11_episode.h5", "r+b") as f:
        f.truncate(3000)

    summary = preprocess_dir(segments, out, workers=1, progress=False)
    assert summary.stale_removed == 1
    assert summary.skipped == 1 and summary.written == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(clean)
    assert digests(out) == clean


def test_two_workers_give_the_same_outputs(segments, clean_all, tmp_path):
    summary = preprocess_dir(segments, tmp_path / "par", workers=2, progress=False)
    assert summary.written == 3
    assert digests(tmp_path / "par") == digests(clean_all[0])


def test_changed_input_is_redone(segments, tmp_path):
    seg = copy_segments(segments, tmp_path / "seg")
    out = tmp_path / "out"
    preprocess_dir(seg, out, workers=1, progress=False)
    (seg / "0-4_episode.h5").unlink()
    write_synthetic_segments(seg, [[(7, PICK[0]), (9, PICK[1]), (6, NOT_PICK[0]), (8, PICK[2])]])
    summary = preprocess_dir(seg, out, workers=1, progress=False)
    assert summary.written == 1 and summary.skipped == 2
    assert [e.num_steps for e in read_episodes(out / "0-4_episode.h5", decode_images=False)] == [7, 9, 6, 8]


def test_delete_input_after_verified_output(segments, clean_all, tmp_path):
    seg = copy_segments(segments, tmp_path / "seg")
    out = tmp_path / "out"
    # one output already complete from an earlier run: it is verified, then its input deleted too
    out.mkdir()
    shutil.copy(clean_all[0] / "4-7_episode.h5", out)
    summary = preprocess_dir(seg, out, workers=2, delete_input=True, progress=False)
    assert summary.written == 2 and summary.skipped == 1
    assert sum(r.input_deleted for r in summary.files) == 3
    assert list(seg.glob("*_episode.h5")) == []
    assert digests(out) == digests(clean_all[0])


def test_delete_input_keeps_input_when_verification_fails(segments, tmp_path, monkeypatch):
    seg = copy_segments(segments, tmp_path / "seg")
    from rt1.data.preprocessed_schema import PreprocessedFormatError

    def failing(path, expected_digest=None):
        raise PreprocessedFormatError(f"{path}: content does not match its digest (file damaged)")

    monkeypatch.setattr(pp, "verify_preprocessed", failing)
    with pytest.raises(PreprocessError, match="verification"):
        preprocess_dir(seg, tmp_path / "out", workers=1, delete_input=True, progress=False)
    assert sorted(p.name for p in seg.iterdir()) == sorted(p.name for p in segments.iterdir())


def test_delete_input_keeps_a_corrupt_input(segments, tmp_path):
    seg = copy_segments(segments, tmp_path / "seg")
    (seg / "4-7_episode.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    with pytest.raises(PreprocessError, match="4-7_episode.h5"):
        preprocess_dir(seg, tmp_path / "out", workers=1, delete_input=True, progress=False)
    assert (seg / "4-7_episode.h5").exists()
    assert not (tmp_path / "out" / "4-7_episode.h5").exists()
    assert not (seg / "0-4_episode.h5").exists()  # processed before it, verified, deleted
    assert (tmp_path / "out" / "0-4_episode.h5").exists()


def test_other_configuration_in_the_same_out_dir_is_refused(segments, clean_all):
    with pytest.raises(PreprocessError, match="task filter 'all'.*separate --out-dir"):
        preprocess_dir(segments, clean_all[0], task_filter="pick", workers=1, progress=False)
    with pytest.raises(PreprocessError, match=r"image size \(224, 224\).*separate --out-dir"):
        preprocess_dir(segments, clean_all[0], image_size=128, workers=1, progress=False)
    with pytest.raises(PreprocessError, match="JPEG quality 90, this run uses 70"):
        preprocess_dir(segments, clean_all[0], jpeg_quality=70, workers=1, progress=False)


def test_out_dir_equal_to_in_dir_is_refused(segments):
    with pytest.raises(PreprocessError, match="input directory"):
        preprocess_dir(segments, segments, workers=1, progress=False)


# -- errors: one line, naming the file, exit status 2 --------------------------------------------


def assert_one_line_error(capsys_or_result, *fragments):
    err = (
        capsys_or_result.stderr if hasattr(capsys_or_result, "stderr") else capsys_or_result.readouterr().err
    )
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def test_error_missing_and_empty_input_dirs(tmp_path, capsys):
    assert main(["--in-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert_one_line_error(capsys, "does not exist", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert main(["--in-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert_one_line_error(capsys, "is empty", tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main(["--in-dir", str(tmp_path / "other"), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert_one_line_error(capsys, "no segment files", tmp_path / "other")


def test_error_unwritable_out_dir(segments, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")  # a directory cannot be made under a file (even as root)
    assert (
        main(["--in-dir", str(segments), "--out-dir", str(tmp_path / "a_file" / "out"), "--no-progress"]) == 2
    )
    assert_one_line_error(capsys, "cannot create output directory", tmp_path / "a_file" / "out")


def test_error_wrong_format_input(segments, clean_all, tmp_path, capsys):
    seg = tmp_path / "seg"
    seg.mkdir()
    shutil.copy(clean_all[0] / "0-4_episode.h5", seg)  # a preprocessed file where a segment belongs
    assert main(["--in-dir", str(seg), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert_one_line_error(capsys, seg / "0-4_episode.h5", "not an rt1 segment file")


def test_script_errors_as_subprocesses(segments, tmp_path):
    result = run_script(
        "DataPreprocess_batch_all.py", "--in-dir", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert_one_line_error(result, "does not exist", tmp_path / "missing")

    seg = copy_segments(segments, tmp_path / "seg")
    (seg / "11-12_episode.h5").write_bytes(b"this is not HDF5 at all" * 50)
    result = run_script(
        "DataPreprocess_batch_pick.py",
        "--in-dir",
        str(seg),
        "--out-dir",
        str(tmp_path / "o"),
        "--workers",
        "2",
    )
    assert result.returncode == 2
    assert_one_line_error(result, seg / "11-12_episode.h5", "not a readable HDF5 file")


def test_scripts_run_and_print_a_summary(segments, tmp_path):
    result = run_script(
        "DataPreprocess_batch_pick.py",
        "--in-dir",
        str(segments),
        "--out-dir",
        str(tmp_path / "o"),
        "--image-size",
        "32",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "3 written, 0 skipped" in result.stdout
    assert (
        f"episodes: {sum(expected_is_pick(i) for f in DEFAULT_LAYOUT for _, i in f)} in the outputs"
        in result.stdout
    )
    for script in ("DataPreprocess_batch_all.py", "DataPreprocess_batch_pick.py"):
        help_text = run_script(script, "--help").stdout
        assert "--in-dir" in help_text and "--delete-input" in help_text and "--workers" in help_text


def test_non_finite_action_is_refused_naming_file_episode_and_step(tmp_path, capsys):
    episodes = [make_episode(0, 3, PICK[0]), make_episode(1, 8, NOT_PICK[0])]
    episodes[1].actions["world_vector"][2, 1] = np.nan
    episodes[1].fingerprint = episodes[1].content_fingerprint()  # a NaN as the source had it, not damage
    path = tmp_path / "seg" / "0-2_episode.h5"
    path.parent.mkdir()
    write_segment(path, episodes, (0, 2), "all")
    episode = episodes[1]
    assert (
        main(
            [
                "--in-dir",
                str(path.parent),
                "--out-dir",
                str(tmp_path / "out"),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {path}: source episode {episode.source_index}, step 2: action 'world_vector' is not "
        "finite (nan)"
    ]
    assert not list((tmp_path / "out").glob("*.h5"))


def test_full_disk_gives_a_one_line_error(segments, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(small)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert (
            main(["--in-dir", str(segments), "--out-dir", str(small), "--workers", "1", "--no-progress"]) == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not enough free space in" in err[0] and str(small) in err[0], err
        assert not list(small.glob("*.partial-*"))
        assert list(small.glob("*.h5"))
        for path in small.glob("*.h5"):
            verify_preprocessed(path)  # what was finished is whole
    finally:
        subprocess.run(["umount", str(small)], check=True)
