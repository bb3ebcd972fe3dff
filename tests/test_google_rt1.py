"""Google's RT-1 network (`rt1.model.google`) equals Google's own TF code on a fixture made by it.

tests/fixtures/google_rt1/ was written by `make_google_fixture.py` (beside it; runs in the reference venv of
../shared/reference/google_rt1/README.md) from google-research/robotics_transformer at commit 4569641: the
network at reduced size (EfficientNet width 0.1, depth 0.5: 10 MBConv blocks, three with residuals; 2 decoder
layers; 3 frames; 32 bins) with random weights calibrated so the logits depend on the image, its checkpoint in
Google's layout (ckpt/), and its inputs and outputs (io.npz). Only this project's venv is needed here: the
checkpoint is read with TensorFlow's checkpoint reader, as rt1main would be.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from rt1.data.dataset import shifted_frames
from rt1.google_config import GoogleRT1Config
from rt1.model import build_model
from rt1.model.google import efficientnet, network, transformer
from rt1.model.google.checkpoint_layout import LayoutError, checkpoint_layout, state_dict_from_google
from rt1.policy import RT1Policy

FIXTURE = REPO / "tests" / "fixtures" / "google_rt1"
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"  # how tf.train.Checkpoint stores a variable's value
RT1MAIN_INDEX = REPO.parent / "shared" / "reference" / "rt1main_variables.tsv"
TOLERANCE = 1e-4


def fixture_config() -> GoogleRT1Config:
    c = json.loads((FIXTURE / "config.json").read_text())["config"]
    return GoogleRT1Config(
        width_coefficient=c["efficientnet_width"],
        depth_coefficient=c["efficientnet_depth"],
        drop_connect_rate=c["efficientnet_drop_connect_rate"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        key_dim=c["layer_size"],
        model_dim=c["feed_forward_size"],
        num_bins=c["vocab_size"],
        num_frames=c["time_sequence_length"],
        dropout=c["dropout_rate"],
    )


def read_google_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    names = [k for k in reader.get_variable_to_shape_map() if k.endswith(VARIABLE_SUFFIX)]
    return {k[: -len(VARIABLE_SUFFIX)]: reader.get_tensor(k) for k in names}


@pytest.fixture(scope="module")
def google():
    return read_google_checkpoint(FIXTURE / "ckpt" / "rt1"), dict(np.load(FIXTURE / "io.npz"))


def loaded_model(google) -> torch.nn.Module:
    tensors, _ = google
    model = build_model(fixture_config())
    model.load_state_dict(state_dict_from_google(model, tensors.__getitem__))
    return model


def inference_logits(model, io) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        frames = torch.from_numpy(io["image"])
        return model(frames, torch.from_numpy(io["natural_language_embedding"][:, 0]))


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


# ---- the fixture -----------------------------------------------------------------------------------


def test_the_fixture_is_small_and_its_logits_depend_on_the_image(google):
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file() and p.suffix != ".py")
    assert size <= 5 * 2**20, size
    _, io = google
    logits = io["infer_logits"]
    assert logits.std() > 1.0 and np.abs(logits[0] - logits[1]).max() > 0.5


def test_every_tensor_of_googles_checkpoint_has_one_home_and_nothing_is_left(google):
    tensors, _ = google
    model = build_model(fixture_config())
    layout = checkpoint_layout(model)
    assert set(layout) == set(tensors)
    assert sorted(slot.key for slot in layout.values()) == sorted(model.state_dict())
    for key, slot in layout.items():
        assert tensors[key].size == model.state_dict()[slot.key].numel(), key


def test_a_missing_or_misshapen_tensor_is_named(google):
    tensors, _ = google
    model = build_model(fixture_config())
    key = "agent/_actor_network/_transformer/_output_tokens/kernel"
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(LayoutError, match=f"tensor {key} is missing"):
        state_dict_from_google(model, missing.__getitem__)
    other = dict(tensors, **{key: np.zeros((64, 31), np.float32)})
    with pytest.raises(LayoutError, match=rf"tensor {key} has shape \[64, 31\]"):
        state_dict_from_google(model, other.__getitem__)


# ---- equality ----------------------------------------------------------------------------------------


def test_inference_logits_equal_googles_over_a_full_window(google):
    _, io = google
    model = loaded_model(google)
    assert max_diff(inference_logits(model, io), io["infer_logits"]) < TOLERANCE
    with torch.no_grad():
        frames = torch.from_numpy(io["image"]).flatten(0, 1)
        text = torch.from_numpy(io["natural_language_embedding"]).flatten(0, 1)
        tokens = model.encode_frames(frames, text)
    assert max_diff(tokens, io["infer_image_tokens"]) < TOLERANCE


def test_training_mode_logits_and_loss_equal_googles_with_dropout_off(google):
    """Training mode: BatchNorm normalises with the statistics of the whole batch of b x T frames, and the
    frames are randomly shifted; the fixture recorded Google's offset, which the loader's shift reproduces.

    Training-mode logits carry float32 error from the batch statistics over 10 blocks: ours are within 1e-5
    of the same network in float64, Google's TF output is 2.2e-4 from it (its fused BatchNorm). So the
    logits are compared with the float64 network at 1e-5 and with Google's at 5e-4; the loss with Google's
    at 1e-4 (the issue's bound)."""
    _, io = google
    top, left = io["train_crop_offsets"][0]
    assert (io["train_crop_offsets"] == (top, left)).all()  # Google draws one offset per call
    pad_rows, pad_cols = 20, 50  # preprocessors.py for 256-row frames
    shift = (pad_rows - int(top), pad_cols - int(left))
    frames = torch.from_numpy(np.stack([shifted_frames(window, shift) for window in io["image"]]))
    text = torch.from_numpy(io["natural_language_embedding"][:, 0])
    model = loaded_model(google).train()
    logits = model(frames, text)
    exact = loaded_model(google).double().train()(frames, text.double())
    assert max_diff(logits.detach().double(), exact.detach()) < 1e-5
    assert max_diff(logits.detach(), io["train_logits"]) < 5e-4
    # Google's loss (transformer_network.py L383-388): per step, the mean over the 11 tokens of the
    # cross-entropy divided by b * T * tokens_per_step
    b, t = frames.shape[:2]
    labels = torch.from_numpy(io["label_tokens"]).long()
    ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none").view(b, t, -1)
    loss = ce.mean(dim=-1) / (b * t * model.config.tokens_per_step)
    assert max_diff(loss.detach(), io["train_loss"]) < TOLERANCE
    assert max_diff(loss.sum().detach(), io["train_loss"].sum()) < TOLERANCE


def test_the_policy_equals_googles_step_by_step_policy(google):
    """Google's policy keeps the last T frames' image tokens (network_state); its 4th call on T=3 rolls."""
    _, io = google
    model = loaded_model(google)
    for episode in range(2):
        policy = RT1Policy(model, fold_batch_norms=False)
        frames = [*io["image"][episode], io["step_extra_image"][episode]]
        for step, frame in enumerate(frames):
            policy.step(frame, io["natural_language_embedding"][episode, 0])
            assert max_diff(policy.last_logits, io["step_logits"][step, episode]) < TOLERANCE, step


# ---- each structural choice matters on this fixture -------------------------------------------------


def _plain_causal_mask(num_frames, image_tokens, action_tokens):
    length = num_frames * (image_tokens + action_tokens)
    return torch.ones(length, length).tril().bool()


def _symmetric_padding(x, kernel):
    return F.pad(x, (kernel // 2,) * 4)


def _action_embedding_not_zeroed(self, image_tokens):
    b, f, n, _ = image_tokens.shape
    c = self.config
    zeros = F.one_hot(torch.zeros(b, f, c.num_actions, dtype=torch.long), c.num_bins).float()
    slots = self.token_embedding(self.mutation_action_embedding(zeros))
    x = torch.cat((self.token_embedding(image_tokens), slots), dim=2).flatten(1, 2)
    return x + self.position_embedding.weight.t()[: x.shape[1]] + self.position_embedding.bias


def _film_before_the_residual(self, x, modulation):
    mbconv = self.mbconv
    residual, mbconv.residual = mbconv.residual, False
    try:
        h = efficientnet.film(mbconv(x), modulation)
    finally:
        mbconv.residual = residual
    return h + x if residual else h


def _token_learner_softmax_over_tokens(self, x):
    weights = self.output(F.gelu(self.hidden(self.norm(x)), approximate="tanh"))
    return torch.bmm(weights.softmax(dim=-1).transpose(1, 2), x)


def _token_learner_pools_normalised_inputs(self, x):
    weights = self.output(F.gelu(self.hidden(self.norm(x)), approximate="tanh"))
    return torch.bmm(weights.transpose(1, 2).softmax(dim=-1), self.norm(x))


def _feed_forward_with_activation(self, x, mask):
    x = x + self.attention(self.norm1(x), mask)
    return x + self.dropout(F.gelu(self.ff(self.norm2(x))))


MUTATIONS = {
    "plain causal mask": (transformer, "attention_mask", _plain_causal_mask),
    "no one-position shift": (
        transformer,
        "action_read_positions",
        lambda f, n, a: (torch.arange(f)[:, None] * (n + a) + n + torch.arange(a)[None, :]).flatten(),
    ),
    "action tokens not zeroed": (transformer.Decoder, "embed", _action_embedding_not_zeroed),
    "FiLM before the residual add": (efficientnet.FiLMBlock, "forward", _film_before_the_residual),
    "symmetric stride-2 padding": (efficientnet, "pad_for_stride_2", _symmetric_padding),
    "TokenLearner softmax over tokens": (network.TokenLearner, "forward", _token_learner_softmax_over_tokens),
    "TokenLearner pools normalised inputs": (
        network.TokenLearner,
        "forward",
        _token_learner_pools_normalised_inputs,
    ),
    "feed-forward with an activation": (transformer.DecoderLayer, "forward", _feed_forward_with_activation),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_switching_back_a_structural_choice_moves_the_logits(google, monkeypatch, mutation):
    """The fixture can tell Google's choices from their usual alternatives: each one moves the logits > 1e-2."""
    _, io = google
    owner, name, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(owner, name, replacement)
    model = loaded_model(google)
    if mutation == "action tokens not zeroed":
        model.decoder.mutation_action_embedding = model.action_token_embedding
    assert max_diff(inference_logits(model, io), io["infer_logits"]) > 1e-2


# ---- full size ---------------------------------------------------------------------------------------


def test_the_rt1main_configuration_has_exactly_rt1mains_tensors():
    model = build_model(GoogleRT1Config())
    state = model.state_dict()
    assert len(state) == 732
    assert sum(t.numel() for t in state.values()) == 35_339_431
    assert sum(p.numel() for p in model.parameters()) == 35_252_128
    layout = checkpoint_layout(model)
    assert sorted(slot.key for slot in layout.values()) == sorted(state)
    if not RT1MAIN_INDEX.is_file():
        pytest.skip(f"{RT1MAIN_INDEX} (rt1main's index, names and shapes) is not beside this checkout")
    rt1main = {}
    for line in RT1MAIN_INDEX.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            rt1main[name] = math.prod(int(d) for d in shape.split("x")) if shape else 1
    assert set(rt1main) == set(layout)
    assert all(rt1main[key] == state[slot.key].numel() for key, slot in layout.items())


# ---- the former rt1 preset ---------------------------------------------------------------------------


def test_a_model_of_the_former_rt1_preset_is_refused_in_one_line(tmp_path):
    """Until Google's network, `--preset rt1` was a MaxViT: its checkpoints fit no preset's network now."""
    from rt1.config import PRESETS, TrainConfig
    from rt1.model import CheckpointError, load_model
    from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
    from rt1.train.run_dir import ResumeError, check_resume_fits

    tiny = PRESETS["tiny"].model
    contents = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": build_model(tiny).state_dict(),
        "model_config": tiny.to_dict(),
        "train_args": {"preset": "rt1"},
    }
    path = tmp_path / "checkpoint-3.pt"
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match=r"former `rt1` preset .*now Google's RT-1 network") as error:
        load_model(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    (tmp_path / "data").mkdir()
    (tmp_path / "train.csv").write_text("")
    cfg = TrainConfig(preset="rt1", data_dir=tmp_path / "data", train_index=tmp_path / "train.csv")
    with pytest.raises(ResumeError, match="former `rt1` preset"):
        check_resume_fits(contents, path, cfg, cfg.model_config, log=None)
    contents["train_args"] = {"preset": "tiny"}  # the same weights of another preset load
    torch.save(contents, path)
    assert load_model(path)[1] == tiny
