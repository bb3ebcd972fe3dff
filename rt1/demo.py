"""The whole pipeline on the bundled dataset, as a newcomer would run it stage by stage.

    python -m rt1.demo [--out demo_output] [--episodes N] [--steps N] [--eval-episodes N] [--overwrite]

Each stage runs as its real command line (printed before it runs), so the demo also shows the
commands to use on the real dataset. It ends with closed-loop evaluation: the trained policy acts in
the simulated scene the data was recorded in (`eval_closed_loop.py`), next to the scripted expert and
a no-op policy on the same seeds. Outputs go under --out; their paths are printed at the end.

--out: the demo records what it writes in a manifest (`DEMO_MARKER`, JSON) in its output directory and
deletes only what that manifest lists, whatever the flags: a folder named like a demo output that the
manifest does not list (a user's save/ or plots/) is refused by name, never deleted. A missing or empty
directory is used as is, one with a manifest (an earlier demo's output) is reused, and any other non-empty
directory is refused unless --overwrite is given (the demo's outputs then go next to the files there).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rt1.config import PRESETS
from rt1.errors import EXIT_ERROR, RT1Error, run_cli

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = "demo"  # the tiny model on 32x32 frames, no condition dropout, no shift (rt1/config.py)
DEMO_IMAGE_SIZE = PRESETS[DEMO_PRESET].model.image_size
DEMO_MARKER = ".rt1-demo-output"
# Everything the demo writes under --out; nothing else there is touched.
DEMO_OUTPUTS = (
    "rlds",
    "segments_all",
    "segments_pick",
    "preprocessed",
    "index",
    "save",
    "plots",
    "closed_loop",
)


# The bundled dataset's size (DART-recorded: rt1.sim.record) and the training steps (2 processes x batch 8; the cosine
# schedule spans them): 1200 / 4000 fit the demo in 8.2 min on an idle 2-core machine (issue 34; 800 / 3400 before).
DEMO_EPISODES = 1200
DEMO_VAL_FRACTION = 0.1  # stage 3's validation share of the episodes; the rest train
DEMO_MIN_EPISODES = 20  # below this, stage 3's train/val split can leave val empty
DEMO_STEPS = 4000
DEMO_EVAL_EPISODES = 56  # closed-loop episodes: 8 per task family
DEMO_VIDEOS = 3  # rollout GIFs of the policy
DEMO_REPLAY = 4  # the bundled dataset's first episodes, replayed open loop next to their closed-loop rollouts


class DemoError(RT1Error):
    """The demo cannot start (--out) or a stage failed; the message names which."""


class StageFailed(DemoError):
    exit_code = EXIT_ERROR


def demo_outputs_of(out: Path) -> list[str]:
    """The names the manifest in `out` says the demo wrote ([] without a readable manifest)."""
    try:
        manifest = json.loads((out / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # none, or the text marker of an older demo: it proves nothing about what is there
    listed = manifest.get("outputs") if isinstance(manifest, dict) else None
    return [name for name in listed if name in DEMO_OUTPUTS] if isinstance(listed, list) else []


def prepare_output_dir(out: Path, overwrite: bool = False) -> Path:
    """Check --out and make it ready: remove the demo's own earlier outputs (its manifest's), keep everything else.

    Refuses (DemoError) a path that is a file, that contains this repository, a non-empty directory
    without the demo's manifest unless `overwrite`, and, whatever `overwrite`, any folder or file named like
    a demo output that the manifest does not list. Writes the manifest. Returns the resolved path.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a directory")
    if out == REPO or out in REPO.parents:
        raise DemoError(f"--out {out} contains the repository; choose a directory for the demo's outputs")
    has_manifest = (out / DEMO_MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not has_manifest and not overwrite:
        raise DemoError(
            f"--out {out} is not empty and is not an earlier demo output (no {DEMO_MARKER}); choose "
            "another directory, or pass --overwrite to write the demo's outputs next to the files there "
            "(nothing there is deleted)"
        )
    ours = demo_outputs_of(out) if has_manifest else []
    for name in DEMO_OUTPUTS:
        path = out / name
        if name not in ours and (path.exists() or path.is_symlink()):
            raise DemoError(
                f"--out {path} exists and was not written by the demo (not in {out / DEMO_MARKER}); "
                "the demo writes its outputs under that name and deletes only its own: move it away or "
                "choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    for name in ours:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    # Every output name is free now: the manifest claims them before any stage writes one.
    manifest = {"written_by": "python -m rt1.demo", "outputs": list(DEMO_OUTPUTS)}
    (out / DEMO_MARKER).write_text(json.dumps(manifest) + "\n", encoding="utf-8")
    return out


def _run(title: str, args: list, env: dict | None = None) -> None:
    command = [str(a) for a in args]
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise StageFailed(f"demo: '{title}' failed with exit code {result.returncode}")
    print(f"--- {title}: {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo_output"),
        help="output directory: new, empty or an earlier demo's (default demo_output)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="use a non-empty --out that is not an earlier demo's output: the demo's outputs go next "
        "to the files there, none of which is deleted",
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=DEMO_EPISODES,
        help=f"episodes in the bundled dataset (at least {DEMO_MIN_EPISODES}; default %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help=f"training steps of the {DEMO_PRESET} preset at its own batch size per process (default %(default)s)",
    )
    parser.add_argument("--nproc", type=int, default=2, help="training processes under torchrun (default 2)")
    parser.add_argument(
        "--eval-episodes",
        type=int,
        default=DEMO_EVAL_EPISODES,
        help="closed-loop evaluation episodes of the trained policy (default %(default)s)",
    )
    args = parser.parse_args(argv)
    return run_cli(lambda _: run_demo(args))


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage of the demo writes, under --out."""

    rlds: Path  # the bundled dataset (fractal20220817_data format)
    seg_all: Path  # stage 1's segments, all tasks
    seg_pick: Path  # stage 1's segments, pick-object tasks only
    pre: Path  # stage 2's preprocessed segments
    index: Path  # stage 3's window index CSVs
    save: Path  # the training run's checkpoints and TensorBoard files
    plots: Path  # predicted vs ground-truth actions
    closed_loop: Path  # the closed-loop evaluation's results and GIFs

    @staticmethod
    def under(out: Path) -> DemoPaths:
        return DemoPaths(
            rlds=out / "rlds" / "fractal20220817_data" / "0.1.0",
            seg_all=out / "segments_all",
            seg_pick=out / "segments_pick",
            pre=out / "preprocessed",
            index=out / "index",
            save=out / "save" / f"{PRESETS[DEMO_PRESET].run_name}_demo",
            plots=out / "plots",
            closed_loop=out / "closed_loop",
        )


def run_demo(args: argparse.Namespace) -> int:
    check_demo_args(args)
    out = prepare_output_dir(args.out, args.overwrite)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    paths = DemoPaths.under(out)
    start = time.perf_counter()
    _make_data(paths, out, args.episodes)
    train_index = next(paths.index.glob("train_idx_*.csv"))
    val_index = next(paths.index.glob("val_idx_*.csv"))
    _train(paths, args, train_index, val_index)
    checkpoint = max(paths.save.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    _evaluate(paths, args, checkpoint, val_index)
    print(f"\nDemo finished in {(time.perf_counter() - start) / 60:.1f} min. Outputs:")
    for label, path in [
        ("bundled RLDS dataset", paths.rlds),
        ("segments (all)", paths.seg_all),
        ("segments (pick)", paths.seg_pick),
        ("preprocessed", paths.pre),
        ("index CSVs", paths.index),
        ("checkpoints + TensorBoard", paths.save),
        ("plots + metrics.json", paths.plots),
        ("closed loop: results + GIFs", paths.closed_loop),
    ]:
        print(f"  {label:28s} {path}")
    print(f"  watch training: tensorboard --logdir {paths.save}")
    return 0


def check_demo_args(args: argparse.Namespace) -> None:
    for name in ("episodes", "steps", "nproc", "eval_episodes"):
        if getattr(args, name) < 1:
            raise DemoError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.episodes < DEMO_MIN_EPISODES:
        raise DemoError(
            f"--episodes must be at least {DEMO_MIN_EPISODES}, got {args.episodes} (stage 3 splits the "
            "episodes into train and validation and needs some of each)"
        )


def _make_data(paths: DemoPaths, out: Path, episodes: int) -> None:
    """The bundled dataset, then stages 1 to 3: segments, preprocessed segments, the window index."""
    py = sys.executable
    _run(
        "bundled dataset (fractal20220817_data format, recorded in the simulated scene)",
        [py, "-m", "rt1.sim.mini_fractal", "--out", out / "rlds", "--episodes", episodes, "--seed", 0],
    )
    for title, script, segments in [
        ("stage 1: RLDS -> segment HDF5 (all tasks)", "rt_data_generator_all.py", paths.seg_all),
        (
            "stage 1: RLDS -> segment HDF5 (pick-object tasks only)",
            "rt_data_generator_pick_batch.py",
            paths.seg_pick,
        ),
    ]:
        _run(
            title,
            [py, f"data_preprocessing/{script}", "--data-dir", paths.rlds, "--out-dir", segments]
            + ["--episode-sec-len", 20],
        )
    _run(
        "stage 2: preprocess (resize frames, tokenize actions)",
        [py, "DataPreprocess_batch_all.py", "--in-dir", paths.seg_all, "--out-dir", paths.pre]
        + ["--image-size", DEMO_IMAGE_SIZE, "--workers", 2],
    )
    _run(
        "stage 3: train/val window index",
        [py, "data_emerge.py", "--data-dir", paths.pre, "--out-dir", paths.index]
        + ["--val-fraction", DEMO_VAL_FRACTION, "--seed", 0],
    )


def _train(paths: DemoPaths, args: argparse.Namespace, train_index: Path, val_index: Path) -> None:
    _run(
        f"training: {DEMO_PRESET} preset, {args.nproc} CPU processes under torchrun (gloo)",
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        + ["train_ddp.py", "--preset", DEMO_PRESET, "--data-dir", paths.pre]
        + ["--train-index", train_index, "--val-index", val_index, "--save-dir", paths.save]
        + ["--max-steps", args.steps, "--epochs", 1000, "--num-workers", 1],
        env={"OMP_NUM_THREADS": "1"},
    )


def _evaluate(paths: DemoPaths, args: argparse.Namespace, checkpoint: Path, val_index: Path) -> None:
    """Plots of the trained policy's actions, and its closed-loop evaluation in the simulated scene."""
    py = sys.executable
    _run(
        "plots: predicted vs ground-truth actions on validation episodes",
        [py, "plot_actions.py", "--checkpoint", checkpoint, "--data-dir", paths.pre, "--index", val_index]
        + ["--max-episodes", 3, "--out", paths.plots],
    )
    _run(
        "closed-loop evaluation: the policy acts in the simulated scene (new seeds), next to the baselines",
        [py, "eval_closed_loop.py", "--checkpoint", checkpoint, "--episodes", args.eval_episodes]
        + ["--videos", DEMO_VIDEOS, "--replay", DEMO_REPLAY, "--out", paths.closed_loop],
        env={"OMP_NUM_THREADS": "1"},
    )


if __name__ == "__main__":
    sys.exit(main())
