"""Under `--preset original`, one optimizer step of train_ddp.py's trainer is one step of the original's loop.

The original (seed-README / rt1-spec): `logits = model(video_raw_0_255, text)` with no condition dropout and
no augmentation, `loss = sum over the batch's B x F frames of the mean cross-entropy over the 11 tokens`,
SGD(lr 1e-4 x world size, momentum 0.9, weight decay 1e-3). Here that loop is written out independently
(its own loss, torch's SGD) and compared parameter by parameter with the trainer's checkpoint after one step.
The model is the original preset's function at a small size (the 224 x 224 original takes minutes per step here).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_data  # noqa: F401  (session fixture: preprocessed bundled data at 64x64)

from rt1.config import PRESETS, TrainConfig
from rt1.data.dataset import RT1Dataset
from rt1.model import RT1
from rt1.train.checkpoint import load_checkpoint
from rt1.train.cli import build_arg_parser, config_from_args
from rt1.train.trainer import train

SMALL_ORIGINAL = PRESETS["original"].model.replace(
    image_size=64,
    conv_stem_dim=16,
    dim=32,
    dim_head=16,
    depth=(1, 1),
    attention_window=4,
    dropout=0.0,
    transformer_depth=2,
    transformer_heads=2,
    num_learned_tokens=4,
)
BATCH = 2


def _original_step(train_index, data_dir, seed: int) -> dict[str, torch.Tensor]:
    """The original's loop for one step, written out: returns the parameters after it."""
    torch.manual_seed(seed)  # the trainer builds its model right after seeding with --seed
    model = RT1(SMALL_ORIGINAL).train()
    dataset = RT1Dataset(train_index, data_dir, augment=False)
    items = [dataset[i] for i in range(BATCH)]  # --no-shuffle: the first windows in index order
    dataset.close()
    video = torch.stack([it["frames"] for it in items])  # uint8: the model feeds raw 0..255 pixels
    text = torch.stack([it["text_embed"] for it in items])
    tokens = torch.stack([it["action_tokens"] for it in items]).long()
    logits = model(video, text)
    loss = sum(
        F.cross_entropy(logits[b, f], tokens[b, f]) for b in range(BATCH) for f in range(tokens.shape[1])
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4 * 1, momentum=0.9, weight_decay=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_step_equals_the_original_loop(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(PRESETS, "original", dataclasses.replace(PRESETS["original"], model=SMALL_ORIGINAL))
    cfg = TrainConfig(
        data_dir=tiny_data.data_dir,
        train_index=tiny_data.train_index,
        save_dir=tmp_path,
        max_steps=1,
        batch_size=BATCH,
        shuffle=False,
        num_workers=0,
        val_every=0,
        progress=False,
        tensorboard=False,
        seed=3,
    )
    assert cfg.preset == "original" and cfg.loss_reduction == "sum_frames_mean_tokens" and not cfg.augment
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 1e-4, 0.9, 1e-3)
    train(cfg)
    ours = load_checkpoint(tmp_path / "checkpoint-1.pt")["model"]
    expected = _original_step(tiny_data.train_index, tiny_data.data_dir, seed=3)
    torch.manual_seed(3)
    before = RT1(SMALL_ORIGINAL).state_dict()
    worst = max((ours[k].float() - expected[k].float()).abs().max().item() for k in expected)
    moved = max((expected[k].float() - before[k].float()).abs().max().item() for k in expected)
    print(f"one-step max parameter difference {worst:.3g}, update size {moved:.3g}")
    assert moved > 1e-4, "the step must move the weights for the comparison to mean anything"
    assert worst <= 1e-6 * max(moved, 1.0), f"max parameter difference {worst:.3g} (update size {moved:.3g})"


def test_flags_still_change_each_setting(tiny_data):  # noqa: F811
    base = ["--data-dir", str(tiny_data.data_dir), "--train-index", str(tiny_data.train_index)]
    parser = build_arg_parser()
    default = config_from_args(parser.parse_args(base))
    assert default.preset == "original" and default.model_config.cond_drop_prob == 0.0
    changed = config_from_args(
        parser.parse_args(
            base
            + [
                "--loss-reduction",
                "mean",
                "--augment",
                "--cond-drop-prob",
                "0.2",
                "--lr",
                "3e-4",
                "--optimizer",
                "adamw",
            ]
        )
    )
    assert (
        changed.loss_reduction,
        changed.augment,
        changed.model_config.cond_drop_prob,
        changed.lr,
        changed.optimizer,
    ) == ("mean", True, 0.2, 3e-4, "adamw")
    assert changed.model_config.pixel_scaling == "raw"  # a model property, not a training flag


@pytest.mark.parametrize("preset, reduction, augment", [("rt1", "mean", True), ("tiny", "mean", True)])
def test_the_other_presets_keep_their_training_choices(tiny_data, preset, reduction, augment):  # noqa: F811
    cfg = TrainConfig(preset=preset, data_dir=tiny_data.data_dir, train_index=tiny_data.train_index)
    assert (cfg.loss_reduction, cfg.augment) == (reduction, augment)
