"""Closed-loop evaluation: seeds apart from the training data, the training image path, results and GIFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rt1.data.images import JPEG_QUALITY, dataset_jpeg, decode_jpeg, training_frame
from rt1.evaluation.closed_loop import (
    EVAL_STREAM,
    RT1EnvPolicy,
    closed_loop_evaluation,
    evaluate_policy,
    evaluation_episodes,
    expert_factory,
    format_table,
    noop_factory,
    rt1_policy_factory,
    wilson_interval,
)
from rt1.sim.env import FractalSimEnv
from rt1.sim.record import episode_seeds, record_episode
from rt1.sim.scene import TASK_FAMILIES

SUMMARY_KEYS = {"success_rate", "ci95", "episodes", "mean_steps"}


def _scene_key(env: FractalSimEnv, seed: int, family: str | None = None) -> bytes:
    """Everything that makes a scene: instruction, gripper, objects, drawers, looks."""
    env.reset(seed=seed, options={"task_family": family} if family else None)
    s = env.scene
    parts = [
        env.task.instruction.encode(),
        s.gripper.tobytes(),
        s.tint.tobytes(),
        str(s.texture_seed).encode(),
        str(sorted(s.drawer_open.items())).encode(),
    ]
    parts += [o.name.encode() + o.position.tobytes() + bytes([o.upright]) for o in s.objects]
    return b"|".join(parts)


# ----------------------------------------------------------------------------------------------
# Evaluation episodes never are training episodes


def test_evaluation_episodes_are_not_training_episodes():
    n = 400
    env = FractalSimEnv(render_images=False)
    train_seeds = [episode_seeds(i, 0)[0] for i in range(n)]
    evaluation = evaluation_episodes(n, TASK_FAMILIES, seed=0)
    assert not set(train_seeds) & {e.env_seed for e in evaluation}
    train_scenes = {_scene_key(env, s) for s in train_seeds}
    # The family is forced in evaluation; the rest of a scene does not depend on that, so compare both ways.
    eval_scenes = {_scene_key(env, e.env_seed, e.family) for e in evaluation}
    eval_scenes |= {_scene_key(env, e.env_seed) for e in evaluation}
    assert len(train_scenes) == n and not train_scenes & eval_scenes
    # The naive key [seed, EVAL_STREAM, 0] would have been training episode EVAL_STREAM of seed 0.
    assert np.random.default_rng([0, EVAL_STREAM, 0]).integers(2**62) == np.random.default_rng(
        [0, EVAL_STREAM]
    ).integers(2**62)


def test_evaluation_episodes_are_deterministic_balanced_and_checked():
    a, b = evaluation_episodes(14, seed=3), evaluation_episodes(14, seed=3)
    assert a == b and a != evaluation_episodes(14, seed=4)
    assert [e.family for e in a] == list(TASK_FAMILIES) * 2
    assert [e.family for e in evaluation_episodes(4, ["pick", "knock_over"])] == ["pick", "knock_over"] * 2
    with pytest.raises(ValueError, match="at least 1"):
        evaluation_episodes(0)
    with pytest.raises(ValueError, match="juggle"):
        evaluation_episodes(3, ["pick", "juggle"])


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-4 and abs(high - 0.7634) < 1e-4
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert 0.8 < wilson_interval(20, 20)[0] < 0.9 and wilson_interval(0, 0) == [0.0, 1.0]


# ----------------------------------------------------------------------------------------------
# The image path of a training frame


def test_dataset_jpeg_is_the_bytes_tfds_stores():
    pytest.importorskip("tensorflow_datasets")
    from rt1.rlds_spec import tfds_features

    feature = tfds_features()["steps"]["observation"]["image"]
    steps = record_episode(3, seed=0)["steps"]
    for step in steps[::5]:
        image = step["observation"]["image"]
        assert dataset_jpeg(image) == feature.encode_example(image)


def test_training_frame_is_the_frame_stage_2_stored(preprocessed_dir):
    """Env image -> training_frame equals the loader's decode of the preprocessed bundled data."""
    import h5py

    from rt1.data.preprocessed_file import read_episodes

    path = sorted(preprocessed_dir.glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        size = tuple(int(v) for v in f.attrs["image_size"])
        quality = int(f.attrs["jpeg_quality"])
    assert quality == JPEG_QUALITY
    checked = 0
    for episode in read_episodes(path)[:3]:
        steps = record_episode(episode.source_index, seed=0)["steps"]
        for t in range(0, episode.num_steps, 4):
            made = training_frame(steps[t]["observation"]["image"], size, quality)
            assert made.shape == (*size, 3) and np.array_equal(made, episode.images[t])
            checked += 1
    assert checked >= 6


class _RecordingPolicy:
    """Stands in for RT1Policy: remembers its inputs, answers with torch tensors."""

    class config:
        image_size = 32
        frame_size = (32, 32)  # RT1Config's (height, width): what RT1EnvPolicy resizes to

    def __init__(self):
        self.frames, self.resets = [], 0

    def reset(self):
        self.resets += 1

    def step(self, image, text_embed):
        self.frames.append(image)
        return {
            "world_vector": torch.tensor([0.0, 1.0, 0.0]),
            "rotation_delta": torch.zeros(3),
            "gripper_closedness_action": torch.tensor([-1.0]),
            "base_displacement_vector": torch.zeros(2),
            "base_displacement_vertical_rotation": torch.zeros(1),
            "terminate_episode": torch.tensor([0, 1, 0], dtype=torch.int32),
        }


def test_rt1_env_policy_sees_training_frames_and_gives_env_actions():
    inner = _RecordingPolicy()
    policy = RT1EnvPolicy(inner, jpeg_quality=80)
    env = FractalSimEnv(max_steps=3)
    obs, _ = env.reset(seed=0)
    policy.reset()
    action = policy(obs)
    assert np.array_equal(inner.frames[0], training_frame(obs["image"], 32, 80)) and inner.resets == 1
    assert action["world_vector"].dtype == np.float32 and action["terminate_episode"].dtype == np.int32
    env.step(action)
    assert np.array_equal(decode_jpeg(dataset_jpeg(obs["image"])).shape, obs["image"].shape)


def test_rt1_env_policy_resizes_to_a_non_square_frame_size():
    inner = _RecordingPolicy()
    inner.config = type("config", (), {"frame_size": (48, 80)})
    obs, _ = FractalSimEnv(max_steps=3).reset(seed=0)
    RT1EnvPolicy(inner)(obs)
    assert np.array_equal(inner.frames[0], training_frame(obs["image"], (48, 80)))
    assert inner.frames[0].shape == (48, 80, 3)


# ----------------------------------------------------------------------------------------------
# Evaluation runs


def test_expert_and_noop_baselines_on_the_same_seeds():
    expert = evaluate_policy(expert_factory, 14, seed=0, render_images=False)
    noop = evaluate_policy(noop_factory, 14, seed=0, render_images=False, max_steps=30)
    assert expert["overall"]["success_rate"] == 1.0 and noop["overall"]["success_rate"] == 0.0
    assert [e["env_seed"] for e in expert["episodes"]] == [e["env_seed"] for e in noop["episodes"]]
    assert noop["overall"]["mean_steps"] == 30 and expert["overall"]["mean_steps"] < 30
    assert set(expert["per_family"]) == set(TASK_FAMILIES)
    assert all(s["episodes"] == 2 and set(s) == SUMMARY_KEYS for s in expert["per_family"].values())


def test_tiny_random_model_writes_results_and_a_readable_gif(tmp_path, one_thread):
    from PIL import Image

    from rt1.config import PRESETS
    from rt1.model import RT1

    torch.manual_seed(0)
    model = RT1(PRESETS["tiny"].model).eval()
    families = ["pick", "open_drawer"]
    results = closed_loop_evaluation(
        rt1_policy_factory(model),
        episodes=2,
        families=families,
        seed=0,
        max_steps=40,
        out_dir=tmp_path,
        videos=1,
        settings={"checkpoint": "random"},
    )
    stored = json.loads((tmp_path / "results.json").read_text())
    assert {"policy", "expert", "noop"} <= set(stored) and stored["settings"]["checkpoint"] == "random"
    for name in ("policy", "expert", "noop"):
        assert set(stored[name]["overall"]) == SUMMARY_KEYS and set(stored[name]["per_family"]) == set(
            families
        )
        low, high = stored[name]["overall"]["ci95"]
        assert 0.0 <= low <= stored[name]["overall"]["success_rate"] <= high <= 1.0
        assert stored[name]["overall"]["episodes"] == 2
    assert (
        stored["expert"]["overall"]["success_rate"] == 1.0
        and stored["noop"]["overall"]["success_rate"] == 0.0
    )
    assert "policy" in format_table(results) and "overall" in format_table(results)
    gifs = list((tmp_path / "videos").glob("*.gif"))
    assert [str(p) for p in gifs] == stored["policy"]["videos"] and len(gifs) == 1
    first = stored["policy"]["episodes"][0]
    with Image.open(gifs[0]) as gif:
        assert gif.format == "GIF" and gif.n_frames == first["steps"] + 1
        assert gif.size == (320, 256 + 36)


# ----------------------------------------------------------------------------------------------
# The command line


def test_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    from rt1.evaluation.closed_loop_cli import main

    missing = tmp_path / "nope.pt"
    assert main(["--checkpoint", str(missing), "--episodes", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint {missing} does not exist"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad), "--episodes", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {bad} cannot be read") and len(err.splitlines()) == 1
    assert main(["--checkpoint", str(bad), "--episodes", "0", "--out", str(tmp_path / "out")]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _random_tiny_checkpoint(path):
    """A checkpoint of the tiny preset with seeded random weights, as training writes it."""
    from rt1.config import PRESETS
    from rt1.model import RT1
    from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

    torch.manual_seed(0)
    config = PRESETS["tiny"].model
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": RT1(config).state_dict(),
            "model_config": config.to_dict(),
            "train_args": {},
        },
        path,
    )
    return path


def test_cli_writes_results_json_with_the_three_policies(tmp_path, capsys, one_thread):
    from rt1.evaluation.closed_loop_cli import main

    checkpoint = _random_tiny_checkpoint(tmp_path / "checkpoint-1.pt")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--episodes",
                "2",
                "--task-family",
                "knock_over",
                "--max-steps",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "overall" in capsys.readouterr().out
    stored = json.loads((out / "results.json").read_text())
    for name in ("policy", "expert", "noop"):
        assert set(stored[name]["overall"]) == SUMMARY_KEYS and list(stored[name]["per_family"]) == [
            "knock_over"
        ]
    assert stored["settings"]["checkpoint"] == str(checkpoint)


# ----------------------------------------------------------------------------------------------
# Open-loop replay


class _ScriptPolicy:
    """Answers the recorded actions of one episode in order (exact replay), or a constant action."""

    def __init__(self, actions=None):
        self.actions, self.t = actions, 0

    def reset(self):
        self.t = 0

    def __call__(self, obs):
        from rt1.sim.expert import make_action

        if self.actions is None:
            return make_action()
        action = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return action


def test_replay_errors_are_zero_for_the_recorded_actions_and_the_actions_themselves_for_a_noop():
    from rt1.evaluation.replay import REPLAY_DIMS, format_replay, replay_episode, replay_summary

    index = next(
        i
        for i in range(20)
        if record_episode(i, 0)["attributes"]["task_family_name"] == "pick"
        and len(record_episode(i, 0)["steps"]) > 8
    )
    steps = record_episode(index, 0)["steps"]
    actions = [s["action"] for s in steps]
    exact = replay_episode(lambda env: _ScriptPolicy(actions), index, data_seed=0)
    assert (
        exact["steps"] == len(steps)
        and exact["family"] == "pick"
        and set(exact["abs_error"]) == set(REPLAY_DIMS)
    )
    assert all(max(v) == 0.0 for v in exact["abs_error"].values())
    # Replaying the labels in closed loop from the same scene: DART's noise is not executed, the task still succeeds.
    assert exact["closed_loop"]["success"]
    noop = replay_episode(lambda env: _ScriptPolicy(None), index, data_seed=0)
    recorded_x = [abs(float(a["world_vector"][0])) for a in actions]
    assert np.allclose(noop["abs_error"]["world_x"], recorded_x, atol=1e-4)
    assert noop["abs_error"]["terminate"][-1] == 1.0 and noop["abs_error"]["terminate"][0] == 0.0
    assert noop["abs_error"]["gripper"][0] == 0.0 and max(noop["abs_error"]["gripper"]) == 2.0
    assert not noop["closed_loop"]["success"] and noop["closed_loop"]["steps"] == 80
    summary = replay_summary([exact, noop])
    assert summary["by_step"]["step 0"]["world_x"] == round(recorded_x[0] / 2, 4)
    assert summary["closed_loop"]["success_rate"] == 0.5
    text = format_replay({"data_seed": 0, "episodes": [exact, noop], "summary": summary})
    assert "steps 6+" in text and "success" in text


def test_cli_replay_writes_the_replay_next_to_the_evaluation(tmp_path, capsys, one_thread):
    from rt1.evaluation.closed_loop_cli import main

    checkpoint = _random_tiny_checkpoint(tmp_path / "checkpoint-1.pt")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--episodes",
                "1",
                "--task-family",
                "pick",
                "--max-steps",
                "5",
                "--replay",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "open-loop replay" in printed and "steps 1-5" in printed
    replay = json.loads((out / "results.json").read_text())["replay"]
    assert [e["index"] for e in replay["episodes"]] == [0, 1]
    for e in replay["episodes"]:
        assert len(e["abs_error"]["world_x"]) == len(record_episode(e["index"], 0)["steps"])
        assert e["closed_loop"]["steps"] <= 5
    assert (
        main(["--checkpoint", str(checkpoint), "--episodes", "1", "--replay", "-1", "--out", str(out)]) == 2
    )
