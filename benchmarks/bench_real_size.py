"""Disk and time of each stage on the real dataset, measured on frames of the real size and extrapolated.

    python benchmarks/bench_real_size.py [--episodes 24] [--workers 1 8 32] [--quick]

Stage 1 and stage 2 are measured on RLDS data whose frames are the real size: the bundled dataset
(rt1.sim.mini_fractal) is written, then its TFRecords are rewritten with every frame replaced by a
textured 256x320 JPEG of ~28-29 KB (tests/synthetic_segments.textured_frame at quality 95: 1/f noise
plus grain, calibrated to the real dataset's mean of 111 GiB of TFRecords for 3.79 M steps; flat frames
compress far better and would flatter both time and disk). Each stage runs in one process, and its rate
is given per CPU-second of that process (user + system, TensorFlow's threads included), which other load
on a shared machine changes much less than wall time. The extrapolation to the full dataset
(87,212 episodes, 3,786,400 steps) assumes N workers on N otherwise idle cores and a disk that keeps up.

Checkpoint sizes per preset: parameters and buffers of the model plus the optimizer state the preset
trains with (SGD momentum: one buffer per parameter; AdamW: two), float32; the tiny preset's figure is
also checked against a real torch.save of such a checkpoint.

Prints the figures the README's "Training on the real dataset" section quotes.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

REAL_EPISODES = 87_212
REAL_STEPS = 3_786_400
IMAGE_KEY = "steps/observation/image"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def real_size_rlds(out: Path, episodes: int, distinct_frames: int) -> tuple[Path, float]:
    """The bundled dataset with every frame replaced by a real-size textured JPEG; -> (dir, mean JPEG bytes)."""
    import tensorflow as tf
    from synthetic_segments import jpeg_bytes, textured_frame

    from rt1.sim.mini_fractal import write_dataset

    rlds = write_dataset(out, episodes, seed=0)
    rng = np.random.default_rng(0)
    pool = [jpeg_bytes(textured_frame(rng)) for _ in range(distinct_frames)]
    k = 0
    for shard in sorted(rlds.glob("*.tfrecord-*")):
        records = []
        for raw in tf.data.TFRecordDataset(str(shard)):
            example = tf.train.Example.FromString(raw.numpy())
            frames = example.features.feature[IMAGE_KEY].bytes_list.value
            for i in range(len(frames)):
                frames[i] = pool[k % len(pool)]
                k += 1
            records.append(example.SerializeToString())
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for record in records:
                writer.write(record)
    return rlds, float(np.mean([len(p) for p in pool]))


def checkpoint_sizes() -> dict[str, dict]:
    import torch

    from rt1.config import PRESETS
    from rt1.model import RT1

    out = {}
    for name, preset in PRESETS.items():
        torch.manual_seed(0)
        model = RT1(preset.model)
        params = sum(p.numel() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        states = 1 if preset.train["optimizer"] == "sgd" else 2
        size = 4 * params + buffers + 4 * params * states
        out[name] = {"params": params, "optimizer": preset.train["optimizer"], "bytes": size}
        if name == "tiny":  # check the formula against a real checkpoint-like save
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            model(
                torch.zeros(
                    1,
                    preset.model.num_frames,
                    preset.model.image_size,
                    preset.model.image_size,
                    3,
                    dtype=torch.uint8,
                ),
                torch.zeros(1, preset.model.text_embed_dim),
            ).float().mean().backward()
            optimizer.step()
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
            out[name]["measured_bytes"] = buffer.tell()
        del model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=24, help="episodes of real-size frames to measure on")
    parser.add_argument("--distinct-frames", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 8, 32], help="worker counts to extrapolate to"
    )
    parser.add_argument("--image-size", type=int, default=224, help="stage 2 output size (default 224)")
    parser.add_argument(
        "--quick", action="store_true", help="a few episodes, no checkpoint sizes (for tests)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if args.quick:
        args.episodes, args.distinct_frames = min(args.episodes, 4), 8

    from rt1.data.convert import ConvertConfig, convert
    from rt1.data.preprocess import preprocess_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"writing {args.episodes} episodes of real-size frames ...", flush=True)
        rlds, jpeg = real_size_rlds(tmp / "rlds", args.episodes, args.distinct_frames)
        tfrecord_bytes = sum(p.stat().st_size for p in rlds.glob("*.tfrecord-*"))

        cpu, wall = cpu_seconds(), time.perf_counter()
        summary = convert(ConvertConfig(rlds, tmp / "seg", "all", 10), progress=False)
        s1_cpu, s1_wall = cpu_seconds() - cpu, time.perf_counter() - wall
        steps = summary.steps
        seg_bytes = sum(p.stat().st_size for p in (tmp / "seg").glob("*.h5"))

        cpu, wall = cpu_seconds(), time.perf_counter()
        preprocess_dir(tmp / "seg", tmp / "pre", image_size=args.image_size, workers=1, progress=False)
        s2_cpu, s2_wall = cpu_seconds() - cpu, time.perf_counter() - wall
        pre_bytes = sum(p.stat().st_size for p in (tmp / "pre").glob("*.h5"))

    print(
        f"\n{args.episodes} episodes, {steps} steps; frames: 256x320 JPEG, mean {jpeg / 1024:.1f} KiB "
        f"(TFRecords: {tfrecord_bytes / steps / 1024:.1f} KiB per step)"
    )
    rows = [
        ("stage 1 (RLDS -> segments)", steps / s1_cpu, steps / s1_wall, seg_bytes / steps),
        (
            f"stage 2 (segments -> {args.image_size}x{args.image_size} JPEG q90)",
            steps / s2_cpu,
            steps / s2_wall,
            pre_bytes / steps,
        ),
    ]
    for name, per_cpu, per_wall, per_step in rows:
        print(
            f"{name}: {per_cpu:,.0f} steps per CPU-second ({per_wall:,.0f} steps/s wall here), "
            f"{per_step / 1024:.1f} KiB per step"
        )
    print(
        f"\nfull dataset: {REAL_EPISODES:,} episodes, {REAL_STEPS:,} steps "
        f"(RLDS download: {REAL_STEPS * tfrecord_bytes / steps / 2**30:,.0f} GiB at this frame size; the real one is 111 GiB)"
    )
    for name, per_cpu, _, per_step in rows:
        hours = "  ".join(f"{n} worker(s): {REAL_STEPS / (per_cpu * n) / 3600:6.2f} h" for n in args.workers)
        print(f"{name}: output {REAL_STEPS * per_step / 2**30:,.0f} GiB; {hours}")
    if args.quick:
        return
    print("\ncheckpoint size per preset (model + optimizer state, float32):")
    for name, c in checkpoint_sizes().items():
        measured = f"; measured {c['measured_bytes'] / 2**20:.1f} MiB" if "measured_bytes" in c else ""
        print(
            f"  {name:9s} {c['params'] / 1e6:8.2f} M parameters, {c['optimizer']}: {c['bytes'] / 2**30:.2f} GiB "
            f"({c['bytes'] / 2**20:,.1f} MiB){measured}"
        )


if __name__ == "__main__":
    main()
