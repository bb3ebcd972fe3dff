"""Training pieces in-process: config and CLI validation, samplers, checkpoints, LR schedule, import hygiene.

The multi-process behaviour (DDP equivalence, resume, NaN, failures, learnability) is in test_train_ddp.py,
which also uses `tiny_data`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, run_script

from rt1.config import PRESETS, TrainConfig
from rt1.model import RT1, CheckpointError, load_model
from rt1.train import checkpoint as ckpt
from rt1.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rt1.train.cli import build_arg_parser, config_from_args
from rt1.train.loaders import EpochSampler, SeededWindows, ShardSampler, batches_per_epoch, sample_seed
from rt1.train.optim import lr_factor
from rt1.train.runlog import truncate_metrics


@dataclass(frozen=True)
class TinyData:
    data_dir: Path
    train_index: Path
    val_index: Path


@pytest.fixture(scope="session")
def tiny_data(preprocessed_dir, index_dir) -> TinyData:
    """The bundled data preprocessed at the tiny preset's image size and indexed (conftest's session fixtures)."""
    return TinyData(
        preprocessed_dir, next(index_dir.glob("train_idx_*.csv")), next(index_dir.glob("val_idx_*.csv"))
    )


@pytest.fixture
def paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    index = tmp_path / "train_idx_1.csv"
    index.write_text("start_index,file\n0,a.h5\n")
    return {"data_dir": data, "train_index": index}


# ---- TrainConfig and the command line -------------------------------------------------------------


def test_config_defaults_follow_the_original_run(paths):
    cfg = TrainConfig(**paths)
    assert (cfg.optimizer, cfg.lr, cfg.lrf, cfg.weight_decay, cfg.momentum) == ("sgd", 1e-4, 0.1, 1e-3, 0.9)
    assert (cfg.batch_size, cfg.epochs, cfg.sync_bn, cfg.keep_checkpoints) == (8, 100, True, 3)
    assert cfg.save_dir == Path("save/rt1_ddp")
    tiny = TrainConfig(preset="tiny", describe="demo", lr=5e-4, **paths)
    assert tiny.save_dir == Path("save/rt1_tiny_demo")
    assert tiny.optimizer == PRESETS["tiny"].train["optimizer"] and tiny.lr == 5e-4
    assert json.loads(json.dumps(tiny.to_dict()))["data_dir"] == str(paths["data_dir"])


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("lr", -1.0, ["lr", "-1.0"]),
        ("lr", float("nan"), ["lr", "nan"]),
        ("lrf", 1.5, ["lrf", "1.5"]),
        ("epochs", 0, ["epochs", "0"]),
        ("batch_size", 2.5, ["batch_size", "2.5"]),
        ("optimizer", "adam", ["optimizer", "'adam'", "sgd, adamw"]),
        ("amp", "fp8", ["amp", "'fp8'"]),
        ("weight_decay", -0.1, ["weight_decay", "-0.1"]),
        ("max_steps", 0, ["max_steps", "0"]),
        ("cond_drop_prob", 2.0, ["cond_drop_prob", "2.0"]),
        ("preset", "huge", ["preset", "'huge'", "tiny"]),
        ("sync_bn", "yes", ["sync_bn", "'yes'"]),
        (
            "loss_reduction",
            "sum",
            ["loss_reduction", "'sum'", "mean"],
        ),  # checked here once; action_loss trusts it
    ],
)
def test_config_rejects_bad_values_naming_them(paths, field, value, words):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{**paths, field: value})
    for word in words:
        assert word in str(info.value)


def test_the_run_checks_paths(paths, tmp_path):
    """When the run starts (rt1.train.paths.check_paths, called by train() and by train_ddp.py's command line)."""
    from rt1.train.paths import check_paths
    from rt1.train.trainer import train

    with pytest.raises(ValueError, match="data_dir.*missing"):
        check_paths(TrainConfig(**{**paths, "data_dir": tmp_path / "missing"}))
    with pytest.raises(ValueError, match="val_index.*nope.csv"):
        check_paths(TrainConfig(**paths, val_index=tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="resume"):
        check_paths(TrainConfig(**paths, resume=tmp_path / "checkpoint-9.pt"))
    with pytest.raises(ValueError, match="data_dir.*missing"):
        train(TrainConfig(**{**paths, "data_dir": tmp_path / "missing", "save_dir": tmp_path / "save"}))
    assert not (tmp_path / "save").exists()  # refused before anything is written
    missing = tmp_path / "missing"
    bad = run_script(
        "train_ddp.py", "--data-dir", missing, "--train-index", paths["train_index"], check=False
    )
    assert bad.returncode == 2
    assert (
        f"--data-dir must be an existing directory of preprocessed files, got PosixPath('{missing}')"
        in bad.stderr
    )


def test_a_config_builds_with_paths_that_do_not_exist(tmp_path):
    """A TrainConfig checks values, not the filesystem: a notebook, a test or a dry run can build one."""
    cfg = TrainConfig(
        data_dir="nope",
        train_index="nope.csv",
        val_index=tmp_path / "none.csv",
        resume=tmp_path / "checkpoint-9.pt",
        init_from=tmp_path / "model",
    )
    assert (
        cfg.data_dir == Path("nope")
        and cfg.train_index == Path("nope.csv")
        and cfg.val_index.name == "none.csv"
    )


def test_cli_maps_to_config_with_preset_defaults(paths):
    parser = build_arg_parser()
    base = ["--data-dir", str(paths["data_dir"]), "--train-index", str(paths["train_index"])]
    cfg = config_from_args(parser.parse_args(base))
    assert cfg.preset == "original" and cfg.optimizer == "sgd" and cfg.lr == 1e-4 and cfg.sync_bn
    cfg = config_from_args(
        parser.parse_args(
            base
            + [
                "--preset",
                "tiny",
                "--no-syncBN",
                "--optimizer",
                "sgd",
                "--amp",
                "bf16",
                "--max-steps",
                "7",
                "--local-rank=1",
            ]
        )
    )
    assert (cfg.preset, cfg.sync_bn, cfg.optimizer, cfg.amp, cfg.max_steps) == (
        "tiny",
        False,
        "sgd",
        "bf16",
        7,
    )
    assert cfg.lr == PRESETS["tiny"].train["lr"]
    with pytest.raises(ValueError, match="--weight-decay must be a non-negative number, got -1.0"):
        config_from_args(parser.parse_args(base + ["--weight-decay", "-1"]))


def test_cli_overrides_any_model_field_of_the_preset(paths):
    parser = build_arg_parser()
    base = [
        "--data-dir",
        str(paths["data_dir"]),
        "--train-index",
        str(paths["train_index"]),
        "--preset",
        "tiny",
    ]
    cfg = config_from_args(parser.parse_args(base + ["--model.image-size", "128", "--model.depth", "1,1,1"]))
    assert cfg.model_config == PRESETS["tiny"].model.replace(image_size=128, depth=(1, 1, 1))
    assert cfg.to_dict()["model_overrides"] == {
        "image_size": 128,
        "depth": [1, 1, 1],
    }  # weights_only-loadable
    assert config_from_args(parser.parse_args(base)).model_config == PRESETS["tiny"].model
    with pytest.raises(ValueError, match="--model.transformer-depth must be a positive integer, got 0"):
        config_from_args(parser.parse_args(base + ["--model.transformer-depth", "0"]))
    with pytest.raises(ValueError, match="model_overrides"):
        TrainConfig(**paths, model_overrides={"num_bins": 10})


def test_train_ddp_help_and_usage_errors(paths):
    out = run_script("train_ddp.py", "--help").stdout
    for option in (
        "--data-dir",
        "--train-index",
        "--val-index",
        "--save-dir",
        "--epochs",
        "--batch-size",
        "--lr",
        "--lrf",
        "--weight-decay",
        "--optimizer",
        "--syncBN",
        "--no-syncBN",
        "--amp",
        "--compile",
        "--num-workers",
        "--seed",
        "--max-steps",
        "--grad-accum",
        "--log-every",
        "--preset",
        "--resume",
        "--val-every",
        "--cond-drop-prob",
        "--describe",
    ):
        assert option in out, option
    bad = run_script(
        "train_ddp.py",
        "--data-dir",
        paths["data_dir"],
        "--train-index",
        paths["train_index"],
        "--lr",
        "-3",
        check=False,
    )
    assert bad.returncode == 2
    assert "--lr must be a positive number, got -3.0" in bad.stderr


def test_importing_rt1_train_has_no_side_effects():
    code = (
        "import os, sys, warnings, torch, random\n"
        "env, filters, rng, py = dict(os.environ), list(warnings.filters), torch.get_rng_state(), random.getstate()\n"
        "import train_ddp, rt1.train, rt1.train.cli, rt1.train.trainer, rt1.train.distributed\n"
        "assert dict(os.environ) == env, 'environment changed'\n"
        "assert list(warnings.filters) == filters, 'warnings filters changed'\n"
        "assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py, 'RNG touched'\n"
        "assert 'tensorflow' not in sys.modules and 'torch.utils.tensorboard' not in sys.modules\n"
        "import signal; assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# ---- schedule, samplers -----------------------------------------------------------------------------


def test_cosine_schedule_runs_from_one_to_lrf():
    total = 50
    factors = [lr_factor(s, total, SimpleNamespace(lrf=0.1)) for s in range(total)]
    assert factors[0] == 1.0 and math.isclose(factors[-1], 0.1)
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert math.isclose(factors[total // 2], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 49)))
    assert lr_factor(1000, total, SimpleNamespace(lrf=0.1)) == pytest.approx(0.1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_with_batch_b_see_the_batches_of_one_rank_with_batch_2b(shuffle):
    """Why the DDP equivalence test can compare 2 x B against 1 x 2B step by step."""
    from torch.utils.data import DistributedSampler

    n, b = 37, 4
    one = EpochSampler(DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=shuffle, seed=5))
    two = [
        EpochSampler(DistributedSampler(range(n), num_replicas=2, rank=r, shuffle=shuffle, seed=5))
        for r in (0, 1)
    ]
    for epoch in (0, 3):
        one.set_epoch(epoch)
        for s in two:
            s.set_epoch(epoch)
        single = [i for _, i in one]
        ranks = [[i for _, i in s] for s in two]
        # n = 37 is odd: DistributedSampler pads rank 1 with one repeated window (the only difference).
        for step in range(n // (2 * b)):
            together = sorted(ranks[0][step * b : (step + 1) * b] + ranks[1][step * b : (step + 1) * b])
            assert together == sorted(single[step * 2 * b : (step + 1) * 2 * b])
    assert batches_per_epoch(n, 2, b) == math.ceil(math.ceil(n / 2) / b)


def test_epoch_sampler_skips_to_a_position_in_the_epoch():
    from torch.utils.data import DistributedSampler

    s = EpochSampler(DistributedSampler(range(20), num_replicas=1, rank=0, shuffle=True, seed=1))
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, skip=7)
    assert list(s) == full[7:] and len(s) == 13
    assert all(e == 4 for e, _ in full)


def test_shard_sampler_covers_every_index_once():
    n, world = 11, 3
    seen = sorted(i for r in range(world) for i in ShardSampler(n, r, world))
    assert seen == list(range(n))


def test_seeded_windows_are_reproducible_and_leave_the_rng_alone():
    class Noisy:
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededWindows(Noisy(), seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = ds[(1, 5)], ds[(1, 5)], ds[(2, 5)]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
    assert sample_seed(3, 1, 5) != sample_seed(3, 5, 1)


# ---- checkpoints ------------------------------------------------------------------------------------


def _state(model, epoch=1):
    return {
        "format": ckpt.CHECKPOINT_FORMAT,
        "format_version": ckpt.CHECKPOINT_FORMAT_VERSION,
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "train_args": {"lr": 1e-3},
        "epoch": epoch,
        "rng": [ckpt.capture_rng_state()],
    }


def test_checkpoints_are_atomic_pruned_and_weights_only_loadable(tmp_path):
    model = RT1(PRESETS["tiny"].model)
    for epoch in range(1, 6):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, epoch), _state(model, epoch))
        ckpt.prune_checkpoints(tmp_path, 3)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    assert latest_checkpoint(tmp_path).name == "checkpoint-5.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-3.pt",
        "checkpoint-4.pt",
        "checkpoint-5.pt",
    ]
    torch.load(tmp_path / "checkpoint-5.pt", weights_only=True)  # plain types and tensors only
    loaded, config, args = load_model(tmp_path / "checkpoint-5.pt", "cpu")
    assert config == PRESETS["tiny"].model and args == {"lr": 1e-3} and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_failed_write_leaves_no_file_and_stale_temporaries_are_removed(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_checkpoint(tmp_path / "checkpoint-1.pt", {"x": Unpicklable()})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "checkpoint-2.pt.partial-123").write_bytes(b"half")
    assert ckpt.list_checkpoints(tmp_path) == []
    assert [p.name for p in ckpt.remove_stale_temporaries(tmp_path)] == ["checkpoint-2.pt.partial-123"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "checkpoint-1.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint-1.pt"):
        load_checkpoint(bad)
    torch.save({"format": "other"}, bad)
    with pytest.raises(CheckpointError, match="not an rt1 training checkpoint"):
        load_checkpoint(bad)


def test_rng_state_round_trips():
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_metrics_truncation_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"event": "train", "step": s, "loss": 1.0} for s in range(1, 6)] + [{"event": "stop", "step": 3}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "train", "st')
    truncate_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
