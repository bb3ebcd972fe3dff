"""The whole pipeline on the bundled dataset, as a newcomer would run it stage by stage.

    python -m rt1.demo [--out demo_output] [--episodes 160] [--steps 600]

Each stage runs as its real command line (printed before it runs), so the demo also shows the
commands to use on the real dataset. Outputs go under --out; their paths are printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rt1.config import PRESETS

REPO = Path(__file__).resolve().parent.parent
TINY_IMAGE_SIZE = PRESETS["tiny"].model.image_size


def _run(title: str, args: list, env: dict | None = None) -> None:
    command = [str(a) for a in args]
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"demo: '{title}' failed with exit code {result.returncode}")
    print(f"--- {title}: {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output directory (replaced)")
    parser.add_argument("--episodes", type=int, default=160, help="episodes in the bundled dataset (default 160)")
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps of the tiny preset at its own batch size (default 300)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes under torchrun (default 2)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    py = sys.executable
    rlds = out / "rlds" / "fractal20220817_data" / "0.1.0"
    seg_all, seg_pick = out / "segments_all", out / "segments_pick"
    pre = out / "preprocessed"
    index = out / "index"
    save = out / "save" / "rt1_tiny_demo"
    plots = out / "plots"
    start = time.perf_counter()

    _run("bundled dataset (fractal20220817_data format)",
         [py, "-m", "rt1.data.mini_fractal", "--out", out / "rlds", "--episodes", args.episodes, "--seed", 0])
    _run("stage 1: RLDS -> segment HDF5 (all tasks)",
         [py, "data_preprocessing/rt_data_generator_all.py", "--data-dir", rlds, "--out-dir", seg_all,
          "--episode-sec-len", 20])
    _run("stage 1: RLDS -> segment HDF5 (pick-object tasks only)",
         [py, "data_preprocessing/rt_data_generator_pick_batch.py", "--data-dir", rlds, "--out-dir", seg_pick,
          "--episode-sec-len", 20])
    _run("stage 2: preprocess (resize frames, tokenize actions)",
         [py, "DataPreprocess_batch_all.py", "--in-dir", seg_all, "--out-dir", pre,
          "--image-size", TINY_IMAGE_SIZE, "--workers", 2])
    _run("stage 3: train/val window index",
         [py, "data_emerge.py", "--data-dir", pre, "--out-dir", index, "--val-fraction", 0.2, "--seed", 0])
    train_index = next(index.glob("train_idx_*.csv"))
    val_index = next(index.glob("val_idx_*.csv"))
    _run(f"training: tiny preset, {args.nproc} CPU processes under torchrun (gloo)",
         [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "train_ddp.py",
          "--preset", "tiny", "--data-dir", pre, "--train-index", train_index, "--val-index", val_index,
          "--save-dir", save, "--max-steps", args.steps, "--epochs", 1000, "--num-workers", 1],
         env={"OMP_NUM_THREADS": "1"})
    checkpoint = max(save.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    _run("plots: predicted vs ground-truth actions on validation episodes",
         [py, "plot_actions.py", "--checkpoint", checkpoint, "--data-dir", pre, "--index", val_index,
          "--max-episodes", 3, "--out", plots])

    print(f"\nDemo finished in {(time.perf_counter() - start) / 60:.1f} min. Outputs:")
    for label, path in [("bundled RLDS dataset", rlds), ("segments (all)", seg_all), ("segments (pick)", seg_pick),
                        ("preprocessed", pre), ("index CSVs", index), ("checkpoints + TensorBoard", save),
                        ("plots + metrics.json", plots)]:
        print(f"  {label:28s} {path}")
    print(f"  watch training: tensorboard --logdir {save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
