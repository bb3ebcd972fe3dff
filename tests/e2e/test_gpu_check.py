"""benchmarks/gpu_check.py: the quick mode runs in `make test` (CPU, gloo) with TensorFlow made unimportable, its
report says what passed and what was skipped and why, and a failed check is one line naming it (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def no_tensorflow_env(tmp_path: Path) -> dict:
    """A PYTHONPATH whose `tensorflow` (and `tensorflow_datasets`) raise ImportError on import."""
    poison = tmp_path / "no_tf"
    for name in ("tensorflow", "tensorflow_datasets"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed on this machine')\n"
        )
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(poison), *filter(None, [os.environ.get("PYTHONPATH")])])}
    probe = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "not installed on this machine" in probe.stderr, (
        "the poison does not work"
    )
    return env


@pytest.mark.slow
def test_quick_mode_passes_on_cpu_without_tensorflow_and_reports_every_check(tmp_path):
    out = tmp_path / "report"
    # A budget well above the quick mode's 115 s, so that a loaded test machine does not turn checks into skips.
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(out), "--budget-s", "300"],
        cwd=REPO,
        env=no_tensorflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "gpu_check: passed" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["status"] == "passed" and report["mode"] == "quick" and report["first_failure"] is None
    assert not [c for c in checks.values() if c["status"] == "failed"]
    assert report["seconds"] < 300, report["seconds"]
    assert not [c for c in checks.values() if "budget ran out" in c["detail"]]

    # Training through torchrun (2 CPU processes, gloo): every mode the CPU runs, the resume bit for bit.
    fp32 = checks["train fp32 (2 x cpu, gloo)"]
    assert fp32["status"] == "passed" and fp32["resume"]["bitwise_equal"], fp32
    assert 0 < fp32["resume"]["resumed_from_step"] < fp32["steps"]
    assert fp32["loss_last"] < fp32["loss_first"]
    for mode in ("bf16", "fp16"):
        entry = checks[f"train {mode} (2 x cpu, gloo)"]
        assert entry["status"] == "passed" and f"--amp {mode}" in entry["command"], entry
    assert checks["train compile (2 x cpu, gloo)"]["status"] == "skipped"
    assert "torch.compile" in checks["train compile (2 x cpu, gloo)"]["detail"]

    # Measurements: both full-size presets, with and without checkpointing; the reference skipped with its reason
    # when it is not importable; a skip is a skip, never a pass.
    rows = report["measurements"]["training"]
    assert {
        (r["preset"], r["activation_checkpointing"], r["chunk_windows"]) for r in rows if r["model"] == "ours"
    } >= {("original", False, 1), ("original", False, 6), ("original", True, 1)}  # K = 1 and 6 side by side
    assert all(r["windows_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows)
    reference = checks["measure original reference"]
    assert reference["status"] in ("passed", "skipped")
    if reference["status"] == "skipped":
        assert "robotic-transformer-pytorch" in reference["detail"] or "reference" in reference["detail"]
    for c in checks.values():
        assert c["status"] in ("passed", "skipped") and c["detail"], c
    assert (
        report["measurements"]["loader"] and 0 <= report["measurements"]["loader"][0]["data_wait_share"] < 1
    )
    policy = report["measurements"]["policy"]
    assert policy and 0 < policy[0]["median_ms"] <= policy[0]["p99_ms"]

    table = (out / "gpu_check.md").read_text()
    assert "| train fp32 (2 x cpu, gloo) | passed |" in table and "| preset | model |" in table
    assert "not GPU figures" in table


def test_a_failed_check_is_one_line_naming_it_and_exit_1(tmp_path, monkeypatch, capsys):
    """The verdict logic with the work replaced: the first failed check is named, later ones still run and the
    report is written with the failure in it."""
    from rt1.gpu_check.cli import GpuCheck, GpuCheckConfig

    check = GpuCheck(GpuCheckConfig(tmp_path, quick=True, device="cpu"))
    monkeypatch.setattr(check, "make_data", lambda: check.add("dataset", "passed", "written"))

    def training(modes):
        if modes != ("compile",):
            check.add("train fp32", "failed", "the loss did not fall")
            check.add("train bf16", "failed", "exit 1")

    monkeypatch.setattr(check, "training", training)
    monkeypatch.setattr(
        check,
        "measure_training",
        lambda: check.add("measure original reference", "skipped", "not importable"),
    )
    monkeypatch.setattr(check, "measure_loader", lambda: None)
    monkeypatch.setattr(check, "measure_policy", lambda: check.add("policy", "passed", "1 ms"))
    assert check.run() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_check: FAILED: train fp32: the loss did not fall"]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "failed" and report["first_failure"] == "train fp32"
    assert [c["name"] for c in report["checks"]] == [
        "dataset",
        "train fp32",
        "train bf16",
        "measure original reference",
        "policy",
    ]


def test_bad_arguments_are_one_line_errors(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(busy)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"gpu_check: error: --out {busy} must be a new or empty directory"
    ), proc.stderr
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run(
            [sys.executable, "benchmarks/gpu_check.py", "--device", "cuda", "--out", str(tmp_path / "new")],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("gpu_check: error: --device cuda was asked for"), proc.stderr


@pytest.mark.parametrize(
    "losses,message",
    [
        ([5.0, 5.0, 5.0, 5.0, 5.0], "the loss did not fall"),
        ([5.0, 4.0, float("nan"), 3.0, 2.0], "non-finite loss at step 3"),
        ([5.0, 4.0, 3.0], "are not 1..5"),
    ],
)
def test_a_run_whose_loss_is_flat_non_finite_or_short_fails_its_check(tmp_path, losses, message):
    from rt1.gpu_check.runs import CheckFailed, check_run

    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"event": "train", "step": i + 1, "loss": loss}) + "\n"
            for i, loss in enumerate(losses)
        )
    )
    with pytest.raises(CheckFailed, match=message):
        check_run("fp32", tmp_path, 5)
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"event": "train", "step": i + 1, "loss": 5.0 - i}) + "\n" for i in range(5))
    )
    with pytest.raises(
        CheckFailed, match="no checkpoint written"
    ):  # a falling loss still needs its checkpoint
        check_run("fp32", tmp_path, 5)
