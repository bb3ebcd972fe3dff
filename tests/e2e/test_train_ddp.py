"""train_ddp.py as users run it (subprocesses): one process, torchrun, torch.distributed.launch (gloo, CPU).

- 2 processes x batch B == 1 process x batch 2B, step by step (gradient averaging, lr x world size)
- an interrupted run (SIGTERM after epoch 1, or --max-steps mid-epoch) resumed == an uninterrupted run
- a planted NaN stops the run with exit code 3 naming step and rank; the last good checkpoint loads
- an exception on one rank ends the whole job promptly
- --amp bf16/fp16 steps run and checkpoint the grad scaler
- the tiny preset learns the bundled dataset well beyond the majority-class baseline

Every run uses OMP_NUM_THREADS=1 per process: the same arithmetic in every run of a comparison, and
no thread oversubscription on the 2-core test machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO
from test_train import tiny_data  # noqa: F401  (session fixture: preprocessed bundled data at 64x64)

from rt1.actions import ACTION_DIM_NAMES
from rt1.config import PRESETS
from rt1.data.index import index_episodes, read_index
from rt1.model import RT1, load_model
from rt1.train.checkpoint import load_checkpoint
from rt1.train.runlog import read_metrics

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(kind: str) -> list[str]:
    if kind == "python":
        return [sys.executable, "train_ddp.py"]
    if kind == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train_ddp.py",
        ]
    if kind == "launch":  # the original's command
        return [
            sys.executable,
            "-m",
            "torch.distributed.launch",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "--use_env",
            "train_ddp.py",
        ]
    raise ValueError(kind)


def train_args(data_dir, train_index, save_dir, *extra, val_index=None, tensorboard=False) -> list[str]:
    args = [
        "--preset",
        "tiny",
        "--data-dir",
        data_dir,
        "--train-index",
        train_index,
        "--save-dir",
        save_dir,
        "--no-progress",
        "--log-every",
        "5",
    ] + ([] if tensorboard else ["--no-tensorboard"])
    if val_index is not None:
        args += ["--val-index", val_index]
    return [str(a) for a in args + list(extra)]


def run_train(kind: str, *args, expect: int | None = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        launcher(kind) + list(args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if expect is not None and proc.returncode != expect:
        raise AssertionError(
            f"{kind} train_ddp.py exited {proc.returncode}, expected {expect}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
        )
    return proc


def write_index(path: Path, rows: list[tuple[int, str]]) -> Path:
    """An index CSV without sidecar (so the loader does not compare it with the data's digests)."""
    path.write_text("start_index,file\n" + "".join(f"{start},{name}\n" for start, name in rows))
    return path


def subset(index: Path, out: Path, n: int) -> Path:
    idx = read_index(index)
    step = max(1, len(idx) // n)
    rows = [(int(idx.starts[i]), idx.files[idx.file_ids[i]]) for i in range(0, len(idx), step)][:n]
    return write_index(out, rows)


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def train_losses(save_dir: Path) -> list[tuple[int, float, float]]:
    return [
        (m["step"], m["loss"], m["lr"])
        for m in read_metrics(save_dir / "metrics.jsonl")
        if m["event"] == "train"
    ]


def val_entries(save_dir: Path) -> list[dict]:
    return [m for m in read_metrics(save_dir / "metrics.jsonl") if m["event"] == "val"]


def tensorboard_tags(save_dir: Path) -> set[str]:
    from rt1.train.runlog import _tensorboard_without_tensorflow

    _tensorboard_without_tensorflow()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(save_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


# ---- DDP == one big batch ---------------------------------------------------------------------------


def test_two_processes_equal_one_process_with_twice_the_batch(tiny_data, tmp_path):
    """torch.distributed.launch (the original's command), 2 x B=4, vs plain python, 1 x B=8.

    BatchNorm normalises with the statistics of the batch it sees, and SyncBatchNorm does not exist
    on CPU/gloo, so two processes with 4 windows each normalise differently from one process with 8:
    the runs would differ for a reason that has nothing to do with gradient averaging. --freeze-bn
    makes BatchNorm use its running statistics (and not update them); then every window's loss is
    independent of its batch mates and the comparison tests exactly DDP's averaging and the lr
    scaling (effective lr = lr x world size: 2 x 0.02 on two processes = 0.04 on one). Condition
    dropout draws per-process random numbers, so it is off; augmentation is on (seeded per window).
    """
    common = [
        "--max-steps",
        "4",
        "--freeze-bn",
        "--cond-drop-prob",
        "0",
        "--optimizer",
        "sgd",
        "--num-workers",
        "0",
    ]
    data = (tiny_data.data_dir, tiny_data.train_index)
    two, one = tmp_path / "two", tmp_path / "one"
    out = run_train(
        "launch",
        *train_args(*data, two, *common, "--batch-size", "4", "--lr", "0.02", val_index=tiny_data.val_index),
    )
    assert "2 process(es), backend gloo" in out.stderr
    assert "SyncBatchNorm needs CUDA" in out.stderr  # --syncBN is on by default: warned, not used
    run_train(
        "python",
        *train_args(*data, one, *common, "--batch-size", "8", "--lr", "0.04", val_index=tiny_data.val_index),
    )
    # Gradient accumulation: 2 micro-batches of 4 make the same step as one batch of 8.
    accum = tmp_path / "accum"
    run_train(
        "python", *train_args(*data, accum, *common, "--batch-size", "4", "--grad-accum", "2", "--lr", "0.04")
    )

    # Validation sums over both ranks' shards: every window once (245 is odd: no padding duplicate).
    v2, v1 = val_entries(two)[-1], val_entries(one)[-1]
    assert v2["windows"] == v1["windows"] == len(read_index(tiny_data.val_index))
    assert v2["loss"] == pytest.approx(v1["loss"], rel=1e-5)
    for name in ACTION_DIM_NAMES:  # an argmax may flip between near-equal logits: allow one frame in ~1500
        assert v2["token_accuracy_per_dim"][name] == pytest.approx(
            v1["token_accuracy_per_dim"][name], abs=1e-3
        )

    torch.manual_seed(0)
    initial = RT1(PRESETS["tiny"].model).state_dict()
    reference = params(one / "checkpoint-1.pt")
    for other in (two, accum):
        a = params(other / "checkpoint-1.pt")
        moved = 0
        for name in a:
            torch.testing.assert_close(
                a[name], reference[name], rtol=1e-4, atol=2e-5, msg=lambda m: f"{other.name} {name}: {m}"
            )
            if a[name].is_floating_point() and not torch.allclose(a[name], initial[name], atol=1e-4):
                moved += 1
        assert moved > len(a) // 2, "training barely changed the weights: the comparison would be vacuous"
        la, lb = train_losses(other), train_losses(one)
        assert [s for s, _, _ in la] == [s for s, _, _ in lb] == [1, 2, 3, 4]
        np.testing.assert_allclose([l for _, l, _ in la], [l for _, l, _ in lb], rtol=1e-5)
        np.testing.assert_allclose([r for _, _, r in la], [r for _, _, r in lb], rtol=1e-9)


# ---- resume -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_index(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_index")
    return subset(tiny_data.train_index, out / "train.csv", 48), subset(
        tiny_data.val_index, out / "val.csv", 16
    )


@pytest.fixture(scope="module", params=[1, 5], ids=["windows", "chunks_of_5"])
def resume_data(request, small_index, tiny_data, tmp_path_factory):
    """(train index, val index, --chunk-windows flags): the resume tests run on independent windows and on chunks
    (48 windows: the first 12 of 4 episodes, each tiled 5 + 5 + 2, the chunks split at batch boundaries)."""
    from test_chunks import chunk_index

    if request.param == 1:
        return (*small_index, [])
    train = chunk_index(tiny_data.train_index, tmp_path_factory.mktemp("chunk_index") / "train.csv", 4, 12)
    return train, small_index[1], ["--chunk-windows", str(request.param)]


def _assert_same_run(reference: Path, resumed: Path, checkpoint: str) -> None:
    a, b = load_checkpoint(reference / checkpoint), load_checkpoint(resumed / checkpoint)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"{name} differs after resume"
    assert a["global_step"] == b["global_step"]
    assert train_losses(reference) == train_losses(resumed)  # the same loss (and lr) at every step
    assert val_entries(reference) == val_entries(resumed)


def test_sigterm_after_epoch_one_then_rerun_resumes_exactly(tiny_data, resume_data, tmp_path):
    train_csv, val_csv, chunking = resume_data
    common = ["--epochs", "2", "--num-workers", "1", "--batch-size", "4"] + chunking
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_train("python", *train_args(tiny_data.data_dir, train_csv, reference, *common, val_index=val_csv))

    args = launcher("python") + train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv)
    proc = subprocess.Popen(
        args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (resumed / "checkpoint-1.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated by SIGTERM" in stderr
    # SIGTERM saves the step it arrives at: right after epoch 1 (nothing new to save) or inside epoch 2.
    names = sorted(p.name for p in resumed.glob("*checkpoint*"))
    assert names in (["checkpoint-1.pt"], ["checkpoint-1.pt", "checkpoint-2.pt"]), names
    if names[-1] == "checkpoint-2.pt":
        assert not load_checkpoint(resumed / "checkpoint-2.pt")["epoch_complete"], (
            "the run finished epoch 2 before SIGTERM"
        )

    out = run_train("python", *train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv))
    assert "resumed from" in out.stderr and names[-1] in out.stderr
    _assert_same_run(reference, resumed, "checkpoint-2.pt")
    state = load_checkpoint(resumed / "checkpoint-2.pt")
    assert state["epoch"] == 2 and state["epoch_complete"] and state["global_step"] == 24
    assert state["scheduler"]["last_epoch"] == 24
    lrs = [lr for _, _, lr in train_losses(resumed)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)  # the cosine ran to lrf x lr

    again = run_train(
        "python", *train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv)
    )
    assert "nothing to do" in again.stderr


def test_max_steps_mid_epoch_then_rerun_resumes_exactly(tiny_data, resume_data, tmp_path):
    """--max-steps stops inside epoch 2 and writes a resumable checkpoint; the rerun skips the windows
    already seen. (lrf 1: a constant lr, because --max-steps also sets the schedule's length.)"""
    train_csv, val_csv, chunking = resume_data
    common = ["--epochs", "2", "--num-workers", "0", "--batch-size", "4", "--lrf", "1"] + chunking
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_train(
        "python",
        *train_args(tiny_data.data_dir, train_csv, reference, *common, val_index=val_csv, tensorboard=True),
    )
    tags = tensorboard_tags(reference)
    assert {"train/loss", "train/lr", "train/samples_per_s", "val/loss", "val/token_accuracy"} <= tags
    assert {f"val/token_accuracy/{name}" for name in ACTION_DIM_NAMES} <= tags
    run_train(
        "python",
        *train_args(tiny_data.data_dir, train_csv, resumed, *common, "--max-steps", "17", val_index=val_csv),
    )  # 12 steps per epoch: stops at step 5 of epoch 2
    partial = load_checkpoint(resumed / "checkpoint-2.pt")
    assert (
        partial["epoch"],
        partial["epoch_complete"],
        partial["step_in_epoch"],
        partial["global_step"],
    ) == (2, False, 5, 17)
    if chunking:  # another K visits the epoch's windows in another order: its position cannot be resumed
        other = [*common[:-2], "--chunk-windows", "3"]
        refused = run_train(
            "python",
            *train_args(tiny_data.data_dir, train_csv, resumed, *other, val_index=val_csv),
            expect=None,
        )
        assert refused.returncode != 0 and "--chunk-windows 5; this run asks for 3" in refused.stderr
    run_train("python", *train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv))
    a = load_checkpoint(reference / "checkpoint-2.pt")["model"]
    b = load_checkpoint(resumed / "checkpoint-2.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after a mid-epoch resume"
    assert train_losses(reference) == train_losses(resumed)


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before logging {text!r}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in {log} after {timeout} s")


def _start(kind: str, args: list[str], log: Path) -> subprocess.Popen:
    """A run in its own session (process group), stderr to a file, as a cluster job runs."""
    return subprocess.Popen(
        launcher(kind) + args,
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        start_new_session=True,
    )


def test_sigterm_to_the_whole_torchrun_job_saves_the_current_step_and_the_rerun_resumes_exactly(
    tiny_data, resume_data, tmp_path
):
    """A scheduler's SIGTERM reaches every process of the job: torchrun, both ranks and their DataLoader
    workers. Every rank stops after the same step, a checkpoint of that step is saved, no rank prints a
    DataLoader traceback, and the rerun continues as if the run had never stopped."""
    train_csv, val_csv, chunking = resume_data
    common = [
        "--epochs",
        "2",
        "--num-workers",
        "1",
        "--batch-size",
        "2",
        "--log-every",
        "1",
    ] + chunking  # 12 steps/epoch
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_train("torchrun", *train_args(tiny_data.data_dir, train_csv, reference, *common, val_index=val_csv))

    log = tmp_path / "job.log"
    proc = _start(
        "torchrun", train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv), log
    )
    try:
        _wait_for_line(log, "step 16/24", proc)  # inside epoch 2
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "DataLoader worker" not in text and "killed by signal" not in text, text[-4000:]
    assert not [
        line
        for line in text.splitlines()
        if line.strip().startswith("File") and ("train_ddp.py" in line or "/rt1/" in line)
    ], f"a traceback from our code:\n{text[-4000:]}"
    assert "error: terminated by SIGTERM at step" in text, text[-4000:]
    state = load_checkpoint(resumed / "checkpoint-2.pt")
    assert not state["epoch_complete"] and 4 <= state["step_in_epoch"] < 12, state["step_in_epoch"]
    assert state["global_step"] == 12 + state["step_in_epoch"] and state["world_size"] == 2
    assert train_losses(resumed)[-1][0] == state["global_step"], "metrics.jsonl must end at the saved step"
    assert not (resumed / "train.lock").exists()

    out = run_train(
        "torchrun", *train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv)
    )
    assert f"resumed from {resumed / 'checkpoint-2.pt'} at step {state['global_step']}" in out.stderr
    _assert_same_run(reference, resumed, "checkpoint-2.pt")


def test_save_every_bounds_what_a_kill_loses_and_sigint_saves_the_current_step(
    tiny_data, resume_data, tmp_path
):
    """--save-every 5: SIGKILL at step 7 loses 2 steps (the rerun takes over the dead run's lock and resumes
    from step 5); then Ctrl-C (SIGINT) saves the step it arrives at (exit 130); the third run finishes equal
    to an uninterrupted run."""
    train_csv, val_csv, chunking = resume_data
    common = [
        "--epochs",
        "2",
        "--num-workers",
        "1",
        "--batch-size",
        "4",
        "--log-every",
        "1",
        "--save-every",
        "5",
    ] + chunking
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_train("python", *train_args(tiny_data.data_dir, train_csv, reference, *common, val_index=val_csv))
    args = train_args(tiny_data.data_dir, train_csv, resumed, *common, val_index=val_csv)

    proc = _start("python", args, tmp_path / "killed.log")
    _wait_for_line(tmp_path / "killed.log", "step 7/24", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    state = load_checkpoint(resumed / "checkpoint-1.pt")
    assert (state["global_step"], state["epoch_complete"]) == (5, False)
    assert (resumed / "train.lock").exists()  # SIGKILL: nobody removed it

    proc = _start("python", args, tmp_path / "interrupted.log")
    try:
        _wait_for_line(tmp_path / "interrupted.log", "step 15/24", proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole process group
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "interrupted.log").read_text()
    assert "took over the stale lock" in text and "resumed from" in text and "at step 5" in text, text[-3000:]
    assert proc.returncode == 130, text[-3000:]
    assert "error: interrupted (SIGINT) at step" in text and "Traceback" not in text, text[-3000:]
    state = load_checkpoint(resumed / "checkpoint-2.pt")
    assert state["global_step"] >= 15 and not state["epoch_complete"]
    assert f"saved {resumed / 'checkpoint-2.pt'}" in text

    run_train("python", *args)
    _assert_same_run(reference, resumed, "checkpoint-2.pt")


def test_under_torchrun_a_save_dir_in_use_is_refused_by_every_rank(tiny_data, small_index, tmp_path):
    from test_faults import live_lock

    train_csv, _ = small_index
    save = tmp_path / "save"
    save.mkdir()
    live_lock(save)  # this test process stands for a live run holding the directory
    out = run_train(
        "torchrun",
        *train_args(tiny_data.data_dir, train_csv, save, "--max-steps", "2"),
        expect=None,
        timeout=300,
    )
    assert out.returncode != 0
    assert "error (rank 0)" in out.stderr and "error (rank 1)" in out.stderr, out.stderr[-3000:]
    assert f"is in use by another training run (PID {os.getpid()}" in out.stderr
    assert sorted(p.name for p in save.iterdir()) == ["train.lock"]


# ---- mixed precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_steps_run_and_checkpoint(tiny_data, small_index, tmp_path, amp):
    """--amp on CPU: bf16 autocast; fp16 autocast with a GradScaler whose state is checkpointed."""
    from rt1.config import TrainConfig
    from rt1.train.trainer import train

    train_csv, _ = small_index
    cfg = TrainConfig(
        preset="tiny",
        data_dir=tiny_data.data_dir,
        train_index=train_csv,
        save_dir=tmp_path,
        amp=amp,
        max_steps=2,
        batch_size=4,
        num_workers=0,
        progress=False,
        tensorboard=False,
    )
    result = train(cfg)
    state = load_checkpoint(result.last_checkpoint)
    assert state["global_step"] == 2
    assert (state["scaler"] is not None) == (amp == "fp16")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ---- failures ---------------------------------------------------------------------------------------


def _poisonable(tiny_data, min_windows: int):
    """Two episodes with at least min_windows windows: (clean, poisoned), from the training split."""
    episodes = [e for e in index_episodes(tiny_data.train_index) if e.num_windows >= min_windows]
    return episodes[0], episodes[1]


def test_nan_loss_stops_with_exit_code_3_naming_step_and_rank(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in tiny_data.data_dir.glob("*.h5"):
        (data / f.name).write_bytes(f.read_bytes())
    clean, poisoned = _poisonable(tiny_data, 8)
    # Unshuffled, rank 0 takes rows 0, 2, 4, ... and rank 1 rows 1, 3, 5, ...: only rank 1 sees `poisoned`.
    rows = []
    for k in range(8):
        rows += [(clean.step_start + k, clean.file), (poisoned.step_start + k, poisoned.file)]
    csv = write_index(tmp_path / "train.csv", rows)
    save = tmp_path / "save"
    common = ["--no-shuffle", "--batch-size", "4", "--num-workers", "0", "--cond-drop-prob", "0"]
    run_train("torchrun", *train_args(data, csv, save, "--epochs", "1", *common))
    assert (save / "checkpoint-1.pt").exists()

    with h5py.File(data / poisoned.file, "r+") as f:  # silent corruption: NaN in one instruction embedding
        f["episodes/language_embedding"][poisoned.episode] = np.full(512, np.nan, np.float32)
    out = run_train("torchrun", *train_args(data, csv, save, "--epochs", "2", *common), expect=None)
    assert out.returncode != 0
    message = "non-finite training loss (NaN or inf) at step 3 (epoch 2) on rank 1"
    assert message in out.stderr, out.stderr[-4000:]
    assert "the last good checkpoint is" in out.stderr and "checkpoint-1.pt" in out.stderr
    assert "exitcode  : 3" in out.stderr or "exitcode: 3" in out.stderr.replace(" ", ""), out.stderr[-3000:]
    assert sorted(p.name for p in save.iterdir() if "checkpoint" in p.name) == ["checkpoint-1.pt"]
    model, config, args = load_model(save / "checkpoint-1.pt", "cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters()) and args["epochs"] == 1

    # One process: the exit status itself is 3.
    single = run_train(
        "python", *train_args(data, csv, tmp_path / "single", "--epochs", "1", *common), expect=3
    )
    assert "at step 1 (epoch 1) on rank 0" in single.stderr and "no checkpoint was written" in single.stderr


def test_an_exception_on_one_rank_ends_the_job(tiny_data, tmp_path):
    clean, _ = _poisonable(tiny_data, 8)
    # Row 1 (rank 1's first window) starts outside every episode of its file: the loader raises there.
    rows = [(clean.step_start, clean.file), (10**6, clean.file)] + [
        (clean.step_start + k, clean.file) for k in range(6)
    ]
    csv = write_index(tmp_path / "train.csv", rows)
    start = time.monotonic()
    out = run_train(
        "torchrun",
        *train_args(
            tiny_data.data_dir,
            csv,
            tmp_path / "save",
            "--epochs",
            "1",
            "--no-shuffle",
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--dist-timeout",
            "60",
        ),
        expect=None,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert "error (rank 1)" in out.stderr and "row 1" in out.stderr, out.stderr[-4000:]
    assert elapsed < 120, f"the job took {elapsed:.0f} s to end after one rank failed"
    assert not list((tmp_path / "save").glob("checkpoint-*.pt"))


# ---- learnability -----------------------------------------------------------------------------------


def _tokens(index: Path, data_dir: Path) -> np.ndarray:
    idx = read_index(index)
    arrays = {}
    for name in idx.files:
        with h5py.File(data_dir / name, "r") as f:
            arrays[name] = f["steps/action_tokens"][:]
    return np.concatenate([arrays[idx.files[f]][s : s + 6] for s, f in zip(idx.starts, idx.file_ids)]).astype(
        int
    )


def majority_baseline(tiny_data) -> np.ndarray:
    """Per action dimension: val accuracy of always predicting the training set's most frequent token."""
    train, val = (
        _tokens(tiny_data.train_index, tiny_data.data_dir),
        _tokens(tiny_data.val_index, tiny_data.data_dir),
    )
    out = []
    for d in range(train.shape[1]):
        values, counts = np.unique(train[:, d], return_counts=True)
        out.append(float(np.mean(val[:, d] == values[counts.argmax()])))
    return np.array(out)


LEARN_STEPS = 200


def test_tiny_preset_learns_beyond_the_majority_baseline(tiny_data, tmp_path):
    """Two processes (torchrun), the tiny preset's training defaults (AdamW, lr 1e-3 per process, batch 16
    per process): 200 steps = 6400 windows, about 7 passes over the 868 training windows.

    The overall token accuracy is a weak signal on this data: 6 of the 11 dimensions (rotation, base)
    are (nearly) constant, so the baseline already gets them right, and the world_vector dimensions
    carry N(0, 0.03) noise (about 4 of the 256 bins), which caps exact-bin accuracy near 0.1. So the
    margins are asserted on the informative dimensions (baseline below 0.9: world x/y/z and gripper)
    and on the gripper, which the model must read from the image (open or closed bracket).
    """
    save = tmp_path / "save"
    run_train(
        "torchrun",
        *train_args(
            tiny_data.data_dir,
            tiny_data.train_index,
            save,
            "--epochs",
            "100",
            "--max-steps",
            str(LEARN_STEPS),
            "--num-workers",
            "1",
            "--val-every",
            "100",
            val_index=tiny_data.val_index,
        ),
    )
    final = val_entries(save)[-1]
    assert final["step"] == LEARN_STEPS and final["windows"] == len(read_index(tiny_data.val_index))
    baseline = majority_baseline(tiny_data)
    acc = np.array([final["token_accuracy_per_dim"][name] for name in ACTION_DIM_NAMES])
    informative = baseline < 0.9
    gripper = ACTION_DIM_NAMES.index("gripper")
    report = {
        "steps": final["step"],
        "baseline": round(float(baseline.mean()), 4),
        "accuracy": round(final["token_accuracy"], 4),
        "informative_dims": [n for n, i in zip(ACTION_DIM_NAMES, informative) if i],
        "informative_baseline": round(float(baseline[informative].mean()), 4),
        "informative_accuracy": round(float(acc[informative].mean()), 4),
        "per_dim (baseline, accuracy)": {
            n: (round(float(b), 3), round(float(a), 3)) for n, b, a in zip(ACTION_DIM_NAMES, baseline, acc)
        },
    }
    print(json.dumps(report, indent=1))
    assert final["token_accuracy"] == pytest.approx(acc.mean())
    assert acc[gripper] >= baseline[gripper] + 0.15, report
    assert acc[informative].mean() >= baseline[informative].mean() + 0.05, report
    assert final["token_accuracy"] >= baseline.mean() + 0.015, report
