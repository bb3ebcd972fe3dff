"""The `original` preset reproduces robotic-transformer-pytorch 0.2.3 (the original pipeline's model) after
`rt1.model.convert_original` converts its state_dict.

The reference is not a dependency: tests/fixtures/rt1_reference_fixture.pt holds a small reference
RT1's state_dict, inputs and outputs (eval logits at cond_scale 1 and 3, train-mode logits and the
BatchNorm statistics after that forward), made by tests/fixtures/make_reference_fixture.py (its
docstring says how to install the reference to re-make it). The full-size comparison (224 x 224,
T5's 768-d text) is a benchmark, not a test: it takes minutes and ~3 GB.
"""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_script

from rt1.config import PRESETS, RT1Config
from rt1.model import RT1, action_loss
from rt1.model.convert_original import ConversionError, convert_state_dict, infer_config, main

FIXTURE = REPO / "tests" / "fixtures" / "rt1_reference_fixture.pt"
VARIANTS = (
    "attention_memory_kv",
    "token_learner_pooling",
    "transformer_kv_source",
    "pixel_scaling",
    "cond_drop_prob",
)
TOL = 1e-4


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def converted(fx: dict, **changes) -> RT1:
    config = infer_config(fx["state_dict"], image_size=fx["image_size"], **changes)
    model = RT1(config)
    model.load_state_dict(convert_state_dict(fx["state_dict"], config))
    return model


def reference_inputs(fx: dict, config: RT1Config):
    """The fixture's raw uint8 video (B, 3, F, H, W), the reference's layout, as our model's frames (B, F, H, W, 3)
    (the model scales them as the `original` preset says: raw 0..255 floats)."""
    return fx["video_uint8"].permute(0, 2, 3, 4, 1), fx["text_embeds"]


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def test_fixture_is_small_and_maps_onto_the_original_preset(fx):
    assert FIXTURE.stat().st_size < 2_000_000
    config = infer_config(fx["state_dict"], image_size=fx["image_size"])
    assert config == RT1Config.from_dict(fx["ours_config"])
    original = PRESETS["original"].model
    for name in VARIANTS:
        assert getattr(config, name) == getattr(original, name), name
    # the fixture covers a downsampling MBConv (vit.layers.i.0.N) and a residual one (vit.layers.i.0.fn.N)
    assert config.depth == (1, 2) and config.text_embed_dim == 32 and config.cond_dim == 64


def test_eval_logits_equal_the_reference_at_cond_scale_1_and_3(fx):
    model = converted(fx).eval()
    video, text = reference_inputs(fx, model.config)
    with torch.no_grad():
        cs1 = model(video, text, cond_scale=1.0)
        cs3 = model(video, text, cond_scale=3.0)
    assert max_diff(cs1, fx["logits_eval_cs1"]) < TOL
    assert max_diff(cs3, fx["logits_eval_cs3"]) < TOL
    assert torch.equal(cs1.argmax(-1), fx["logits_eval_cs1"].argmax(-1))


def test_train_mode_logits_and_batch_norm_statistics_equal_the_reference(fx):
    # The fixture's train-mode pass ran with dropout 0 (different RNG streams could not be compared).
    model = converted(fx, dropout=0.0).train()
    assert model.config.cond_drop_prob == 0.0  # the original's forward never dropped the condition
    video, text = reference_inputs(fx, model.config)
    with torch.no_grad():
        logits = model(video, text)
    assert max_diff(logits, fx["logits_train"]) < TOL
    # The reference's BatchNorm statistics after its pass, in this project's naming (conv bias folded in).
    expected = convert_state_dict({**fx["state_dict"], **fx["bn_after_train"]}, model.config)
    now = model.state_dict()
    stats = [k for k in expected if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 3 * 3 * 3  # 3 MaxViT blocks x 3 BatchNorms x 3 buffers
    for key in stats:
        if key.endswith("num_batches_tracked"):
            assert now[key].item() == expected[key].item() == 2, key
        else:  # raw-pixel input: the first statistics are large, compare relatively
            scale = expected[key].abs().clamp(min=1.0)
            assert ((now[key] - expected[key]).abs() / scale).max().item() < 1e-5, key
    # the original loop's loss on these logits
    original = action_loss(logits, fx["tokens"], reduction="sum_frames_mean_tokens")
    assert original.item() == pytest.approx(fx["loss_original"].item(), rel=1e-5)
    assert action_loss(logits, fx["tokens"]).item() == pytest.approx(fx["loss_mean"].item(), rel=1e-5)


@pytest.mark.parametrize(
    "variant",
    [
        {"attention_memory_kv": 0},
        {"token_learner_pooling": "softmax"},
        {"transformer_kv_source": "modulated"},
    ],
)
def test_each_rt1_variant_alone_departs_from_the_reference(fx, variant):
    """Each of the three differences matters: the rt1 choice of any one of them changes the logits."""
    config = infer_config(fx["state_dict"], image_size=fx["image_size"], **variant)
    model = RT1(config)
    converted_sd = convert_state_dict(
        fx["state_dict"], infer_config(fx["state_dict"], image_size=fx["image_size"])
    )
    result = model.load_state_dict(converted_sd, strict=False)  # mem_kv unused / a fresh TokenLearner norm
    assert len(result.missing_keys) + len(result.unexpected_keys) <= 2 * sum(config.depth)
    video, text = reference_inputs(fx, config)
    with torch.no_grad():
        assert max_diff(model.eval()(video, text), fx["logits_eval_cs1"]) > 1e-2


def test_converter_cli_end_to_end(fx, tmp_path):
    from rt1.model import load_model, read_checkpoint

    source = tmp_path / "save" / "rt1_ddp" / "model-3.pth"  # what the original's loop writes
    source.parent.mkdir(parents=True)
    torch.save(fx["state_dict"], source)
    out_dir = tmp_path / "converted"
    proc = run_script(
        "-m",
        "rt1.model.convert_original",
        "--checkpoint",
        source,
        "--out",
        out_dir,
        "--image-size",
        fx["image_size"],
    )
    out = out_dir / "model-3.pt"
    assert str(out) in proc.stdout and "text_embed_dim 32" in proc.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["model-3.pt"]  # no temporary left behind

    state = read_checkpoint(out)
    assert state["epoch"] == 3 and "optimizer" not in state
    model, config, train_args = load_model(out)
    assert not model.training and train_args == {}
    assert config.pixel_scaling == "raw" and config.text_embed_dim == 32 and config.attention_memory_kv == 4
    video, text = reference_inputs(fx, config)
    with torch.no_grad():
        assert max_diff(model(video, text, cond_scale=1.0), fx["logits_eval_cs1"]) < TOL
        assert max_diff(model(video, text, cond_scale=3.0), fx["logits_eval_cs3"]) < TOL


def _run_main(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_converter_errors_are_one_line(fx, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, err = _run_main(capsys, "--checkpoint", tmp_path / "nope.pth", "--out", out_dir)
    assert code == 2 and "nope.pth does not exist" in err and "\n" not in err

    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint\n")
    code, err = _run_main(capsys, "--checkpoint", text_file, "--out", out_dir)
    assert code == 2 and "is not a torch checkpoint" in err and "\n" not in err

    extra = tmp_path / "extra.pth"
    torch.save(
        {**fx["state_dict"], "vit.extra_head.weight": torch.zeros(2), "policy.bias": torch.zeros(1)}, extra
    )
    code, err = _run_main(capsys, "--checkpoint", extra, "--out", out_dir)
    assert code == 2 and "\n" not in err
    assert "2 keys" in err and "policy.bias" in err and "vit.extra_head.weight" in err

    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in fx["state_dict"].items() if not k.startswith("to_logits.1.")}, partial)
    code, err = _run_main(capsys, "--checkpoint", partial, "--out", out_dir, "--image-size", fx["image_size"])
    assert code == 2 and "to_logits.1.weight" in err and "\n" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_convert_state_dict_rejects_a_config_that_does_not_fit(fx):
    wrong = infer_config(fx["state_dict"], image_size=fx["image_size"], attention_memory_kv=2)
    with pytest.raises(ConversionError, match="mem_kv"):
        convert_state_dict(fx["state_dict"], wrong)
    ddp = {f"module.{k}": v for k, v in fx["state_dict"].items()}  # a DDP wrapper's keys convert too
    right = infer_config(fx["state_dict"], image_size=fx["image_size"])
    assert convert_state_dict(ddp, right).keys() == RT1(right).state_dict().keys()
