"""Stage 1 speed and size, side by side in one run on the same episodes.

Prints: the plain TFDS iteration rate (decoded images, step by step, as the original read the data),
the raw read limit (skip-decoding, steps batched), this stage's episodes/s with 1 and 2 workers,
and bytes on disk per step against the original format (every 6-step window stored whole as
decoded 256x320x3 uint8 frames). Targets: conversion >= 0.7x the plain read rate with one worker;
bytes per step <= 1/40 of the original's.

    python benchmarks/bench_convert.py [--data-dir RLDS_DIR] [--episodes 60]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 6


def plain_iteration_rate(rlds_dir: Path, limit: int) -> float:
    from rt1.data.rlds_reader import canonical_read_config, open_builder

    builder = open_builder(rlds_dir)
    start = time.perf_counter()
    episodes = 0
    for episode in builder.as_dataset(
        split=f"train[:{limit}]", shuffle_files=False, read_config=canonical_read_config()
    ):
        for step in episode["steps"]:
            step["observation"]["image"].numpy()
            step["action"]["world_vector"].numpy()
        episodes += 1
    return episodes / (time.perf_counter() - start)


def raw_read_rate(rlds_dir: Path, limit: int) -> float:
    from rt1.data.rlds_reader import open_builder, read_episodes

    builder = open_builder(rlds_dir)
    start = time.perf_counter()
    episodes = sum(1 for _ in read_episodes(builder, 0, limit))
    return episodes / (time.perf_counter() - start)


def _open_builder_in_worker(rlds_dir: Path) -> None:
    from rt1.data.rlds_reader import open_builder, read_episodes

    next(read_episodes(open_builder(rlds_dir), 0, 1))  # TF's first pipeline costs seconds


def worker_startup_seconds(rlds_dir: Path, workers: int) -> float:
    """Time to spawn `workers` processes that import TensorFlow and read a first episode (paid once per run)."""
    import concurrent.futures
    import multiprocessing

    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        list(pool.map(_open_builder_in_worker, [rlds_dir] * workers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, help="an existing RLDS directory (default: build the bundled one)"
    )
    parser.add_argument("--episodes", type=int, default=60, help="episodes to build/use (default 60)")
    parser.add_argument("--episode-sec-len", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from rt1.data.convert import ConvertConfig, convert
    from rt1.data.segment_schema import read_segment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data_dir is None:
            from rt1.sim.mini_fractal import write_dataset

            print(f"building the bundled dataset ({args.episodes} episodes) ...", flush=True)
            rlds_dir = write_dataset(tmp / "rlds", args.episodes, seed=0)
        else:
            rlds_dir = args.data_dir
        n = args.episodes
        raw_read_rate(rlds_dir, min(n, 5))  # warm up TF and the page cache
        plain = plain_iteration_rate(rlds_dir, n)
        raw = raw_read_rate(rlds_dir, n)
        rates = {}
        for workers in (1, 2):
            out = tmp / f"seg{workers}"
            cfg = ConvertConfig(rlds_dir, out, "all", args.episode_sec_len, 0, n, workers)
            summary = convert(cfg, progress=False)
            rates[workers] = summary.episodes_read / summary.seconds
        rerun = convert(
            ConvertConfig(rlds_dir, tmp / "seg1", "all", args.episode_sec_len, 0, n), progress=False
        )
        verify_rate = rerun.episodes_read / rerun.seconds
        startup = worker_startup_seconds(rlds_dir, 2)
        files = sorted(out.glob("*_episode.h5"))
        steps = 0
        original_bytes = 0
        for f in files:
            for e in read_segment(f).episodes:
                steps += e.num_steps
                original_bytes += max(e.num_steps - WINDOW + 1, 0) * WINDOW * 256 * 320 * 3
        ours = sum(f.stat().st_size for f in files) / steps
        original = original_bytes / steps
    print(f"\nepisodes: {n}, steps: {steps}")
    print(f"plain TFDS iteration (decoded, per step): {plain:8.1f} episodes/s")
    print(f"raw read limit (skip-decoding, batched):  {raw:8.1f} episodes/s")
    for workers, rate in rates.items():
        print(
            f"stage 1 with {workers} worker(s):            {rate:8.1f} episodes/s  "
            f"= {rate / plain:.2f}x plain iteration, {rate / raw:.2f}x raw read"
        )
    print(
        f"rerun over finished output (verifies every segment against the source, 1 worker): {verify_rate:8.1f} "
        f"episodes/s = {verify_rate / raw:.2f}x raw read"
    )
    remaining = (
        n / rates[2] - startup
    )  # start-up measured separately: under load it can exceed the run itself
    steady = f"{n / remaining:.1f} episodes/s" if remaining > 0 else "not measurable (start-up dominated)"
    print(
        f"  (2 workers: {startup:.1f} s of that run is spawning the processes and warming up TensorFlow; "
        f"without it {steady}. On 2 cores the reader already uses both, so workers pay off "
        "on machines with more cores and on the full dataset, where start-up is amortised)"
    )
    print(
        f"bytes per step: ours {ours:,.0f}, original format {original:,.0f} "
        f"-> ours is 1/{original / ours:.0f} of the original (target <= 1/40)"
    )
    print(
        f"target conversion >= 0.7x plain read with 1 worker: {'met' if rates[1] >= 0.7 * plain else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
