"""Shared fixtures: the bundled fractal-format dataset and its stage-1 segments, built once per session.

Tests live by package: tests/{data,model,train,evaluation,serve}/ run in process, tests/e2e/ runs the scripts
as subprocesses (torchrun, the demo, multi-node, faults; `make test-fast` leaves it out), and tests/ itself holds
the checks of the repository (architecture, lint, docs). Test modules share helpers and fixtures by importing one
another by name (`from test_train import tiny_data`), so every one of those folders is on the import path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rt1.config import PRESETS

REPO = Path(__file__).resolve().parent.parent
TEST_PACKAGES = ("data", "model", "train", "evaluation", "serve", "e2e")
sys.path[:0] = [str(REPO / "tests" / package) for package in TEST_PACKAGES]
# Shaped like the real dataset where readers can tell: 3 uneven shards of 43-44 episodes, above TFDS's
# interleave block of 16 episodes (with at most 16 per shard, out-of-order reads go unnoticed).
BUNDLED_EPISODES = 130
BUNDLED_SHARDS = 3
BUNDLED_SEED = 0
SEGMENT_LEN = 10

# TensorFlow's C++ logging and oneDNN notices only add noise to test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def run_script(*args, check=True, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """Run a repo script or module with the test interpreter; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def rlds_dir(tmp_path_factory) -> Path:
    """The bundled dataset: TFDS directory .../fractal20220817_data/0.1.0."""
    from rt1.sim.mini_fractal import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("rlds"), episodes=BUNDLED_EPISODES, seed=BUNDLED_SEED, shards=BUNDLED_SHARDS
    )


@pytest.fixture(scope="session")
def segment_dir(rlds_dir, tmp_path_factory) -> Path:
    """Stage-1 output (all tasks) of the bundled dataset, SEGMENT_LEN episodes per file."""
    from rt1.data.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("segments")
    convert(ConvertConfig(rlds_dir, out, "all", episodes_per_segment=SEGMENT_LEN), progress=False)
    return out


def flatten_dict(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": x}} -> {"a/b": x}: nested RLDS dicts as flat paths."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def h5_contents(path: Path) -> dict:
    """Every attribute and dataset of an HDF5 file as plain Python/numpy values, for equality checks."""
    import h5py
    import numpy as np

    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = np.asarray(value).tolist()
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if data.dtype == object:
                    data = [
                        bytes(x) if isinstance(x, (bytes, np.ndarray)) and not isinstance(x, str) else x
                        for x in (d.tobytes() if isinstance(d, np.ndarray) else d for d in data)
                    ]
                    out[name] = data
                else:
                    out[name] = (data.dtype.str, data.shape, data.tobytes())

        visit("/", f)
        f.visititems(visit)
    return out


TINY_IMAGE_SIZE = PRESETS["tiny"].model.image_size


@pytest.fixture(scope="session")
def preprocessed_dir(segment_dir, tmp_path_factory) -> Path:
    """Stage-2 output of the bundled segments at the tiny preset's image size."""
    from rt1.data.preprocess import preprocess_dir

    out = tmp_path_factory.mktemp("preprocessed")
    preprocess_dir(segment_dir, out, image_size=TINY_IMAGE_SIZE, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def index_dir(preprocessed_dir, tmp_path_factory) -> Path:
    """Stage-3 train/val index of the preprocessed bundled data (seed 0, 20% validation)."""
    from rt1.data.index import build_index

    out = tmp_path_factory.mktemp("index")
    build_index(preprocessed_dir, out, val_fraction=0.2, seed=0)
    return out


@pytest.fixture
def one_thread():
    """torch on one thread for the test (closed-loop rollouts and tiny training: faster, and repeatable)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
