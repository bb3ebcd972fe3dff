"""Multi-node training on one machine: two torchrun agents are two nodes (`--nnodes 2 --nproc-per-node 1`, c10d
rendezvous on 127.0.0.1), as the README's multi-node command starts them.

- a two-node run trains exactly as one node with two processes (the same checkpoint, bit for bit)
- a node that dies (its agent and worker killed) makes the other node stop within --dist-timeout with one line
  naming the lost peer, and rerunning both nodes' commands resumes exactly from the last checkpoint
- so does killing only a node's torchrun agent (its worker is stopped by SIGTERM, with a checkpoint)

The dataset is the GPU check's synthetic one (stage-2 writer, stage-3 index): no TensorFlow needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_train_ddp import _assert_same_run, _free_port, train_losses

from rt1.gpu_check.data import write_check_dataset
from rt1.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS, SAVE_EVERY, DIST_TIMEOUT = 20, 5, 30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_check_dataset(
        tmp_path_factory.mktemp("multinode_data"), image_size=64, episodes=16, steps=16
    )


def args(data, save_dir: Path) -> list[str]:
    # 132 windows, batch 4 x 2 processes: 17 steps per epoch; STEPS ends inside epoch 2.
    return [
        "train_ddp.py",
        "--preset",
        "tiny",
        "--data-dir",
        str(data.data_dir),
        "--train-index",
        str(data.train_index),
        "--save-dir",
        str(save_dir),
        "--no-progress",
        "--no-tensorboard",
        "--log-every",
        "1",
        "--num-workers",
        "0",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--max-steps",
        str(STEPS),
        "--save-every",
        str(SAVE_EVERY),
        "--dist-timeout",
        str(DIST_TIMEOUT),
    ]


def node_command(port: int, data, save_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "rt1-test",
        *args(data, save_dir),
    ]


def start_nodes(port: int, data, save_dir: Path, logs: list[Path]) -> list[subprocess.Popen]:
    """Node A first (it hosts the rendezvous store on the port, as HOST:29500 does), then node B."""
    nodes = []
    for log in logs:
        nodes.append(
            subprocess.Popen(
                node_command(port, data, save_dir),
                cwd=REPO,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=open(log, "w"),
                start_new_session=True,
            )
        )
        if len(nodes) == 1:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
    return nodes


def wait_all(nodes: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    try:
        for node in nodes:
            node.wait(timeout=timeout)
    finally:
        kill_all(nodes)
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, f"{log.name} exited {node.returncode}:\n{log.read_text()[-4000:]}"


def kill_all(nodes: list[subprocess.Popen]) -> None:
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun starts its workers in new sessions: killpg misses them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def running(pid: int) -> bool:
    """A process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def one_node_reference(data, tmp_path_factory):
    """One node, two processes: the run the two-node runs must equal."""
    save = tmp_path_factory.mktemp("one_node") / "save"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args(data, save),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es), backend gloo" in proc.stderr
    return save


def test_two_nodes_train_exactly_as_one_node_with_two_processes(data, one_node_reference, tmp_path):
    save, logs = tmp_path / "save", [tmp_path / "node_a.log", tmp_path / "node_b.log"]
    wait_all(start_nodes(_free_port(), data, save, logs), logs)
    text = "".join(log.read_text() for log in logs)
    assert "2 process(es), backend gloo" in text, text[-3000:]
    assert f"step {STEPS}/{STEPS}" in text
    _assert_same_run(one_node_reference, save, "checkpoint-2.pt")
    reference = load_checkpoint(one_node_reference / "checkpoint-2.pt")
    assert reference["global_step"] == STEPS and reference["world_size"] == 2
    losses = [loss for _, loss, _ in train_losses(save)]
    assert losses[-1] < losses[0] - 0.5, losses  # it trained: equal runs that did nothing would prove nothing


@pytest.mark.parametrize("victim", ["node", "agent"])
def test_a_lost_node_or_agent_stops_the_other_with_one_line_naming_it_and_both_resume_exactly(
    data, one_node_reference, tmp_path, victim
):
    """victim "node": node B's agent and worker are killed (the machine died): node A's rank loses its peer in a
    collective. victim "agent": only node B's torchrun agent is killed: its worker (in a session of its own) gets
    SIGTERM from the kernel (PR_SET_PDEATHSIG), and every rank stops after the same step with a checkpoint."""
    save, logs, port = tmp_path / "save", [tmp_path / "node_a.log", tmp_path / "node_b.log"], _free_port()
    nodes = start_nodes(port, data, save, logs)
    try:
        deadline = time.monotonic() + 240
        while not any("step 12/" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "".join(
                log.read_text()[-2000:] for log in logs
            )
            time.sleep(0.05)
        tree = descendants(nodes[1].pid)  # node B: its agent and its worker
        workers = [p for p in tree if p != nodes[1].pid]
        assert workers, "node B's worker process not found"
        for pid in tree if victim == "node" else [nodes[1].pid]:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        nodes[0].wait(timeout=DIST_TIMEOUT + 60)
        elapsed = time.monotonic() - killed_at
        while any(running(pid) for pid in workers):
            assert time.monotonic() - killed_at < 60, "node B's worker outlived its agent"
            time.sleep(0.05)
    finally:
        kill_all(nodes)
        for pid in workers if victim == "agent" else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = "".join(log.read_text() for log in logs)
    assert nodes[0].returncode != 0, text[-3000:]
    assert elapsed < DIST_TIMEOUT, f"node A took {elapsed:.0f} s to stop after node B's {victim} died"
    errors = [line for line in text.splitlines() if line.startswith("error")]
    assert len(errors) == 1, text[-4000:]
    if victim == "node":
        assert "lost contact with the peer rank" in errors[0], errors[0]
        assert any(f"PID {pid}, gone" in errors[0] for pid in workers), errors[0]
    else:
        assert "terminated by SIGTERM (the torchrun agent of rank" in errors[0] and "died)" in errors[0], (
            errors[0]
        )
    assert not [line for line in text.splitlines() if line.strip().startswith("File") and "/rt1/" in line], (
        text[-3000:]
    )
    saved = load_checkpoint(sorted(save.glob("checkpoint-*.pt"))[-1])["global_step"]
    if victim == "node":  # the last --save-every checkpoint
        assert saved >= 10 and saved % SAVE_EVERY == 0, saved
    else:  # the step every rank stopped after
        assert 12 <= saved < STEPS and f"holds step {saved}" in errors[0], (saved, errors[0])

    # Both nodes rerun their commands (a new rendezvous): the run resumes from the last checkpoint, exactly.
    rerun = [tmp_path / "rerun_a.log", tmp_path / "rerun_b.log"]
    wait_all(start_nodes(_free_port(), data, save, rerun), rerun)
    text = "".join(log.read_text() for log in rerun)
    assert f"at step {saved}" in text and "resumed from" in text, text[-3000:]
    _assert_same_run(one_node_reference, save, "checkpoint-2.pt")
    assert [s for s, _, _ in train_losses(save)] == list(range(1, STEPS + 1))
