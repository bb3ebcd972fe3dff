"""Converting a checkpoint in rt1main's exact layout: time and peak memory against the targets (60 s, 2 GB).

    python benchmarks/bench_convert_google.py [--index PATH/ckpt-424760.index] [--keep DIR]

Builds a TF checkpoint with every entry of rt1main's real index (google-research/robotics_transformer,
trained_checkpoints/rt1main/ckpt-424760.index: the 732 network tensors, the Adam slots, the optimizer's
iterations and learning rate, global_step, save_counter) with random values, then runs
`python -m rt1.model.convert_google` on it in a child process and reports its wall time and peak RSS, and
checks that every network value was carried over once (count, and per tensor the sum and sum of squares).
The index comes from --index, else from the repository snapshot's git directory (RT1_GOOGLE_REPO, default
/work/.mirror/google-research+robotics_transformer/repo); it is copied to a temporary directory (the
snapshot is read-only) and never committed here.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SNAPSHOT = Path(os.environ.get("RT1_GOOGLE_REPO", "/work/.mirror/google-research+robotics_transformer/repo"))
INDEX_IN_REPO = "trained_checkpoints/rt1main/ckpt-424760.index"
TARGET_SECONDS, TARGET_BYTES = 60.0, 2 * 10**9


def fetch_index(index: Path | None, work: Path) -> Path:
    """The real index copied to WORK/ckpt-424760.index; -> the prefix WORK/ckpt-424760."""
    target = work / "ckpt-424760.index"
    if index is not None:
        target.write_bytes(Path(index).read_bytes())
    else:
        blob = subprocess.run(
            ["git", f"--git-dir={SNAPSHOT}", "show", f"HEAD:{INDEX_IN_REPO}"], capture_output=True, check=True
        ).stdout
        target.write_bytes(blob)
    return target.with_suffix("")


def build_checkpoint(index_prefix: Path, out_prefix: Path) -> dict[str, tuple[float, float]]:
    """Random values for every entry of the index -> {network tensor name: (sum, sum of squares)}."""
    import tensorflow as tf

    from rt1.model.google.convert_google import VARIABLE_SUFFIX

    reader = tf.train.load_checkpoint(str(index_prefix))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    names = sorted(n for n in shapes if n != "_CHECKPOINTABLE_OBJECT_GRAPH")
    rng = np.random.default_rng(0)
    values, stats = [], {}
    for name in names:
        dtype = dtypes[name].as_numpy_dtype
        if np.issubdtype(dtype, np.integer):
            value = np.full(shapes[name], 3, dtype)
        else:
            value = np.abs(rng.standard_normal(shapes[name], dtype=np.float32)).astype(dtype)
        values.append(tf.constant(value))
        if name.startswith("agent/_actor_network/"):
            v = value.astype(np.float64)
            stats[name.removesuffix(VARIABLE_SUFFIX)] = (float(v.sum()), float((v * v).sum()))
    tf.raw_ops.SaveV2(
        prefix=str(out_prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values
    )
    print(f"built {out_prefix} with {len(names)} entries ({len(stats)} network tensors)")
    return stats


def check_values(out: Path, prefix_stats: dict[str, tuple[float, float]]) -> int:
    """Every network value carried over once: per tensor the same sum and sum of squares; -> values checked."""
    import torch
    from safetensors.numpy import load_file

    from rt1.model import build_model
    from rt1.model.google.checkpoint_layout import checkpoint_layout
    from rt1.model.pretrained import read_pretrained_config
    from rt1.model_families import model_config_from_dict

    config = read_pretrained_config(out)
    with torch.device("meta"):
        model = build_model(model_config_from_dict(config["model_config"]))
    tensors = load_file(out / "model.safetensors")
    layout = checkpoint_layout(model)
    assert set(layout) == set(prefix_stats), "the layout and the checkpoint's network tensors differ"
    assert sorted(slot.key for slot in layout.values()) == sorted(tensors)
    for key, slot in layout.items():
        v = tensors[slot.key].astype(np.float64)
        total, squares = prefix_stats[key]
        assert np.isclose(v.sum(), total, rtol=1e-6) and np.isclose((v * v).sum(), squares, rtol=1e-6), key
    return sum(t.size for t in tensors.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="rt1main's ckpt-424760.index (default: from the snapshot)")
    parser.add_argument("--keep", type=Path, help="keep the built checkpoint and the output here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_convert_google_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "index").mkdir(exist_ok=True)
        index_prefix = fetch_index(args.index, work / "index")
        prefix = work / "rt1main_layout" / "ckpt-424760"
        prefix.parent.mkdir(exist_ok=True)
        stats = build_checkpoint(index_prefix, prefix)
        out = work / "converted"
        command = [
            sys.executable,
            "-m",
            "rt1.model.convert_google",
            "--checkpoint",
            str(prefix),
            "--out",
            str(out),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = (
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        )  # the largest child: the converter
        print(done.stdout.strip())
        if done.returncode != 0:
            print(done.stderr.strip()[-2000:])
            return 1
        values = check_values(out, stats)
        size = sum(p.stat().st_size for p in (prefix.parent).iterdir())
        print(f"input: {size / 2**20:.0f} MiB checkpoint; output: {values:,} values, each checked once")
        print(
            f"conversion: {seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s), peak RSS {peak / 1e9:.2f} GB "
            f"(target <= {TARGET_BYTES / 1e9:.0f} GB)"
        )
        ok = seconds <= TARGET_SECONDS and peak <= TARGET_BYTES
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
