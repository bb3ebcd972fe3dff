"""Faults a user meets (issue 14), each through the real command line in a subprocess:

- one run per --save-dir: a second run is refused naming the first; a stale lock is taken over
- --resume given a text file or random bytes, a bad row met by a DataLoader worker, a full disk:
  one line `error: ...` and the documented exit status, no traceback
- a run refused during set-up leaves nothing behind (no metrics.jsonl, TensorBoard file or save dir)
- resuming after a complete epoch with another --batch-size: the schedule ends at lrf x lr at the last step
- progress written to a file: lines, not thousands of '\\r' updates (training, stages 1 and 2)
- the Makefile's install check on a CPU machine given a CUDA build of torch warns and goes on
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_train import tiny_data  # noqa: F401  (session fixture: preprocessed bundled data at 64x64)

from rt1.train.checkpoint import load_checkpoint
from rt1.train.runlog import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(data, save_dir, *extra, index=None) -> list[str]:
    return [
        sys.executable,
        "train_ddp.py",
        "--preset",
        "tiny",
        "--data-dir",
        str(data.data_dir),
        "--train-index",
        str(index or data.train_index),
        "--save-dir",
        str(save_dir),
        "--no-tensorboard",
        "--num-workers",
        "0",
        "--batch-size",
        "4",
        *map(str, extra),
    ]


def run(
    cmd, *, env=None, stderr_file: Path | None = None, timeout=600, cwd=REPO
) -> subprocess.CompletedProcess:
    if stderr_file is None:
        return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    with open(stderr_file, "w") as err:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout
        )
    proc.stderr = stderr_file.read_text()
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit status `code`, no traceback, and exactly one stderr line starting with 'error'; returns it."""
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- item 1: one run per --save-dir -------------------------------------------------------------------


def live_lock(save: Path) -> None:
    """The lock file a live run on this host holds: this test process stands for "the first run"."""
    (save / "train.lock").write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start_time": None,
                "since": "today",
                "command": "train_ddp.py --first-run",
            }
        )
    )


def test_a_run_on_a_save_dir_in_use_is_refused_naming_the_running_one_and_touches_nothing(
    tiny_data, tmp_path
):
    save = tmp_path / "save"
    save.mkdir()
    (save / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 5.0}\n')  # the first run's log
    live_lock(save)
    proc = run(train_cmd(tiny_data, save, "--max-steps", "1"))
    line = assert_one_line_error(
        proc, 2, str(save), "in use", f"PID {os.getpid()}", socket.gethostname(), "--first-run"
    )
    assert "train.lock" in line
    assert (save / "metrics.jsonl").read_text() == '{"event": "train", "step": 1, "loss": 5.0}\n'
    assert sorted(p.name for p in save.iterdir()) == ["metrics.jsonl", "train.lock"]


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tiny_data, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    pid = dead_pid()
    (save / "train.lock").write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": pid,
                "start_time": "1",
                "since": "yesterday",
                "command": "train_ddp.py ...",
            }
        )
    )
    proc = run(train_cmd(tiny_data, save, "--max-steps", "1", "--no-progress"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "took over the stale lock" in proc.stderr and f"PID {pid}" in proc.stderr
    assert not (save / "train.lock").exists(), "the lock outlived the run"
    assert (save / "checkpoint-1.pt").exists()


# ---- item 6: one-line errors, nothing left behind ----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a checkpoint\n", os.urandom(4096), b"PK\x03\x04" + os.urandom(2000)],
    ids=["text", "random", "broken-zip"],
)
def test_resume_from_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tiny_data, tmp_path, content):
    bad = tmp_path / "checkpoint-3.pt"
    bad.write_bytes(content)
    save = tmp_path / "new" / "save"
    proc = run(train_cmd(tiny_data, save, "--resume", bad, "--max-steps", "1"))
    assert_one_line_error(proc, 1, str(bad))
    assert not (tmp_path / "new").exists(), "a refused run left the save directory it created"


def test_a_refused_run_leaves_nothing_behind(tiny_data, tmp_path):
    """The rt1 preset wants 256x320 windows, the data is 64x64: refused before training, nothing written."""
    save = tmp_path / "runs" / "save"
    cmd = train_cmd(tiny_data, save, "--max-steps", "1")
    cmd[cmd.index("tiny")] = "rt1"
    cmd.remove("--no-tensorboard")
    proc = run(cmd)
    assert_one_line_error(proc, 1, "64x64", "256x320")
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))
    save.mkdir(parents=True)  # an existing save dir stays as it was: no metrics.jsonl, no events file
    proc = run(cmd)
    assert proc.returncode == 1
    assert list(save.iterdir()) == []


def test_a_bad_row_met_by_a_dataloader_worker_is_one_line_naming_the_row(tiny_data, tmp_path):
    from rt1.data.index import index_episodes

    episode = next(e for e in index_episodes(tiny_data.train_index) if e.num_windows >= 4)
    csv = tmp_path / "train.csv"  # no sidecar; row 1 starts outside every episode of its file
    csv.write_text(
        "start_index,file\n"
        + "".join(
            f"{s},{episode.file}\n"
            for s in (episode.step_start, 10**6, episode.step_start + 1, episode.step_start + 2)
        )
    )
    proc = run(
        train_cmd(
            tiny_data,
            tmp_path / "save",
            "--num-workers",
            "1",
            "--no-shuffle",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--no-progress",
            index=csv,
        )
    )
    line = assert_one_line_error(proc, 1, "row 1", str(csv), "DataLoader worker")
    assert "Caught" not in line


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path` (root only): a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_a_one_line_error_naming_the_file(tiny_data, tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        # A tiny-preset checkpoint (weights + AdamW moments, ~8 MB) does not fit in 1 MB.
        proc = run(train_cmd(tiny_data, disk / "save", "--max-steps", "2", "--no-progress"))
        assert_one_line_error(proc, 1, "checkpoint", str(disk / "save" / "checkpoint-1.pt"))
        assert not [p for p in (disk / "save").iterdir() if "checkpoint" in p.name]
        shutil.rmtree(disk / "save")
        # Stage 3 on a disk with room for nothing: the error names the file it could not write.
        (disk / "fill").write_bytes(b"\0" * (1024 * 1024 - 8192))
        while True:
            try:
                with open(disk / "fill", "ab") as f:
                    f.write(b"\0" * 1024)
            except OSError:
                break
        proc = run(
            [
                sys.executable,
                "data_emerge.py",
                "--data-dir",
                str(tiny_data.data_dir),
                "--out-dir",
                str(disk / "index"),
            ]
        )
        assert_one_line_error(proc, 2, str(disk / "index"), "No space left on device", "train_idx_")


# ---- item 7: another batch size after a complete epoch -------------------------------------------------


def test_resume_with_another_batch_size_after_an_epoch_recomputes_the_schedule(tiny_data, tmp_path):
    from test_train_ddp import subset

    train_csv = subset(tiny_data.train_index, tmp_path / "train.csv", 48)
    save = tmp_path / "save"
    first = run(
        train_cmd(tiny_data, save, "--epochs", "1", "--batch-size", "8", "--no-progress", index=train_csv)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(save / "checkpoint-1.pt")["global_step"] == 6  # 48 windows / 8
    second = run(
        train_cmd(tiny_data, save, "--epochs", "2", "--batch-size", "4", "--no-progress", index=train_csv)
    )
    assert second.returncode == 0, second.stderr[-3000:]
    state = load_checkpoint(save / "checkpoint-2.pt")
    assert state["global_step"] == 6 + 12 and state["total_steps"] == 18
    assert "lr schedule over 18 steps" in second.stderr and "now spans 18 steps" in second.stderr
    lrs = [m["lr"] for m in read_metrics(save / "metrics.jsonl") if m["event"] == "train"]
    assert len(lrs) == 18
    assert lrs[-1] == pytest.approx(1e-4)  # lrf 0.1 x lr 1e-3, at the run's last step
    assert all(a > b for a, b in zip(lrs[6:], lrs[7:])), "the cosine must keep decaying after the resume"


# ---- item 11: progress in a log file ---------------------------------------------------------------------


def test_training_progress_in_a_file_is_log_lines_not_carriage_returns(tiny_data, tmp_path):
    err = tmp_path / "train.log"
    proc = run(
        train_cmd(tiny_data, tmp_path / "save", "--max-steps", "6", "--log-every", "2"), stderr_file=err
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = err.read_text()
    assert "\r" not in text
    steps = [line for line in text.splitlines() if " step " in line and "windows/s" in line]
    assert [line.split(" step ")[1].split()[0] for line in steps] == ["2/6", "4/6", "6/6"], text[-3000:]
    assert all("loss" in line and "lr" in line for line in steps)


def test_stage_progress_in_a_file_is_lines_not_carriage_returns(rlds_dir, segment_dir, tmp_path):
    env = {**ENV, "RT1_PROGRESS_SECONDS": "0"}  # a line per update: the most a file can get
    one = run(
        [
            sys.executable,
            "data_preprocessing/rt_data_generator_all.py",
            "--data-dir",
            str(rlds_dir),
            "--out-dir",
            str(tmp_path / "seg"),
            "--end-episode",
            "20",
            "--episode-sec-len",
            "10",
        ],
        env=env,
        stderr_file=tmp_path / "stage1.log",
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(
        [
            sys.executable,
            "DataPreprocess_batch_all.py",
            "--in-dir",
            str(segment_dir),
            "--out-dir",
            str(tmp_path / "pre"),
            "--image-size",
            "32",
            "--workers",
            "1",
        ],
        env=env,
        stderr_file=tmp_path / "stage2.log",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for log, final in (
        (one.stderr, "convert[all]: 20/20 episodes (100.0%)"),
        (two.stderr, f"preprocess (all): {len(list(segment_dir.glob('*.h5')))}/"),
    ):
        assert "\r" not in log, log[:500]
        assert final in log, log[-2000:]


# ---- item 9: the Makefile on a CPU machine given a CUDA torch ----------------------------------------------


def test_make_install_warns_and_goes_on_when_a_cpu_machine_gets_a_cuda_torch(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"  # answers `pip install` and lists CUDA wheels for `pip list`
    fake.write_text(
        "#!/bin/sh\nif [ \"$3\" = list ]; then echo 'nvidia-cublas-cu12 12.8.4.1'; "
        "echo 'torch 2.13.0'; fi\nexit 0\n"
    )
    fake.chmod(0o755)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())
    proc = subprocess.run(
        ["make", "-C", str(REPO), f"VENV={venv}", "install"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: the CUDA build of torch" in proc.stdout and "README" in proc.stdout
    assert (venv / ".installed").exists()


# ---- item 10: the real dataset's disk and time, and the docs that quote them ----------------------------


@pytest.mark.slow
def test_the_real_size_benchmark_measures_both_stages_on_real_size_frames():
    proc = run([sys.executable, "benchmarks/bench_real_size.py", "--quick"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    kib = float(out.split("JPEG, mean ")[1].split(" KiB")[0])
    assert 24 <= kib <= 34, out  # the real dataset's mean frame is ~28-29 KB
    for stage in ("stage 1 (RLDS -> segments)", "stage 2 (segments -> 224x224 JPEG q90)"):
        assert f"{stage}: " in out and "steps per CPU-second" in out, out
        assert f"{stage}: output" in out and "32 worker(s):" in out, out
    assert "87,212 episodes, 3,786,400 steps" in out


def test_the_docs_give_torchrun_first_the_cpu_build_and_the_real_dataset_figures():
    # The manual moved from the README into docs/ (issue 35): data.md and training.md are "training on the real
    # dataset"; the README keeps the CPU build too.
    real = (REPO / "docs" / "data.md").read_text() + (REPO / "docs" / "training.md").read_text()
    training = real.split("## DDP and multi-node")[1]
    commands = [
        line
        for line in training.split("```bash")[1].split("```")[0].splitlines()
        if line and not line.startswith(("#", " "))
    ]
    assert commands[0].startswith("torchrun") and "torch.distributed.launch" in commands[-2], commands
    for text in (
        "--index-url https://download.pytorch.org/whl/cpu",
        "bench_real_size.py",
        "resolve_rlds_dir",
        "DIR/fractal20220817_data/0.1.0/",
        "1.82 GiB",
        "--save-every",
        "train.lock",
        "--val-fraction 0",
    ):
        assert text in real, text
