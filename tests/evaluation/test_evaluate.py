"""plot_actions.py: plots and metrics of a trained checkpoint, checked against an independent computation."""

import json
import math
import subprocess
import sys

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
    cfg = TrainConfig(
        preset="tiny",
        data_dir=preprocessed_dir,
        train_index=next(index_dir.glob("train_idx_*.csv")),
        val_index=None,
        save_dir=save,
        epochs=1,
        max_steps=20,
        num_workers=0,
        progress=False,
        tensorboard=False,
    )
    train(cfg)
    return latest_checkpoint(save)


def _val_index(index_dir):
    return next(index_dir.glob("val_idx_*.csv"))


def test_writes_one_png_per_episode_and_metrics_equal_an_independent_computation(
    tiny_checkpoint, preprocessed_dir, index_dir, tmp_path
):
    val = _val_index(index_dir)
    episodes = index_episodes(val)[:2]
    args = [
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        preprocessed_dir,
        "--index",
        val,
        "--out",
        tmp_path,
    ]
    for e in episodes:
        args += ["--episode", e.source_index]
    run_script(REPO / "plot_actions.py", *args)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"episode_{e.source_index}.png" for e in episodes
    )
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
        assert math.isclose(
            overall["token_accuracy_per_dim"][name], total_correct[i] / total_steps, rel_tol=1e-9
        )


def test_instruction_selection_and_all(tiny_checkpoint, preprocessed_dir, index_dir, tmp_path):
    val = _val_index(index_dir)
    instruction = index_episodes(val)[0].instruction
    run_script(
        REPO / "plot_actions.py",
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        preprocessed_dir,
        "--index",
        val,
        "--instruction",
        instruction,
        "--out",
        tmp_path / "one",
    )
    result = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert result["episodes"] and all(e["instruction"] == instruction for e in result["episodes"].values())
    run_script(
        REPO / "plot_actions.py",
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        preprocessed_dir,
        "--index",
        val,
        "--all",
        "--out",
        tmp_path / "all",
    )
    result = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert len(result["episodes"]) == len(index_episodes(val))
    assert [p.name for p in (tmp_path / "all").glob("*.png")] == ["error_summary.png"]


def test_unknown_episode_or_instruction_lists_what_exists(
    tiny_checkpoint, preprocessed_dir, index_dir, tmp_path
):
    val = _val_index(index_dir)
    known = index_episodes(val)
    common = [
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        preprocessed_dir,
        "--index",
        val,
        "--out",
        tmp_path,
    ]
    proc = run_script(REPO / "plot_actions.py", *common, "--episode", "99999", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: episode(s) [99999] not in")
    assert str(known[0].source_index) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_script(REPO / "plot_actions.py", *common, "--instruction", "juggle three oranges", check=False)
    assert proc.returncode == 2 and "no episode with instruction 'juggle three oranges'" in proc.stderr
    assert known[0].instruction in proc.stderr


# ---- bad input: one line, nothing left behind (issue 14) ----------------------------------------------------


def _refused(proc, *words):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_an_index_built_from_another_data_directory_is_refused(
    tiny_checkpoint, preprocessed_dir, index_dir, tmp_path
):
    """Another directory whose files have the same names but other content (here: two files swapped)."""
    val = _val_index(index_dir)
    first = index_episodes(val)[0].file
    other = next(p.name for p in sorted(preprocessed_dir.glob("*.h5")) if p.name != first)
    data = tmp_path / "other_data"
    data.mkdir()
    for p in preprocessed_dir.glob("*.h5"):
        name = {first: other, other: first}.get(p.name, p.name)
        (data / name).write_bytes(p.read_bytes())
    out = tmp_path / "plots"
    proc = run_script(
        REPO / "plot_actions.py",
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        data,
        "--index",
        val,
        "--out",
        out,
        check=False,
    )
    _refused(proc, str(val), str(data), first, "content digest")
    assert not out.exists()


@pytest.mark.parametrize(
    "problem",
    ["text checkpoint", "random checkpoint", "cond-scale nan", "cond-scale inf", "device", "device cuda"],
)
def test_bad_checkpoint_device_and_cond_scale_are_one_line_errors(
    tiny_checkpoint, preprocessed_dir, index_dir, tmp_path, problem
):
    checkpoint, extra = tiny_checkpoint, []
    if problem == "text checkpoint":
        checkpoint = tmp_path / "checkpoint-1.pt"
        checkpoint.write_text("not a checkpoint\n")
    elif problem == "random checkpoint":
        checkpoint = tmp_path / "checkpoint-1.pt"
        checkpoint.write_bytes(np.random.default_rng(0).bytes(5000))
    elif problem.startswith("cond-scale"):
        extra = ["--cond-scale", problem.split()[1]]
    elif problem == "device":
        extra = ["--device", "tpu7"]
    else:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        extra = ["--device", "cuda"]
    out = tmp_path / "a" / "plots"
    proc = run_script(
        REPO / "plot_actions.py",
        "--checkpoint",
        checkpoint,
        "--data-dir",
        preprocessed_dir,
        "--index",
        _val_index(index_dir),
        "--out",
        out,
        *extra,
        check=False,
    )
    words = {
        "text checkpoint": [str(checkpoint)],
        "random checkpoint": [str(checkpoint)],
        "cond-scale nan": ["--cond-scale", "nan"],
        "cond-scale inf": ["--cond-scale", "inf"],
        "device": ["--device", "tpu7"],
        "device cuda": ["--device cuda", "CUDA is not available"],
    }[problem]
    _refused(proc, *words)
    assert not (tmp_path / "a").exists(), "a refused run left its --out directory behind"


def test_data_of_another_image_size_than_the_checkpoint_is_a_one_line_error(
    tiny_checkpoint, segment_dir, tmp_path
):
    from rt1.data.index import build_index
    from rt1.data.preprocess import preprocess_dir

    seg = tmp_path / "seg"
    seg.mkdir()
    first = sorted(segment_dir.glob("*.h5"))[0]
    (seg / first.name).write_bytes(first.read_bytes())
    pre = tmp_path / "pre48"
    preprocess_dir(seg, pre, image_size=48, workers=1, progress=False)
    index = build_index(pre, tmp_path / "index", val_fraction=0.5, seed=0)
    out = tmp_path / "plots"
    proc = run_script(
        REPO / "plot_actions.py",
        "--checkpoint",
        tiny_checkpoint,
        "--data-dir",
        pre,
        "--index",
        index.val_csv,
        "--out",
        out,
        check=False,
    )
    _refused(proc, "48x48", "64x64", "--image-size 64")
    assert not out.exists()


def test_outputs_default_next_to_the_checkpoint_not_the_current_directory(
    tiny_checkpoint, preprocessed_dir, index_dir, tmp_path
):
    import shutil

    checkpoint = tmp_path / "save" / tiny_checkpoint.name
    checkpoint.parent.mkdir()
    shutil.copy(tiny_checkpoint, checkpoint)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "plot_actions.py"),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(preprocessed_dir),
            "--index",
            str(_val_index(index_dir)),
            "--max-episodes",
            "1",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    out = tmp_path / "save" / "plots" / checkpoint.stem
    assert (out / "metrics.json").is_file() and len(list(out.glob("episode_*.png"))) == 1
    assert str(out) in proc.stdout
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
