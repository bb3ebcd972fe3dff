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
import re
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
from rt1.model.google.convert_google import read_google_checkpoint
from rt1.policy import RT1Policy

FIXTURE = REPO / "tests" / "fixtures" / "google_rt1"
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
    """Google's policy keeps the last T frames' image tokens (network_state); its 4th call on T=3 rolls.
    At every step, over more steps than the window holds, it is also our own forward over the window that ends
    at that step (the first T - 1 steps: the frames so far)."""
    _, io = google
    model = loaded_model(google).eval()
    rng = np.random.default_rng(0)
    for episode in range(2):
        policy = RT1Policy(model, fold_batch_norms=False)
        text = io["natural_language_embedding"][episode, 0]
        frames = [*io["image"][episode], io["step_extra_image"][episode]]
        frames += [
            rng.permutation(frames[step % 4].reshape(-1, 3)).reshape(frames[0].shape) for step in range(3)
        ]
        for step, frame in enumerate(frames):
            policy.step(frame, text)
            if step < 4:  # Google's recorded steps
                assert max_diff(policy.last_logits, io["step_logits"][step, episode]) < TOLERANCE, step
            window = np.stack(frames[max(0, step - 2) : step + 1])[None]
            with torch.no_grad():
                full = model(torch.from_numpy(window), torch.from_numpy(text)[None])[0, -1]
            assert max_diff(policy.last_logits, full) < TOLERANCE, step


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


# ---- conversion (python -m rt1.model.convert_google) ---------------------------------------------


FIXTURE_ORDER = tuple(json.loads((FIXTURE / "config.json").read_text())["action_order"])


def convert_cli(*args) -> int:
    from rt1.model.google.convert_google import main

    return main([str(a) for a in args])


def test_the_converted_fixture_gives_googles_logits_from_the_file(tmp_path, google, capsys):
    """The command on the TF checkpoint file; the directory loads with load_model and gives Google's logits
    (in rt1.actions' token order: Google's slot k is the fixture's action_order's token k)."""
    from rt1.actions import token_index
    from rt1.model import load_model

    _, io = google
    out = tmp_path / "converted"
    assert (
        convert_cli(
            "--checkpoint", FIXTURE / "ckpt" / "rt1", "--out", out, "--action-order", ",".join(FIXTURE_ORDER)
        )
        == 0
    )
    assert "read 285 tensors" in capsys.readouterr().out
    model, config, _ = load_model(out)
    assert config.num_bins == 32 and config.num_frames == 3 and config.action_order == FIXTURE_ORDER

    def blocks(m):  # depth 0.4 is read (the smallest with these blocks): the fixture's 0.5 builds the same
        return [
            (b.mbconv.spec.kernel, b.mbconv.spec.filters_in, b.mbconv.spec.filters_out)
            for b in m.encoder.blocks
        ]

    assert blocks(model) == blocks(build_model(fixture_config()))
    logits = inference_logits(model, io)
    google_logits = torch.from_numpy(io["infer_logits"])[:, :, list(token_index(FIXTURE_ORDER))]
    assert max_diff(logits, google_logits) < TOLERANCE
    exported = json.loads((out / "config.json").read_text())
    assert exported["model_config"]["action_order"] == list(FIXTURE_ORDER)
    assert exported["conversion"]["action_order_source"] == "--action-order"


def test_a_permuted_order_puts_each_slot_into_its_action_key(google, monkeypatch):
    """Slot k of a network with rt1main's default order predicts DEFAULT_ACTION_ORDER's token k: make slot k's
    logits peak at a bin of its own and the policy's action dict has each value under the right key."""
    from rt1.model.google.convert_google import DEFAULT_ACTION_ORDER

    model = build_model(fixture_config().replace(action_order=DEFAULT_ACTION_ORDER)).eval()
    bins = torch.tensor([3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23])  # slot k -> bin of its own
    peaked = torch.nn.functional.one_hot(bins, 32).float() * 10

    def decoder(tokens):
        return peaked.expand(tokens.shape[0], tokens.shape[1], -1, -1)

    monkeypatch.setattr(model.decoder, "forward", decoder)
    _, io = google
    action = RT1Policy(model, fold_batch_norms=False).step(
        io["image"][0, 0], io["natural_language_embedding"][0, 0]
    )
    # the slots in DEFAULT_ACTION_ORDER: terminate 0, world_vector 1-3, rotation_delta 4-6, gripper 7,
    # base rotation 8, base vector 9-10
    expected = {
        "terminate_episode": [3],
        "world_vector": [5, 7, 9],
        "rotation_delta": [11, 13, 15],
        "gripper_closedness_action": [17],
        "base_displacement_vertical_rotation": [19],
        "base_displacement_vector": [21, 23],
    }
    low_high = {"rotation_delta": np.pi / 2, "base_displacement_vertical_rotation": np.pi}
    for key, slot_bins in expected.items():
        if key == "terminate_episode":  # one-hot of the token, clipped to the 3 classes
            np.testing.assert_array_equal(action[key], np.eye(3, dtype=np.int32)[min(slot_bins[0], 2)])
        else:  # Google's formula with 32 bins between the key's bounds
            bound = low_high.get(key, 1.0)
            want = np.array(slot_bins) / 31 * 2 * bound - bound
            np.testing.assert_allclose(action[key], want, rtol=0, atol=1e-6, err_msg=key)


def test_the_configuration_of_rt1mains_index_is_rt1mains():
    """infer_config on the real index's names and shapes (../shared/reference/rt1main_variables.tsv)."""
    from rt1.model.google.convert_google import DEFAULT_ACTION_ORDER, infer_config

    if not RT1MAIN_INDEX.is_file():
        pytest.skip(f"{RT1MAIN_INDEX} is not beside this checkout")
    shapes = {}
    for line in RT1MAIN_INDEX.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            shapes[name] = [int(d) for d in shape.split("x")] if shape else []
    config = infer_config(shapes, RT1MAIN_INDEX)
    assert config == GoogleRT1Config(action_order=DEFAULT_ACTION_ORDER)


def _variant(tmp_path, google, change) -> Path:
    from rt1.model.google.convert_google import write_google_checkpoint

    tensors, _ = google
    tensors = dict(tensors)
    change(tensors)
    prefix = tmp_path / "variant" / "ckpt-1"
    prefix.parent.mkdir()
    write_google_checkpoint(prefix, tensors)
    return prefix


KEY = "agent/_actor_network/_transformer/_layers/1/ff/kernel"
BAD_CHECKPOINTS = {
    "missing tensor": (lambda t: t.pop(KEY), f"tensor {KEY} is missing"),
    "other shape": (
        lambda t: t.update({KEY: np.zeros((64, 63), np.float32)}),
        rf"tensor {KEY} has shape \[64, 63\]",
    ),
    "another network": (
        lambda t: [t.pop(k) for k in list(t)] and t.update({"model/dense/kernel": np.zeros(3, np.float32)}),
        "is not a checkpoint of Google's RT-1",
    ),
    "an unknown tensor": (
        lambda t: t.update({"agent/_actor_network/_extra/kernel": np.zeros(3, np.float32)}),
        "tensor agent/_actor_network/_extra/kernel has no place",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_and_nothing_is_written(tmp_path, google, capsys, case):
    change, message = BAD_CHECKPOINTS[case]
    prefix = _variant(tmp_path, google, change)
    out = tmp_path / "out"
    assert convert_cli("--checkpoint", prefix, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["variant"]


def test_a_truncated_or_missing_file_is_one_line(tmp_path, capsys):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(FIXTURE / "ckpt", copy)
    data = copy / "rt1.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    for prefix, message in (
        (copy / "rt1", "cannot be read"),
        (tmp_path / "nothing" / "ckpt-1", "does not exist"),
    ):
        assert convert_cli("--checkpoint", prefix, "--out", tmp_path / "out") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and str(prefix) in err, err
        assert not (tmp_path / "out").exists()
    assert (
        convert_cli(
            "--checkpoint",
            FIXTURE / "ckpt" / "rt1",
            "--out",
            tmp_path / "o",
            "--action-order",
            "world_vector",
        )
        == 2
    )
    assert "--action-order" in capsys.readouterr().err


# ---- fine-tuning from converted weights (train_ddp.py --init-from) ----------------------------------

FIXTURE_SIZES = (
    *("--model.width-coefficient", "0.1", "--model.depth-coefficient", "0.5", "--model.num-layers", "2"),
    *(
        "--model.num-heads",
        "2",
        "--model.key-dim",
        "16",
        "--model.model-dim",
        "64",
        "--model.num-frames",
        "3",
    ),
)


def test_train_ddp_init_from_converted_weights_starts_a_new_run_and_a_resume_stays_one(
    tmp_path, google, segment_dir
):
    """The fixture's network with a 256-bin head (the pipeline's tokens) in Google's layout -> converted ->
    --preset rt1 (the fixture's sizes) --init-from it on the bundled data at native frames, 3-step windows."""
    from conftest import run_script

    from rt1.train.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    out, t = tmp_path / "converted", "agent/_actor_network/_transformer/_output_tokens/"
    prefix = _variant(
        tmp_path,
        google,
        lambda x: x.update(
            {
                t + "kernel": rng.normal(0, 0.1, (64, 256)).astype(np.float32),
                t + "bias": np.zeros(256, np.float32),
                "agent/_actor_network/_action_token_emb/kernel": np.zeros((256, 512), np.float32),
            }
        ),
    )
    assert convert_cli("--checkpoint", prefix, "--out", out, "--action-order", ",".join(FIXTURE_ORDER)) == 0
    pre = tmp_path / "pre"
    run_script(
        "DataPreprocess_batch_all.py",
        "--in-dir",
        segment_dir,
        "--out-dir",
        pre,
        "--image-size",
        "native",
        "--workers",
        "2",
        "--no-progress",
    )
    run_script(
        "data_emerge.py",
        "--data-dir",
        pre,
        "--out-dir",
        tmp_path / "index",
        "--window",
        "3",
        "--val-frac",
        "0",
    )
    (train_csv,) = (tmp_path / "index").glob("train_idx_*.csv")
    save = tmp_path / "save"
    args = [
        "train_ddp.py",
        "--preset",
        "rt1",
        *FIXTURE_SIZES,
        "--data-dir",
        pre,
        "--train-index",
        train_csv,
        "--save-dir",
        save,
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-tensorboard",
        "--init-from",
        out,
    ]
    first = run_script(*args, "--max-steps", "2")
    assert f"initialised the model from {out}" in first.stdout + first.stderr
    (checkpoint,) = save.glob("checkpoint-*.pt")
    contents = load_checkpoint(checkpoint)
    assert contents["train_args"]["init_from"] == str(out) and contents["global_step"] == 2
    assert contents["model_config"]["action_order"] == list(FIXTURE_ORDER)  # the weights' order, kept
    again = run_script(*args, "--max-steps", "3")
    assert "resumed from" in again.stdout + again.stderr and "initialised" not in again.stdout + again.stderr
    # another vocabulary (the fixture's 32 bins) and another network are refused in one line
    small = tmp_path / "small"
    assert convert_cli("--checkpoint", FIXTURE / "ckpt" / "rt1", "--out", small) == 0
    for source, preset, message in ((small, "rt1", "num_bins 32 vs 256"), (out, "tiny", "is Google's RT-1")):
        sizes = FIXTURE_SIZES if preset == "rt1" else ()
        refused = run_script(
            "train_ddp.py",
            "--preset",
            preset,
            *sizes,
            "--data-dir",
            pre,
            "--train-index",
            train_csv,
            "--save-dir",
            tmp_path / f"save_{preset}",
            "--init-from",
            source,
            check=False,
        )
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error")]
        assert refused.returncode == 2 and len(lines) == 1 and message in lines[0], refused.stderr
