"""RT-1-X (the Open X-Embodiment release, JAX/Flax) as a configuration of Google's network, proved against the
release's own code: tests/fixtures/rtx_jax/ was made by `make_rtx_fixture.py` in the reference venv (its
docstring: a reduced RT-1-X with perturbed weights and calibrated BatchNorm statistics, 15 frames, 9 image
tokens of a 10x10 map, 32 bins). Only our venv is needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from conftest import REPO
from torch import nn

from rt1.actions import ACTION_KEYS, ActionTokenizer, detokenize, token_index, tokenize
from rt1.errors import one_line
from rt1.google_config import RTX_ACTION_ORDER, RTX_CONFIG, GoogleRT1Config
from rt1.model.google.network import GoogleRT1, preprocess
from rt1.model.google.rtx_checkpoint import (
    RTXCheckpointError,
    is_rtx_checkpoint,
    state_dict_and_config_from_rtx,
)
from rt1.model.google.transformer import rtx_attention_mask
from rt1.model_config import ConfigError
from rt1.policy import RT1Policy

FIXTURE = REPO / "tests" / "fixtures" / "rtx_jax"
CHECKPOINT = FIXTURE / "variables.msgpack"
TOLERANCE = 1e-4
MUTATION_MIN = 1e-2
# the release's token (output slot) i carries rt1.actions' token RELEASE_SLOTS[i] (its rt1.py L287-305)
RELEASE_SLOTS = (10, 0, 1, 2, 3, 4, 5, 6, 9, 7, 8)
# the release's slots in rt1.actions' order: our network permutes its logits the same way (action_order)
IN_RT1_ORDER = list(token_index(RTX_ACTION_ORDER))


@pytest.fixture(scope="module")
def io():
    with np.load(FIXTURE / "io.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    config, state_dict, ignored = state_dict_and_config_from_rtx(
        CHECKPOINT, image_height=300, image_width=300
    )
    return config, state_dict, ignored


def build(config: GoogleRT1Config, state_dict: dict) -> GoogleRT1:
    model = GoogleRT1(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def action_logits(io: dict, config: GoogleRT1Config) -> np.ndarray:
    """The release's logits (2, 300, V) at every action position -> (2, 15, 11, V), in rt1.actions' token
    order (the release's slots permuted as GoogleRT1 permutes its own)."""
    n, step = config.num_learned_tokens, config.tokens_per_step
    read = (np.arange(config.num_frames)[:, None] * step + n - 1 + np.arange(11)[None]).flatten()
    return io["window_logits"][:, read].reshape(2, config.num_frames, 11, -1)[:, :, IN_RT1_ORDER]


def windows(io: dict) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.from_numpy(np.stack([io["episode_a"][:15], io["episode_b"]]))
    return frames, torch.from_numpy(np.stack([io["embedding_a"], io["embedding_b"]]))


@torch.no_grad()
def logits_of(model: GoogleRT1, io: dict) -> np.ndarray:
    return model(*windows(io)).numpy()


# ---- the configuration ---------------------------------------------------------------------------


def test_rtx_config_has_the_release_size():
    with torch.device("meta"):
        model = GoogleRT1(RTX_CONFIG)
    params = sum(p.numel() for p in model.parameters())
    stats = sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    assert (params, stats) == (56_896_809, 87_296)
    assert RTX_CONFIG.feature_map_size == 10 and RTX_CONFIG.tokens_per_step == 92
    assert not hasattr(model, "action_token_embedding") and model.trains_every_parameter


def test_rt1main_config_is_unchanged_and_every_saved_field_is_required():
    """RT-1-X's fields default to rt1main's values; a saved config names every field (a missing one would
    silently become rt1main's choice, another network)."""
    saved = GoogleRT1Config().to_dict()
    new_fields = {f: saved[f] for f in RTX_FIELD_NAMES if f in saved}
    assert new_fields == {
        "stride2_padding": "tf_asymmetric",
        "feed_forward": "linear",
        "image_attends_past_actions": True,
        "action_token_embedding": True,
        "preprocessing": "google",
        "episode_start": "prefix",
        "world_vector_bound": 1.0,
        "action_order": list(ACTION_KEYS),
    }
    assert GoogleRT1Config.from_dict(saved) == GoogleRT1Config()
    assert RTX_CONFIG.to_dict()["action_order"] == list(RTX_ACTION_ORDER)
    assert GoogleRT1Config.from_dict(RTX_CONFIG.to_dict()) == RTX_CONFIG
    for name in new_fields:
        with pytest.raises(ConfigError, match=f"no field {name!r}"):
            GoogleRT1Config.from_dict({k: v for k, v in saved.items() if k != name})


def test_rtx_action_order_is_the_release_slot_mapping():
    """The tuple of keys gives the release's slot -> token mapping (rtx-38's RTX_TOKEN_ORDER)."""
    assert [RELEASE_SLOTS[j] for j in IN_RT1_ORDER] == list(range(11))
    assert RTX_CONFIG.action_order == RTX_ACTION_ORDER != ACTION_KEYS
    # (that GoogleRT1 applies it: test_logits_equal_the_release compares in rt1.actions' order)


RTX_FIELD_NAMES = (
    "stride2_padding",
    "feed_forward",
    "image_attends_past_actions",
    "action_token_embedding",
    "preprocessing",
    "episode_start",
    "action_order",
    "world_vector_bound",
)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"stride2_padding": "valid"}, ["stride2_padding", "'valid'"]),
        ({"feed_forward": "gelu"}, ["feed_forward", "'gelu'"]),
        ({"image_attends_past_actions": 1}, ["image_attends_past_actions", "1"]),
        ({"world_vector_bound": -2.0}, ["world_vector_bound", "-2.0"]),
        ({"preprocessing": "rtx", "encoder_input_size": 256}, ["encoder_input_size=256", "300"]),
    ],
)
def test_config_errors_name_the_value(changes, words):
    with pytest.raises(ConfigError) as e:
        GoogleRT1Config(**changes)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_rtx_preprocessing_passes_a_300x300_frame_unchanged():
    frames = torch.randint(0, 256, (2, 300, 300, 3), dtype=torch.uint8)
    assert torch.equal(preprocess(frames, 300, resize_first=True), frames.permute(0, 3, 1, 2).float() / 255.0)
    camera = torch.randint(0, 256, (2, 256, 320, 3), dtype=torch.uint8)
    diff = (preprocess(camera, 300, resize_first=True) - preprocess(camera, 300)).abs().max()
    assert diff < 1e-6  # resize-then-scale (the release) = scale-then-resize (Google's encoder)
    assert RTX_CONFIG.pixel_processing()["pixel_scaling"] == "rtx"


def test_action_tokenizer_of_rtx():
    tok = ActionTokenizer.of(RTX_CONFIG)
    assert (tok.num_bins, tok.world_vector_bound) == (512, 2.0)
    rs = np.random.RandomState(0)
    actions = {
        "world_vector": rs.uniform(-2, 2, (5, 3)),
        "rotation_delta": rs.uniform(-1.5, 1.5, (5, 3)),
        "gripper_closedness_action": rs.uniform(-1, 1, (5, 1)),
        "base_displacement_vector": rs.uniform(-1, 1, (5, 2)),
        "base_displacement_vertical_rotation": rs.uniform(-3, 3, (5, 1)),
        "terminate_episode": np.eye(3, dtype=np.int32)[rs.randint(0, 3, 5)],
    }
    tokens = tok.tokenize(actions)  # rt1.actions' order: the network's logits come out in it
    assert np.array_equal(tokens, tokenize(actions, 512, *tok.bounds))
    expected_world = np.floor((actions["world_vector"] + 2) / 4 * 511)
    assert np.array_equal(tokens[:, 0:3], expected_world)
    back = tok.detokenize(tokens)
    assert np.abs(back["world_vector"] - actions["world_vector"]).max() <= 4 / 511 + 1e-6
    assert np.array_equal(back["terminate_episode"], actions["terminate_episode"])
    invalid = np.zeros(11, np.int64)
    invalid[10] = 4  # RT1Policy.action: an invalid terminate token -> [0, 0, 1]
    assert tok.detokenize(invalid)["terminate_episode"].tolist() == [0, 0, 1]
    assert detokenize(np.zeros(11, np.int64))["world_vector"].tolist() == [
        -1.0,
        -1.0,
        -1.0,
    ]  # RT-1's unchanged


# ---- the checkpoint reader and equality with the release -------------------------------------------


def test_reader_infers_the_fixture_config(converted, io):
    config, state_dict, ignored = converted
    made = json.loads(str(io["config_json"]))
    assert ignored == []
    assert (config.width_coefficient, config.depth_coefficient) == (0.1, 0.5)
    assert (config.num_learned_tokens, config.num_frames, config.num_layers) == (9, 15, 2)
    assert (config.num_heads, config.key_dim, config.model_dim, config.num_bins) == (2, 16, 32, 32)
    assert {k: v for k, v in config.to_dict().items() if k in RTX_FIELD_NAMES} == {
        k: v for k, v in RTX_CONFIG.to_dict().items() if k in RTX_FIELD_NAMES
    }
    assert sum(v.numel() for v in state_dict.values()) == made["parameters"] + made["batch_stats"]


def test_logits_equal_the_release(converted, io):
    config, state_dict, _ = converted
    model = build(config, state_dict)
    diff = np.abs(logits_of(model, io) - action_logits(io, config)).max()
    assert diff <= TOLERANCE, f"max |logit diff| {diff:.2e}"
    mask = rtx_attention_mask(15, config.num_learned_tokens, 11)
    assert np.array_equal(mask.numpy(), io["attention_mask"].astype(bool))
    with torch.no_grad():
        frames, texts = windows(io)
        tokens = model.encode_frames(frames[0, :2], texts[:1].expand(2, -1))
    assert np.abs(tokens.numpy() - io["image_tokens"]).max() <= TOLERANCE


def _linear_feed_forward(model: GoogleRT1) -> None:
    for layer in model.decoder.layers:  # Google's single linear feed-forward with SwiGLU's output weights
        linear = nn.Linear(layer.ff.w2.in_features, layer.ff.w2.out_features)
        linear.weight.data.copy_(layer.ff.w2.weight.data)
        nn.init.zeros_(linear.bias)
        layer.ff = linear


def _eight_tokens(config: GoogleRT1Config, state_dict: dict) -> tuple[GoogleRT1Config, dict]:
    config = config.replace(num_learned_tokens=8)  # rt1main's count: the first 8 of the TokenLearner's maps
    sd = dict(state_dict)
    sd["token_learner.output.weight"] = sd["token_learner.output.weight"][:8]
    sd["token_learner.output.bias"] = sd["token_learner.output.bias"][:8]
    sd["decoder.position_embedding.weight"] = sd["decoder.position_embedding.weight"][:, : 15 * 19]
    return config, sd


@pytest.mark.parametrize("mutation", ["tf_padding", "8_tokens", "linear_ff", "google_mask"])
def test_each_rtx_difference_matters(converted, io, mutation):
    config, state_dict, _ = converted
    expected = action_logits(io, config)
    if mutation == "tf_padding":
        model = build(config.replace(stride2_padding="tf_asymmetric"), state_dict)  # a 9x9 map
    elif mutation == "8_tokens":
        model = build(*_eight_tokens(config, state_dict))
    elif mutation == "linear_ff":
        model = build(config, state_dict)
        _linear_feed_forward(model)
    else:
        model = build(config.replace(image_attends_past_actions=True), state_dict)
    moved = np.abs(logits_of(model, io) - expected).max()
    assert moved > MUTATION_MIN, f"{mutation} moved the logits by only {moved:.2e}"


# ---- python -m rt1.model.convert_google on RT-1-X's checkpoint ----------------------------------------


def test_the_converter_takes_rtx_and_its_directory_gives_the_release_logits(tmp_path, io, capsys):
    """The command detects RT-1-X's Flax file; load_model's model gives the release's logits (rt1.actions'
    order) from the fixture's 300x300 frames (the directory's frame size is the camera's 256x320, which the
    network resizes to 300x300 as the fixture's frames already are: encode_frames + decode, as the policy)."""
    from rt1.model import load_model
    from rt1.model.google.convert_google import main

    out = tmp_path / "rtx"
    assert main(["--checkpoint", str(CHECKPOINT), "--out", str(out)]) == 0
    assert "RT-1-X" in capsys.readouterr().out
    model, config, _ = load_model(out)
    exported = json.loads((out / "config.json").read_text())
    assert (
        config.action_order == RTX_ACTION_ORDER and config.num_bins == 32 and config.frame_size == (256, 320)
    )
    assert exported["conversion"]["action_order"] == list(RTX_ACTION_ORDER)
    assert exported["action_tokenizer"]["keys"][0] == {
        "key": "world_vector",
        "tokens": [0, 3],
        "low": -2.0,
        "high": 2.0,
    }
    frames, texts = windows(io)
    with torch.no_grad():
        cond = model.condition(texts).repeat_interleave(15)
        tokens = model.encode_frames(frames.flatten(0, 1), cond)
        logits = model.decode(tokens.view(2, 15, *tokens.shape[1:])).numpy()
    diff = np.abs(logits - action_logits(io, config)).max()
    assert diff <= TOLERANCE, f"max |logit diff| {diff:.2e}"


def test_the_converter_refuses_orbax_ocdbt_in_one_line(tmp_path):
    from rt1.model.google.convert_google import ConvertError, convert

    ocdbt = tmp_path / "rt_1_x_jax"
    (ocdbt / "d").mkdir(parents=True)
    (ocdbt / "manifest.ocdbt").write_bytes(b"x")
    with pytest.raises(ConvertError) as e:
        convert(ocdbt, tmp_path / "out")
    assert "Orbax OCDBT" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


# ---- the policy: 15-frame windows as the release's RT1Policy -----------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_policy_acts_as_the_release_rt1policy(converted, io, use_cache):
    config, state_dict, _ = converted
    policy = RT1Policy(build(config, state_dict), use_cache=use_cache)
    episode = io["episode_a"]
    worst = 0.0
    for t in range(len(episode)):  # steps 0..13 with zero steps in the window, 14..16 full windows
        action = policy.step(episode[t], io["embedding_a"])
        release_logits = io["policy_logits"][t][IN_RT1_ORDER]  # the release's slots in rt1.actions' order
        worst = max(worst, float(np.abs(policy.last_logits.numpy() - release_logits).max()))
        assert np.array_equal(policy.last_tokens, io["policy_tokens"][t][IN_RT1_ORDER]), f"step {t}"
        for key, value in action.items():
            release = io[f"policy_action_{key}"][t]
            assert np.allclose(value, release, atol=1e-6), f"step {t} {key}: {value} vs {release}"
    assert worst <= TOLERANCE, f"max |logit diff| {worst:.2e}"
    predicted, logits = policy.predict_episode(episode, io["embedding_a"], return_logits=True)
    assert np.array_equal(predicted, io["policy_tokens"][:, IN_RT1_ORDER])
    assert np.abs(logits.numpy() - io["policy_logits"][:, IN_RT1_ORDER]).max() <= TOLERANCE


# ---- reader formats and errors --------------------------------------------------------------------


def _raw_tree() -> dict:
    return msgpack.unpackb(CHECKPOINT.read_bytes(), raw=False)  # arrays stay msgpack ExtType


def _write(path: Path, tree: dict) -> Path:
    path.write_bytes(msgpack.packb(tree))
    return path


def test_reader_layouts_and_ignored_entries(tmp_path, converted):
    _, reference, _ = converted
    tree = _raw_tree()
    tree["step"], tree["opt_state"] = 5, {"mu": 1.0}
    step_dir = tmp_path / "rt_1_x_jax" / "checkpoint_7"
    step_dir.mkdir(parents=True)
    _write(step_dir / "checkpoint", tree)
    (step_dir / "_METADATA").write_text("{}")
    (tmp_path / "rt_1_x_jax" / "checkpoint_3").mkdir()
    for path in (tmp_path / "rt_1_x_jax", step_dir, step_dir / "checkpoint"):
        assert is_rtx_checkpoint(path)
        config, state_dict, ignored = state_dict_and_config_from_rtx(path, image_height=300, image_width=300)
        assert ignored == ["opt_state", "step"]
        assert all(torch.equal(state_dict[k], reference[k]) for k in reference)


def test_reader_errors_are_one_line(tmp_path):
    ocdbt = tmp_path / "ocdbt"
    (ocdbt / "d").mkdir(parents=True)
    (ocdbt / "manifest.ocdbt").write_bytes(b"x")
    assert is_rtx_checkpoint(ocdbt)
    tf_dir = tmp_path / "tf"
    tf_dir.mkdir()
    (tf_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    assert not is_rtx_checkpoint(tf_dir)
    missing, extra, shape = _raw_tree(), _raw_tree(), _raw_tree()
    del missing["params"]["Transformer_0"]["Dense_2"]["bias"]
    extra["params"]["image_tokenizer"]["Surprise_0"] = {
        "kernel": extra["params"]["Transformer_0"]["Dense_2"]["bias"]
    }
    learner = shape["params"]["image_tokenizer"]["TokenLearnerModuleV11_0"]["token_masking"]
    shape["params"]["Transformer_0"]["TransformerBlock_1"]["Dense_1"]["kernel"] = learner["Dense_0"]["kernel"]
    cases = {
        ocdbt: ["Orbax OCDBT", "manifest.ocdbt"],
        tf_dir: ["not a Flax msgpack checkpoint"],
        _write(tmp_path / "missing", missing): ["Transformer_0/Dense_2/bias"],
        _write(tmp_path / "extra", extra): ["no place in RT-1-X", "Surprise_0"],
        _write(tmp_path / "shape", shape): [
            "TransformerBlock_1/Dense_1/kernel",
            "decoder.layers.1.ff.w3.weight",
        ],
        _write(tmp_path / "empty", {"step": 1}): ["no 'params'"],
    }
    for path, words in cases.items():
        with pytest.raises(RTXCheckpointError) as e:
            state_dict_and_config_from_rtx(path)
            pytest.fail(f"{path.name}: no error")
        message = one_line(e.value)
        assert message == str(e.value) and all(w in message for w in words), message
