"""Shared by the training benchmarks: run a pipeline command, and build the bundled dataset through stages 1-3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list, env: dict | None = None, *, label: str) -> None:
    """Run a command in the repository; exit with its stderr tail if it fails."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"{label}: {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )


def build_bundled_data(
    work: Path, episodes: int, *, image_size: int, episodes_per_segment: int, val_fraction: float, label: str
) -> tuple[Path, Path]:
    """The bundled dataset through stages 1-3 with the demo's commands -> (preprocessed dir, train index CSV)."""
    py, env = sys.executable, {"TF_CPP_MIN_LOG_LEVEL": "2"}
    run(
        [py, "-m", "rt1.sim.mini_fractal", "--out", work / "rlds", "--episodes", episodes, "--seed", 0],
        env,
        label=label,
    )
    run(
        [
            py,
            "data_preprocessing/rt_data_generator_all.py",
            "--data-dir",
            work / "rlds/fractal20220817_data/0.1.0",
            "--out-dir",
            work / "segments",
            "--episode-sec-len",
            episodes_per_segment,
            "--no-progress",
        ],
        env,
        label=label,
    )
    run(
        [
            py,
            "DataPreprocess_batch_all.py",
            "--in-dir",
            work / "segments",
            "--out-dir",
            work / "pre",
            "--image-size",
            image_size,
            "--no-progress",
        ],
        env,
        label=label,
    )
    run(
        [
            py,
            "data_emerge.py",
            "--data-dir",
            work / "pre",
            "--out-dir",
            work / "index",
            "--val-fraction",
            val_fraction,
        ],
        label=label,
    )
    return work / "pre", next((work / "index").glob("train_idx_*.csv"))
