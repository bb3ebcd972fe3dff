"""python -m rt1.export and rt1.model.load_pretrained: safetensors + config.json + model card, no pickle,
identical logits, one-line refusals of broken directories."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from conftest import run_script
from test_policy import calibrated

from rt1.actions import ACTION_DIM_NAMES, CONTINUOUS_KEYS
from rt1.config import PRESETS
from rt1.export import ExportError, export
from rt1.model import PretrainedError, load_model, load_pretrained
from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
from rt1.model.pretrained import CONFIG_NAME, WEIGHTS_NAME

TINY = PRESETS["tiny"].model
METRICS = {"val_loss": 1.25, "val_token_accuracy": 0.5}


def write_checkpoint(path, model, **extra):
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "train_args": {
                "preset": "tiny",
                "data_dir": "data/preprocessed",
                "train_index": "index/train_idx_9.csv",
                "optimizer": "adamw",
                "lr": 1e-3,
                "batch_size": 16,
                "seed": 0,
            },
            "epoch": 3,
            "global_step": 120,
            "epoch_complete": True,
            "metrics": dict(METRICS),
            **extra,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def model():
    return calibrated(TINY)  # BatchNorm statistics and FiLM weights that matter


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint-3.pt", model)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export(checkpoint, tmp_path_factory.mktemp("export") / "rt1-tiny", embedding_source="mini-fractal")


def _logits(model, cond_scale):
    """Per-step logits of a 9-step episode through the unfolded model (RT1Policy's batched path: it takes
    uint8 frames, so this does not depend on how pixels are normalised)."""
    from rt1.policy import RT1Policy

    rng = np.random.default_rng(1)
    size = model.config.image_size
    images = np.kron(
        rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8), np.ones((1, size // 8, size // 8, 1), np.uint8)
    )
    text = rng.standard_normal(model.config.text_embed_dim).astype(np.float32)
    policy = RT1Policy(model, cond_scale=cond_scale, fold_batch_norms=False)
    return policy.predict_episode(images, text, batch_size=4, return_logits=True)[1]


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_export_then_load_gives_identical_logits(checkpoint, exported, cond_scale):
    original, config, _ = load_model(checkpoint)
    loaded, loaded_config, exported_config = load_pretrained(exported)
    assert loaded_config == config and not loaded.training
    for name, tensor in original.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    a, b = _logits(original, cond_scale), _logits(loaded, cond_scale)
    assert torch.equal(a, b)
    # the comparison can fail: another model's logits differ
    assert not torch.equal(_logits(calibrated(TINY.replace(cond_dim=64)), cond_scale), a)


def test_exported_directory_holds_no_pickle(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for path in exported.iterdir():
        data = path.read_bytes()
        assert not zipfile.is_zipfile(path), path  # torch.save's container
        assert not data.startswith(b"\x80"), path  # a pickle stream (protocol 2+)
        assert b"_rebuild_tensor" not in data and b"torch._utils" not in data, path
    data = (exported / WEIGHTS_NAME).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])  # safetensors: a JSON header, then raw tensor bytes
    assert header.pop("__metadata__") == {"format": "pt"}
    ends = [entry["data_offsets"][1] for entry in header.values()]
    assert len(data) == 8 + header_len + max(ends)
    assert set(header) == set(load_model(exported)[0].state_dict())


def test_config_json_and_model_card(exported):
    config = json.loads((exported / CONFIG_NAME).read_text())
    assert (config["format"], config["format_version"], config["preset"]) == ("rt1-pretrained", 1, "tiny")
    assert config["model_config"] == TINY.to_dict()
    tokenizer = config["action_tokenizer"]
    assert tokenizer["names"] == list(ACTION_DIM_NAMES) and tokenizer["num_bins"] == 256
    assert [(k["key"], k["low"], k["high"]) for k in tokenizer["keys"][:-1]] == [
        (k.key, k.low, k.high) for k in CONTINUOUS_KEYS
    ]
    assert tokenizer["keys"][-1]["key"] == "terminate_episode" and tokenizer["keys"][-1]["tokens"] == [10, 11]
    pre = config["image_preprocessing"]
    assert pre["image_size"] == [64, 64] and pre["jpeg_quality"] == 90 and pre["pixel_scaling"] == "imagenet"
    assert pre["dataset_jpeg_quality"] == 95 and len(pre["mean"]) == 3
    assert config["instruction_embedding"] == {"dim": 512, "source": "mini-fractal"}
    assert config["training"]["metrics"] == METRICS and config["training"]["global_step"] == 120
    assert config["source_checkpoint"] == "checkpoint-3.pt"
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n") and "# RT-1 (tiny preset)" in card
    assert (
        "`preprocessed`" in card and "| val_token_accuracy | 0.5 |" in card and "120 optimizer steps" in card
    )
    assert load_model(exported)[2]["data_dir"] == "preprocessed"  # train_args come back through load_model


def _copy(exported, tmp_path):
    import shutil

    return shutil.copytree(exported, tmp_path / "copy")


def _edit_tensors(directory, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / WEIGHTS_NAME)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS_NAME)


def _edit_config(directory, edit):
    config = json.loads((directory / CONFIG_NAME).read_text())
    edit(config)
    (directory / CONFIG_NAME).write_text(json.dumps(config))


BROKEN = {
    "missing tensor": (
        lambda d: _edit_tensors(d, lambda t: t.pop("to_logits.1.bias")),
        "model.safetensors: missing tensor 'to_logits.1.bias'",
    ),
    "extra tensor": (
        lambda d: _edit_tensors(d, lambda t: t.update(extra=torch.zeros(2))),
        "model.safetensors: unexpected tensor 'extra'",
    ),
    "wrong shape": (
        lambda d: _edit_tensors(d, lambda t: t.update({"to_logits.1.bias": torch.zeros(5)})),
        "tensor 'to_logits.1.bias' is torch.float32 (5,), the model_config needs torch.float32 (2816,)",
    ),
    "wrong dtype": (
        lambda d: _edit_tensors(d, lambda t: t.update({"to_logits.1.bias": t["to_logits.1.bias"].half()})),
        "tensor 'to_logits.1.bias' is torch.float16 (2816,)",
    ),
    "other format version": (
        lambda d: _edit_config(d, lambda c: c.update(format_version=2)),
        "config.json has format_version 2, this code reads 1",
    ),
    "other tokenizer bounds": (
        lambda d: _edit_config(d, lambda c: c["action_tokenizer"]["keys"][0].update(high=2.0)),
        "config.json: action_tokenizer differs from this code's",
    ),
    "bad model config": (
        lambda d: _edit_config(d, lambda c: c["model_config"].update(image_size=63)),
        "config.json: bad model_config",
    ),
    "no config": (lambda d: (d / CONFIG_NAME).unlink(), "is not an exported rt1 model: no config.json"),
    "no weights": (lambda d: (d / WEIGHTS_NAME).unlink(), "has no model.safetensors"),
    "truncated weights": (
        lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:1000]),
        "model.safetensors cannot be read",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_directory_is_a_one_line_error(exported, tmp_path, capsys, kind):
    from rt1.evaluation.closed_loop_cli import main

    directory = _copy(exported, tmp_path)
    damage, expected = BROKEN[kind]
    damage(directory)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(directory)
    message = str(info.value)
    assert expected in message and str(directory) in message and "\n" not in message
    # through a command line: exit 2, that one line
    assert main(["--checkpoint", str(directory), "--episodes", "1", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_export_writes_atomically_and_refuses_to_clobber(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "model"
    export(checkpoint, out)
    first = (out / WEIGHTS_NAME).read_bytes()
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export(checkpoint, out)
    other = tmp_path / "plain"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an exported model directory"):
        export(checkpoint, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    # a write that fails midway leaves neither a half-written DIR nor a temporary directory
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError):
        export(checkpoint, tmp_path / "never")
    with pytest.raises(OSError):
        export(checkpoint, out, overwrite=True)
    assert not (tmp_path / "never").exists() and (out / WEIGHTS_NAME).read_bytes() == first
    monkeypatch.undo()
    export(checkpoint, out, overwrite=True, jpeg_quality=75)
    assert json.loads((out / CONFIG_NAME).read_text())["image_preprocessing"]["jpeg_quality"] == 75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "plain"]  # no temporaries left


@pytest.mark.slow
def test_cli(checkpoint, tmp_path):
    assert "--embedding-source" in run_script("-m", "rt1.export", "--help", timeout=120).stdout
    out = tmp_path / "exported"
    proc = run_script("-m", "rt1.export", "--checkpoint", checkpoint, "--out", out, timeout=300)
    assert f"wrote {out}/" in proc.stdout and (out / WEIGHTS_NAME).is_file()
    proc = run_script(
        "-m",
        "rt1.export",
        "--checkpoint",
        tmp_path / "nope.pt",
        "--out",
        tmp_path / "x",
        check=False,
        timeout=300,
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"
    )


@pytest.mark.slow  # builds the bundled preprocessed data (session fixture)
def test_policy_and_plot_actions_take_an_exported_directory(
    checkpoint, exported, preprocessed_dir, index_dir, tmp_path
):
    from rt1.evaluation.evaluate import EvalConfig, evaluate
    from rt1.policy import RT1Policy

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    text = rng.standard_normal(512).astype(np.float32)
    tokens = {}
    for name, path in (("checkpoint", checkpoint), ("directory", exported)):
        tokens[name] = RT1Policy.from_path(path).predict_episode(images, text)
    np.testing.assert_array_equal(tokens["checkpoint"], tokens["directory"])
    index = sorted(index_dir.glob("val_idx_*.csv"))[0]
    results = {}
    for name, path in (("checkpoint", checkpoint), ("directory", exported)):
        cfg = EvalConfig(path, preprocessed_dir, index, tmp_path / name, max_episodes=1)
        results[name] = evaluate(cfg, progress=False)
    assert results["checkpoint"]["overall"] == results["directory"]["overall"]
    assert (tmp_path / "directory" / "metrics.json").is_file()
