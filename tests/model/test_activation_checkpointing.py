"""RT1Config.activation_checkpointing: the same function, outputs, gradients and BatchNorm statistics, and
checkpoints that resume whatever the setting (issue 15)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rt1.config import PRESETS, ConfigError, RT1Config, TrainConfig
from rt1.model import RT1, action_loss
from rt1.train.cli import build_arg_parser, config_from_args
from rt1.train.run_dir import check_resume_fits

TINY = PRESETS["tiny"].model
# the original's three model variants at the tiny size, with dropout everywhere (exercises the RNG replay)
VARIANTS = {
    "tiny": TINY.replace(dropout=0.1, transformer_dropout=0.1, cond_drop_prob=0.3),
    "original-variants": TINY.replace(
        dropout=0.1,
        transformer_dropout=0.1,
        cond_drop_prob=0.3,
        attention_memory_kv=4,
        token_learner_pooling="mean",
        transformer_kv_source="input",
    ),
}


def perturbed_pair(config: RT1Config) -> tuple[RT1, RT1]:
    torch.manual_seed(0)
    plain = RT1(config)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # FiLM generators start at zero: make the text matter
    checkpointed = RT1(config.replace(activation_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    return plain.train(), checkpointed.train()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_checkpointing_gives_the_same_outputs_gradients_and_batch_norm_statistics(name):
    plain, checkpointed = perturbed_pair(VARIANTS[name])
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, 6, 64, 64, 3), generator=g, dtype=torch.uint8)
    text = torch.randn(2, 512, generator=g)
    tokens = torch.randint(0, 256, (2, 6, 11), generator=g)
    logits = []
    for model in (plain, checkpointed):
        torch.manual_seed(2)  # same dropout and condition-dropout draws
        out = model(video, text)
        action_loss(out, tokens).backward()
        logits.append(out)
    assert torch.equal(logits[0], logits[1])
    for (n, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad), n
    # BatchNorm running statistics updated once, not once more by the recomputation
    for (n, b), c in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(b, c), n
    assert checkpointed.vit.blocks[0].mbconv.depthwise_norm.num_batches_tracked.item() == 1


def test_checkpointing_is_inactive_without_gradients_and_in_eval():
    plain, checkpointed = perturbed_pair(VARIANTS["tiny"])
    video, text = torch.randint(0, 256, (1, 6, 64, 64, 3), dtype=torch.uint8), torch.randn(1, 512)
    plain.eval(), checkpointed.eval()
    with torch.no_grad():
        assert torch.equal(plain(video, text, cond_scale=2.0), checkpointed(video, text, cond_scale=2.0))


def test_config_field_is_validated_and_not_part_of_the_model_identity():
    with pytest.raises(ConfigError, match="activation_checkpointing must be True or False, got 1"):
        RT1Config(activation_checkpointing=1)
    on = RT1Config(activation_checkpointing=True)
    assert on.activation_checkpointing and on == RT1Config()  # how to compute, not what
    assert "activation_checkpointing" not in on.to_dict()
    assert RT1Config.from_dict(on.to_dict()) == on
    assert RT1Config.from_dict({**on.to_dict(), "activation_checkpointing": True}).activation_checkpointing


@pytest.fixture
def paths(tmp_path: Path) -> dict:
    (tmp_path / "data").mkdir()
    (tmp_path / "train.csv").write_text("")
    return {"data_dir": tmp_path / "data", "train_index": tmp_path / "train.csv"}


def test_train_flag_reaches_the_model_config(paths):
    parser = build_arg_parser()
    base = ["--data-dir", str(paths["data_dir"]), "--train-index", str(paths["train_index"])]
    assert not config_from_args(parser.parse_args(base)).model_config.activation_checkpointing
    cfg = config_from_args(
        parser.parse_args(
            base + ["--preset", "tiny", "--activation-checkpointing", "--cond-drop-prob", "0.5"]
        )
    )
    assert cfg.activation_checkpointing and cfg.model_config.activation_checkpointing
    assert cfg.model_config.cond_drop_prob == 0.5
    assert RT1(cfg.model_config).vit.activation_checkpointing


@pytest.mark.parametrize("saved_with, resumed_with", [(False, True), (True, False)])
def test_a_checkpoint_resumes_with_checkpointing_switched(paths, saved_with, resumed_with):
    saved = TrainConfig(**paths, preset="tiny", activation_checkpointing=saved_with)
    resumed = saved.replace(activation_checkpointing=resumed_with)
    contents = {"model_config": saved.model_config.to_dict(), "train_args": saved.to_dict()}
    check_resume_fits(
        contents, Path("checkpoint-1.pt"), resumed, resumed.model_config, logging.getLogger("test")
    )
    other = resumed.replace(cond_drop_prob=0.5)  # a real model difference still refuses
    with pytest.raises(Exception, match="different model config"):
        check_resume_fits(
            contents, Path("checkpoint-1.pt"), other, other.model_config, logging.getLogger("test")
        )
