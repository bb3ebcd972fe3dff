"""Validation loss against windows seen for --chunk-windows K = 1, 6, 16: the tiny preset on the bundled data.

    python benchmarks/chunk_validation.py [--episodes 60] [--epochs 6] [--ks 1,6,16] [--out docs/chunk_windows.png]

Builds the bundled dataset at 64x64 through stages 1-3 (20% of the episodes for validation), trains
`train_ddp.py --preset tiny` once per K (1 process, 1 thread, seed 0, the same data and schedule: --batch-size
counts windows, so every K takes the same steps), validating after every epoch, and plots each run's
validation loss against the windows it has trained on (metrics.jsonl). The runs are independent processes,
started together (the loss does not depend on the timing); each run's wall time is printed but is not a
throughput figure (see bench_train.py --chunks). Prints each run's curve and the last loss relative to K = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundled_data import build_bundled_data  # noqa: E402

from rt1.config import PRESETS  # noqa: E402
from rt1.train.runlog import read_metrics  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ks", default="1,6,16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "chunk_windows.png")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory(prefix="chunk_validation_") as tmp:
        work = Path(tmp)
        data_dir, train_index = build_bundled_data(
            work,
            args.episodes,
            image_size=PRESETS["tiny"].model.image_size,
            episodes_per_segment=10,
            val_fraction=0.2,
            label="chunk_validation",
        )
        val_index = next(train_index.parent.glob("val_idx_*.csv"))
        procs, started = {}, time.perf_counter()
        for k in ks:
            cmd = [sys.executable, "train_ddp.py", "--preset", "tiny", "--data-dir", data_dir]
            cmd += ["--train-index", train_index, "--val-index", val_index, "--save-dir", work / f"k{k}"]
            cmd += ["--epochs", args.epochs, "--batch-size", args.batch_size, "--chunk-windows", k]
            cmd += ["--num-workers", 1, "--no-progress", "--no-tensorboard", "--seed", 0]
            log = open(work / f"k{k}.log", "w")
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs[k] = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stderr=log, stdout=log, env=env)
        curves = {}
        for k, proc in procs.items():
            if proc.wait() != 0:
                print((work / f"k{k}.log").read_text()[-3000:])
                return 1
            metrics = read_metrics(work / f"k{k}" / "metrics.jsonl")
            curves[k] = [
                (m["step"] * args.batch_size, m["loss"], m["token_accuracy"])
                for m in metrics
                if m["event"] == "val"
            ]
            print(f"K={k}: done after {time.perf_counter() - started:.0f} s")
    for k, curve in curves.items():
        points = ", ".join(f"{w}: {loss:.4f} ({100 * acc:.1f}%)" for w, loss, acc in curve)
        print(f"K={k:>2} validation loss (token accuracy) after windows: {points}")
        print(f"K={k:>2} last loss / K=1's: {curve[-1][1] / curves[ks[0]][-1][1]:.3f}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for k, curve in curves.items():
        ax.plot(
            [w for w, _, _ in curve], [loss for _, loss, _ in curve], marker="o", label=f"--chunk-windows {k}"
        )
    ax.set_xlabel("training windows seen")
    ax.set_ylabel("validation loss (mean per token)")
    ax.set_title(f"tiny preset, bundled data ({args.episodes} episodes), batch {args.batch_size}, seed 0")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    print("RESULTS " + json.dumps({str(k): c for k, c in curves.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
