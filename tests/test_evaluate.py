"""plot_actions.py: plots and metrics of a trained checkpoint, checked against an independent computation."""

import json
import math

import numpy as np
import pytest
from conftest import REPO, run_script

from rt1.actions import ACTION_DIM_NAMES, NUM_BINS, TOKEN_HIGH, TOKEN_LOW
from rt1.data.index import index_episodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_checkpoint(preprocessed_dir, index_dir, tmp_path_factory):
    from rt1.config import TrainConfig
    from rt1.train.checkpoint import latest_checkpoint
    from rt1.train.trainer import train

    save = tmp_path_factory.mktemp("save")
    cfg = TrainConfig(preset="tiny", data_dir=preprocessed_dir, train_index=next(index_dir.glob("train_idx_*.csv")),
                                 val_index=None, save_dir=save, epochs=1, max_steps=20, num_workers=0,
                                 progress=False, tensorboard=False)
    train(cfg)
    return latest_checkpoint(save)


def _val_index(index_dir):
    return next(index_dir.glob("val_idx_*.csv"))


def test_writes_one_png_per_episode_and_metrics_equal_an_independent_computation(
        tiny_checkpoint, preprocessed_dir, index_dir, tmp_path):
    val = _val_index(index_dir)
    episodes = index_episodes(val)[:2]
    args = ["--checkpoint", tiny_checkpoint, "--data-dir", preprocessed_dir, "--index", val, "--out", tmp_path]
    for e in episodes:
        args += ["--episode", e.source_index]
    run_script(REPO / "plot_actions.py", *args)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"episode_{e.source_index}.png" for e in episodes)
    result = json.loads((tmp_path / "metrics.json").read_text())
    predictions = np.load(tmp_path / "predictions.npz")
    assert sorted(result["episodes"]) == sorted(str(e.source_index) for e in episodes)

    # Independent computation straight from the tokenizer formula.
    total_steps, total_correct, total_abs, total_term = 0, np.zeros(11), np.zeros(10), 0
    for e in episodes:
        pred = predictions[f"episode_{e.source_index}/pred_tokens"].astype(int)
        true = predictions[f"episode_{e.source_index}/true_tokens"].astype(int)
        actions = predictions[f"episode_{e.source_index}/true_actions"]
        assert pred.shape == true.shape == (e.num_steps, 11)
        values = pred[:, :10] / (NUM_BINS - 1) * (TOKEN_HIGH - TOKEN_LOW) + TOKEN_LOW
        abs_err = np.abs(values - actions[:, :10]).sum(axis=0)
        term_ok = int((np.clip(pred[:, 10], 0, 2) == actions[:, 10]).sum())
        correct = (pred == true).sum(axis=0)
        got = result["episodes"][str(e.source_index)]
        assert got["steps"] == e.num_steps
        assert math.isclose(got["token_accuracy"], correct.sum() / (11 * e.num_steps), rel_tol=1e-9)
        for i, name in enumerate(ACTION_DIM_NAMES[:10]):
            assert math.isclose(got["mae"][name], abs_err[i] / e.num_steps, rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(got["terminate_accuracy"], term_ok / e.num_steps)
        total_steps += e.num_steps
        total_correct += correct
        total_abs += abs_err
        total_term += term_ok
    overall = result["overall"]
    assert math.isclose(overall["token_accuracy"], total_correct.sum() / (11 * total_steps), rel_tol=1e-9)
    assert math.isclose(overall["terminate_accuracy"], total_term / total_steps)
    for i, name in enumerate(ACTION_DIM_NAMES):
        assert math.isclose(overall["token_accuracy_per_dim"][name], total_correct[i] / total_steps, rel_tol=1e-9)


def test_instruction_selection_and_all(tiny_checkpoint, preprocessed_dir, index_dir, tmp_path):
    val = _val_index(index_dir)
    instruction = index_episodes(val)[0].instruction
    run_script(REPO / "plot_actions.py", "--checkpoint", tiny_checkpoint, "--data-dir", preprocessed_dir,
               "--index", val, "--instruction", instruction, "--out", tmp_path / "one")
    result = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert result["episodes"] and all(e["instruction"] == instruction for e in result["episodes"].values())
    run_script(REPO / "plot_actions.py", "--checkpoint", tiny_checkpoint, "--data-dir", preprocessed_dir,
               "--index", val, "--all", "--out", tmp_path / "all")
    result = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert len(result["episodes"]) == len(index_episodes(val))
    assert [p.name for p in (tmp_path / "all").glob("*.png")] == ["error_summary.png"]


def test_unknown_episode_or_instruction_lists_what_exists(tiny_checkpoint, preprocessed_dir, index_dir, tmp_path):
    val = _val_index(index_dir)
    known = index_episodes(val)
    common = ["--checkpoint", tiny_checkpoint, "--data-dir", preprocessed_dir, "--index", val, "--out", tmp_path]
    proc = run_script(REPO / "plot_actions.py", *common, "--episode", "99999", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: episode(s) [99999] not in")
    assert str(known[0].source_index) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_script(REPO / "plot_actions.py", *common, "--instruction", "juggle three oranges", check=False)
    assert proc.returncode == 2 and "no episode with instruction 'juggle three oranges'" in proc.stderr
    assert known[0].instruction in proc.stderr
