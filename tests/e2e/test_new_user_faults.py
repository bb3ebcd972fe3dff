"""Faults a new user meets (issue 23): data loss, orphaned workers, paths that escape, input that got through.

Each test runs the real thing (real HDF5 files, real subprocesses for signals) and failed before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from conftest import REPO
from test_faults import assert_one_line_error, run, train_cmd
from test_train import tiny_data  # noqa: F401  (session fixture: preprocessed bundled data at 64x64)

from rt1.data.convert import ConversionError, ConvertConfig, convert
from rt1.data.dataset import DatasetError, RT1Dataset
from rt1.data.index import WindowIndexError, index_episodes, read_index, sidecar_path
from rt1.data.preprocess import main as preprocess_main
from rt1.data.preprocessed_schema import verify_preprocessed
from rt1.data.rlds_reader import RLDSReadError, open_builder
from rt1.data.segment_schema import open_segment
from rt1.demo import DEMO_MIN_EPISODES
from rt1.errors import RT1Error
from rt1.io import TEMP_MARKER

try:
    from tests.synthetic_segments import DEFAULT_LAYOUT, write_synthetic_segments
except ImportError:
    from synthetic_segments import DEFAULT_LAYOUT, write_synthetic_segments

STAGE1 = "data_preprocessing/rt_data_generator_all.py"
STAGE2 = "DataPreprocess_batch_all.py"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def synthetic(tmp_path) -> Path:
    seg = tmp_path / "seg"
    write_synthetic_segments(seg, DEFAULT_LAYOUT)
    return seg


# ---- 1. the demo deletes only what it wrote -------------------------------------------------------------


def test_demo_overwrite_never_deletes_a_users_folder_named_like_a_demo_output(tmp_path, capsys):
    from rt1.demo import DEMO_MARKER, DemoError, main, prepare_output_dir

    out = tmp_path / "mine"
    (out / "save").mkdir(parents=True)
    (out / "save" / "checkpoint-9.pt").write_bytes(b"weeks of training")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="save"):
        prepare_output_dir(out, overwrite=True)
    assert (out / "save" / "checkpoint-9.pt").read_bytes() == b"weeks of training"
    assert main(["--out", str(out), "--overwrite"]) == 2
    line = one_error_line(capsys)
    assert str(out / "save") in line and "not written by the demo" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "save"] and not (out / DEMO_MARKER).exists()
    # A directory the demo marked: a folder the demo did not write is still kept (and refused), whatever the flag.
    demo = tmp_path / "demo_output"
    prepare_output_dir(demo)
    marker = json.loads((demo / DEMO_MARKER).read_text())
    marker["outputs"].remove("plots")
    (demo / DEMO_MARKER).write_text(json.dumps(marker))
    (demo / "plots").mkdir()
    (demo / "plots" / "my_plot.png").write_bytes(b"png")
    for overwrite in (False, True):
        with pytest.raises(DemoError, match="plots"):
            prepare_output_dir(demo, overwrite=overwrite)
    assert (demo / "plots" / "my_plot.png").read_bytes() == b"png"


def test_demo_refusal_of_a_foreign_directory_does_not_suggest_deleting(tmp_path, capsys):
    from rt1.demo import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "nothing there is deleted" in line and "replace" not in line


# ---- 2. stage 2 refuses a file in the way, as stage 1 does ----------------------------------------------


@pytest.mark.parametrize("delete_input", [False, True], ids=["keep-input", "delete-input"])
def test_stage2_refuses_a_text_file_named_like_an_output(synthetic, tmp_path, capsys, delete_input):
    out = tmp_path / "pre"
    out.mkdir()
    names = sorted(p.name for p in synthetic.glob("*_episode.h5"))
    (out / names[1]).write_text("my notes, not an output")
    args = ["--in-dir", str(synthetic), "--out-dir", str(out), "--workers", "1", "--no-progress"]
    assert preprocess_main(args + (["--delete-input"] if delete_input else [])) == 2
    line = one_error_line(capsys)
    assert f"{out / names[1]} exists and is not an HDF5 file" in line
    assert (out / names[1]).read_text() == "my notes, not an output"
    assert sorted(p.name for p in out.iterdir()) == [names[1]], "refused before any work"
    assert sorted(p.name for p in synthetic.glob("*_episode.h5")) == names


def test_stage2_refuses_a_directory_named_like_an_output(synthetic, tmp_path, capsys):
    out = tmp_path / "pre"
    name = sorted(p.name for p in synthetic.glob("*_episode.h5"))[0]
    (out / name).mkdir(parents=True)
    assert (
        preprocess_main(
            ["--in-dir", str(synthetic), "--out-dir", str(out), "--workers", "1", "--no-progress"]
        )
        == 2
    )
    assert f"{out / name} exists and is not an HDF5 file" in one_error_line(capsys)
    assert (out / name).is_dir()


# ---- 3. a stop stops the workers ---------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_mid_run(cmd: list[str], out: Path, how: str) -> tuple[subprocess.CompletedProcess, set[int]]:
    """Start `cmd`, wait for its 2 workers and a first output, then stop it; returns it and its workers."""
    err = out.parent / f"{out.name}.stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        workers: set[int] = set()
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            workers |= _children(proc.pid)
            if len(workers) >= 2 and out.is_dir() and list(out.glob("*_episode.h5")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be stopped"
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` does
        else:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        code = proc.wait(timeout=120)
    return subprocess.CompletedProcess(cmd, code, "", err.read_text()), workers


def _assert_stopped_cleanly(proc, workers, how):
    deadline = time.time() + 10
    while any(_running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    orphans = [w for w in workers if _running(w)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)  # do not leave them to the rest of the session
    assert not orphans, "workers outlived the stopped run"
    code = 143 if how == "sigterm" else 130
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_stopping_stage2_with_workers_stops_them_and_a_rerun_finishes(segment_dir, tmp_path, how):
    out = tmp_path / "pre"
    cmd = [
        sys.executable,
        STAGE2,
        "--in-dir",
        str(segment_dir),
        "--out-dir",
        str(out),
        "--image-size",
        "224",
        "--workers",
        "2",
        "--no-progress",
    ]
    proc, workers = _stop_mid_run(cmd, out, how)
    _assert_stopped_cleanly(proc, workers, how)
    listing = sorted(p.name for p in out.iterdir())
    time.sleep(1.0)
    assert sorted(p.name for p in out.iterdir()) == listing, "outputs kept appearing after the stop"
    finished = list(out.glob("*_episode.h5"))
    assert 0 < len(finished) < len(list(segment_dir.glob("*_episode.h5")))
    for path in finished:
        verify_preprocessed(path)  # whole, not truncated
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished)} skipped (already complete)" in rerun.stdout
    assert not list(out.glob(f"*{TEMP_MARKER}*"))
    for path in out.glob("*_episode.h5"):
        verify_preprocessed(path)


@pytest.mark.slow
def test_stopping_stage1_with_workers_stops_them_and_a_rerun_finishes(rlds_dir, tmp_path):
    out = tmp_path / "seg"
    cmd = [
        sys.executable,
        STAGE1,
        "--data-dir",
        str(rlds_dir),
        "--out-dir",
        str(out),
        "--episode-sec-len",
        "5",
        "--workers",
        "2",
        "--no-progress",
    ]
    proc, workers = _stop_mid_run(cmd, out, "sigterm")
    _assert_stopped_cleanly(proc, workers, "sigterm")
    listing = sorted(p.name for p in out.iterdir())
    time.sleep(1.0)
    assert sorted(p.name for p in out.iterdir()) == listing, "segments kept appearing after the stop"
    done = list(out.glob("*_episode.h5"))
    for path in done:
        open_segment(path).close()
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(done)} already complete and verified" in rerun.stdout
    assert not list(out.glob(f"*{TEMP_MARKER}*"))


# ---- 4. one run per output directory ---------------------------------------------------------------


def _live_stage_lock(directory: Path) -> None:
    """The lock a live run holds (this test process stands for it)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stage.lock").write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start_time": None,
                "since": "now",
                "command": "first-run",
            }
        )
    )


def test_stage2_on_a_directory_in_use_is_refused_and_keeps_the_live_runs_temporary(
    synthetic, tmp_path, capsys
):
    out = tmp_path / "pre"
    _live_stage_lock(out)
    live_tmp = out / f"0-4_episode.h5{TEMP_MARKER}{os.getpid()}"
    live_tmp.write_bytes(b"being written")
    assert (
        preprocess_main(
            ["--in-dir", str(synthetic), "--out-dir", str(out), "--workers", "1", "--no-progress"]
        )
        == 2
    )
    line = one_error_line(capsys)
    assert f"{out} is in use by another" in line and "first-run" in line and "stage.lock" in line
    assert live_tmp.read_bytes() == b"being written"
    assert sorted(p.name for p in out.iterdir()) == sorted(["stage.lock", live_tmp.name])


def test_stage1_on_a_directory_in_use_is_refused_and_keeps_the_live_runs_temporary(rlds_dir, tmp_path):
    out = tmp_path / "seg"
    _live_stage_lock(out)
    live_tmp = out / f"0-10_episode.h5{TEMP_MARKER}{os.getpid()}"
    live_tmp.write_bytes(b"being written")
    proc = run(
        [
            sys.executable,
            STAGE1,
            "--data-dir",
            str(rlds_dir),
            "--out-dir",
            str(out),
            "--end-episode",
            "20",
            "--episode-sec-len",
            "10",
            "--no-progress",
        ]
    )
    assert_one_line_error(proc, 2, f"{out} is in use by another", "first-run", "stage.lock")
    assert live_tmp.read_bytes() == b"being written"
    assert sorted(p.name for p in out.iterdir()) == sorted(["stage.lock", live_tmp.name])


def test_stage_runs_release_their_lock(synthetic, tmp_path):
    out = tmp_path / "pre"
    assert (
        preprocess_main(
            ["--in-dir", str(synthetic), "--out-dir", str(out), "--workers", "1", "--no-progress"]
        )
        == 0
    )
    assert not (out / "stage.lock").exists()


# ---- 5. an index names only files inside --data-dir, listed in its sidecar -------------------------------


def _copy_index(tiny_data, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    csv = dest / tiny_data.train_index.name
    shutil.copy(tiny_data.train_index, csv)
    shutil.copy(sidecar_path(tiny_data.train_index), sidecar_path(csv))
    return csv


def _replace_first_row_file(csv: Path, name: str) -> None:
    lines = csv.read_text().splitlines()
    start = lines[1].split(",")[0]
    lines[1] = f"{start},{name}"
    csv.write_text("\n".join(lines) + "\n")


def test_an_index_row_outside_the_data_dir_is_refused_by_name(tiny_data, tmp_path):
    data_dir = tiny_data.data_dir
    real = sorted(data_dir.glob("*.h5"))[0]
    foreign = tmp_path / "other" / "foreign.h5"
    foreign.parent.mkdir()
    shutil.copy(real, foreign)
    for name in (os.path.relpath(foreign, data_dir), str(foreign)):
        csv = tmp_path / "idx" / "train.csv"  # no sidecar: only the confinement applies
        csv.parent.mkdir(exist_ok=True)
        csv.write_text(f"start_index,file\n0,{real.name}\n0,{name}\n")
        with pytest.raises(DatasetError, match=f"{csv}.*{name}.*outside the data directory"):
            RT1Dataset(csv, data_dir)


def test_an_index_row_naming_a_file_its_sidecar_does_not_list_is_refused(tiny_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data.data_dir, data_dir)
    shutil.copy(sorted(data_dir.glob("*.h5"))[0], data_dir / "extra.h5")
    csv = _copy_index(tiny_data, tmp_path / "idx")
    _replace_first_row_file(csv, "extra.h5")
    with pytest.raises(DatasetError, match=f"{csv}.*extra.h5.*not listed in its sidecar"):
        RT1Dataset(csv, data_dir)


# ---- 6. resuming with another --optimizer is refused up front --------------------------------------------


def test_resume_with_another_optimizer_is_refused_before_anything_is_written(tiny_data, tmp_path):
    save = tmp_path / "save"
    first = run(train_cmd(tiny_data, save, "--max-steps", "1"))  # the tiny preset trains with AdamW
    assert first.returncode == 0, first.stderr
    before = {p.name: p.stat().st_size for p in save.iterdir()}
    proc = run(train_cmd(tiny_data, save, "--max-steps", "2", "--optimizer", "sgd"))
    line = assert_one_line_error(proc, 1, "--optimizer adamw, this run asks for --optimizer sgd")
    assert "checkpoint-" in line
    assert {
        p.name: p.stat().st_size for p in save.iterdir()
    } == before  # metrics.jsonl untouched, no new files


# ---- 7. eval_closed_loop refuses a non-finite --cond-scale ------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_closed_loop_refuses_a_non_finite_cond_scale(tmp_path, value):
    proc = run(
        [
            sys.executable,
            "eval_closed_loop.py",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            f"--cond-scale={value}",
            "--episodes",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    line = assert_one_line_error(proc, 2, "--cond-scale must be a finite number")
    assert line.endswith(f"got {float(value)}")
    assert not (tmp_path / "out").exists()


# ---- 8. a stage-1 rerun with another --episode-sec-len --------------------------------------------------


def test_stage1_rerun_with_another_segment_length_is_refused_naming_the_existing_one(rlds_dir, tmp_path):
    convert(ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=10, end_episode=20), progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        ConversionError, match=r"segments of 10 episodes \(e\.g\. 0-10_episode\.h5.*--episode-sec-len 8"
    ):
        convert(
            ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=8, end_episode=20), progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # Disjoint ranges with another length store nothing twice: allowed.
    convert(
        ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=5, start_episode=20, end_episode=30),
        progress=False,
    )
    assert (tmp_path / "25-30_episode.h5").exists()


# ---- 9. train and val indexes of one split, in their places ------------------------------------------------


@pytest.mark.parametrize("case", ["same", "swapped"])
def test_training_refuses_a_val_index_equal_to_or_swapped_with_the_train_index(tiny_data, tmp_path, case):
    train, val = (
        (tiny_data.train_index, tiny_data.train_index)
        if case == "same"
        else (tiny_data.val_index, tiny_data.train_index)
    )
    save = tmp_path / "save"
    proc = run(train_cmd(tiny_data, save, "--val-index", val, "--max-steps", "1", index=train))
    line = assert_one_line_error(proc, 1, str(train))
    assert (
        ("is also --val-index" in line)
        if case == "same"
        else ("split 'val'" in line and "--train-index" in line)
    )
    assert not save.exists()


def test_index_pair_of_two_builds_is_refused(tiny_data, tmp_path):
    from rt1.data.index_checks import check_train_val

    val = tmp_path / tiny_data.val_index.name
    shutil.copy(tiny_data.val_index, val)
    meta = json.loads(sidecar_path(tiny_data.val_index).read_text())
    meta["seed"] += 1
    sidecar_path(val).write_text(json.dumps(meta))
    with pytest.raises(WindowIndexError, match="seed"):
        check_train_val(tiny_data.train_index, val)
    check_train_val(tiny_data.train_index, tiny_data.val_index)
    check_train_val(tiny_data.train_index, None)


# ---- 10. one-line errors instead of tracebacks -------------------------------------------------------------


def test_data_emerge_refuses_a_negative_seed(tiny_data, tmp_path):
    proc = run(
        [
            sys.executable,
            "data_emerge.py",
            "--data-dir",
            str(tiny_data.data_dir),
            "--out-dir",
            str(tmp_path / "idx"),
            "--seed",
            "-5",
        ]
    )
    assert_one_line_error(proc, 2, "--seed must be >= 0, got -5")


def test_mini_fractal_refuses_a_negative_seed_and_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "rlds"
    proc = run(
        [sys.executable, "-m", "rt1.sim.mini_fractal", "--out", str(out), "--episodes", "2", "--seed", "-1"]
    )
    assert_one_line_error(proc, 2, "--seed must be >= 0, got -1")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("sidecar", ["[1, 2]", "no-episodes"])
def test_a_sidecar_that_is_not_an_object_or_has_no_episodes_is_one_error(tiny_data, tmp_path, sidecar):
    csv = _copy_index(tiny_data, tmp_path)
    if sidecar == "no-episodes":
        meta = json.loads(sidecar_path(csv).read_text())
        del meta["episodes"]
        sidecar = json.dumps(meta)
    sidecar_path(csv).write_text(sidecar)
    for load in (read_index, index_episodes, lambda c: RT1Dataset(c, tiny_data.data_dir)):
        with pytest.raises(RT1Error, match=str(sidecar_path(csv))):
            load(csv)


def test_a_stage1_output_with_only_the_format_attributes_is_refused_by_name(rlds_dir, tmp_path):
    with h5py.File(tmp_path / "8-16_episode.h5", "w") as f:
        f.attrs["format"] = "rt1-segment"
        f.attrs["format_version"] = 2
    with pytest.raises(RT1Error, match="8-16_episode.h5.*not a complete segment"):
        convert(
            ConvertConfig(rlds_dir, tmp_path, "all", episodes_per_segment=8, end_episode=24), progress=False
        )
    assert not (tmp_path / "0-8_episode.h5").exists()


# ---- 11. messages that say what is wrong ----------------------------------------------------------------


def _edited_rlds(rlds_dir, tmp_path, edit) -> Path:
    copy = tmp_path / "rlds"
    shutil.copytree(rlds_dir, copy)
    edit(copy)
    return copy


def test_a_missing_shard_is_reported_as_missing(rlds_dir, tmp_path):
    shard = {}

    def drop(copy):
        shard["path"] = sorted(copy.glob("*.tfrecord-*"))[1]
        shard["path"].unlink()

    copy = _edited_rlds(rlds_dir, tmp_path, drop)
    with pytest.raises(RLDSReadError, match=f"{shard['path']}: TFRecord shard missing") as e:
        open_builder(copy)
    assert "corrupt" not in str(e.value)


@pytest.mark.parametrize("field,value", [("name", "bridge"), ("version", "0.2.0")])
def test_a_dataset_of_another_name_or_version_is_refused_naming_it(rlds_dir, tmp_path, field, value):
    def edit(copy):
        info = json.loads((copy / "dataset_info.json").read_text())
        info[field] = value
        (copy / "dataset_info.json").write_text(json.dumps(info))

    copy = _edited_rlds(rlds_dir, tmp_path, edit)
    with pytest.raises(RLDSReadError, match=f"{copy}.*{field} '{value}'.*fractal20220817_data") as e:
        open_builder(copy)
    assert "corrupt" not in str(e.value)


def test_os_errors_name_paths_without_posixpath(capsys):
    from rt1.errors import run_cli

    def fails(_):
        raise FileNotFoundError(2, "No such file or directory", Path("/no/such/file.h5"))

    assert run_cli(fails) == 2
    line = one_error_line(capsys)
    assert "PosixPath" not in line and "/no/such/file.h5" in line


@pytest.mark.parametrize("script", ["eval_closed_loop.py", "plot_actions.py"])
def test_an_out_that_is_a_file_is_refused_naming_the_option(tmp_path, script):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    extra = (
        ["--episodes", "2"]
        if script == "eval_closed_loop.py"
        else ["--data-dir", str(tmp_path), "--index", str(tmp_path / "val.csv")]
    )
    proc = run(
        [sys.executable, script, "--checkpoint", str(tmp_path / "none.pt"), "--out", str(blocker), *extra]
    )
    assert_one_line_error(proc, 2, f"--out {blocker} exists and is not a directory")
    assert blocker.read_text() == "a file"


def test_the_demo_refuses_too_few_episodes_at_once(tmp_path):
    out = tmp_path / "demo"
    started = time.perf_counter()
    proc = run([sys.executable, "-m", "rt1.demo", "--out", str(out), "--episodes", "2"], timeout=300)
    assert_one_line_error(proc, 2, f"--episodes must be at least {DEMO_MIN_EPISODES}, got 2")
    assert time.perf_counter() - started < 60 and not out.exists()
