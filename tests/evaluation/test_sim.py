"""The simulated fractal scene: gymnasium API and spaces, world rules, the scripted expert, recording."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import flatten_dict

from rt1.rlds_spec import ACTION_SPEC, EPISODE_METADATA_SPEC, OBSERVATION_VECTORS, STEP_SPEC
from rt1.sim.env import FractalSimEnv, register_env
from rt1.sim.expert import ScriptedExpert, make_action, noop_policy
from rt1.sim.record import DART_STD, episode_seeds, record_episode, record_rollout
from rt1.sim.scene import TASK_FAMILIES, drawer_handle, instruction_embedding


def _rollout(env: FractalSimEnv, policy, seed: int, family: str | None = None) -> tuple[dict, list[dict]]:
    """Run one episode; returns (final info, observations including the first)."""
    obs, info = env.reset(seed=seed, options={"task_family": family} if family else None)
    if hasattr(policy, "reset"):
        policy.reset()
    observations = [obs]
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        observations.append(obs)
        assert reward == float(info["success"])
        if terminated or truncated:
            return info, observations


# ----------------------------------------------------------------------------------------------
# API and spaces


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_reset_gives_an_rlds_observation_inside_the_space(family):
    env = FractalSimEnv()
    obs, info = env.reset(seed=5, options={"task_family": family})
    assert info == {"success": False, "task_family": family, "steps": 0}
    text_keys = {"image", "natural_language_instruction", "natural_language_embedding"}
    assert set(obs) == set(OBSERVATION_VECTORS) | text_keys
    assert obs["image"].shape == (256, 320, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 10
    assert isinstance(obs["natural_language_instruction"], str)
    embedding = obs["natural_language_embedding"]
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert np.array_equal(embedding, instruction_embedding(obs["natural_language_instruction"]))
    for key, spec in OBSERVATION_VECTORS.items():
        assert obs[key].shape == spec.shape and obs[key].dtype == np.float32, key
    assert env.observation_space.contains(obs)
    assert set(env.action_space.spaces) == set(ACTION_SPEC)
    for key, spec in ACTION_SPEC.items():
        assert env.action_space[key].shape == spec.shape and env.action_space[key].dtype == np.dtype(
            spec.dtype
        )


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice only (RT-1's rotation bounds are not [-1, 1])
        check_env(FractalSimEnv(render_mode="rgb_array", max_steps=20))
        import gymnasium

        env = gymnasium.make(register_env(), render_mode="rgb_array", max_steps=20)
        check_env(env.unwrapped)
    assert env.reset(seed=0)[0]["image"].shape == env.render().shape == (256, 320, 3)


def test_instruction_embedding_is_the_bundled_datasets():
    # Values of rt1.sim.mini_fractal.instruction_embedding, which recorded data must keep.
    e = instruction_embedding("pick coke can")
    assert np.allclose(e[:4], [0.07632937, -0.03921415, -0.01740611, 0.00672644], atol=1e-7)
    assert abs(np.linalg.norm(e) - 1) < 1e-5
    # Word order matters: which object to move is in the order of the names (words alone gave cosine 1.0).
    a, b = (
        instruction_embedding("move coke can near pepsi can"),
        instruction_embedding("move pepsi can near coke can"),
    )
    assert float(a @ b) < 0.9


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda a: a.pop("world_vector"), "world_vector"),
        (lambda a: a.update(gripper=np.zeros(1)), "gripper"),
        (lambda a: a.update(rotation_delta=np.zeros(4)), "rotation_delta"),
        (lambda a: a.update(terminate_episode=np.array([[0, 1, 0]])), "terminate_episode"),
        (lambda a: a.update(world_vector=np.array([0.0, np.nan, 0.0])), "world_vector"),
        (lambda a: a.update(gripper_closedness_action=np.array([np.inf])), "gripper_closedness_action"),
        (lambda a: a.update(base_displacement_vector=["a", "b"]), "base_displacement_vector"),
    ],
)
def test_bad_actions_raise_a_one_line_error_naming_the_key(change, key):
    env = FractalSimEnv(render_images=False)
    env.reset(seed=0)
    action = make_action()
    change(action)
    with pytest.raises(ValueError, match=key) as error:
        env.step(action)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="dict"):
        env.step([0.0] * 11)
    with pytest.raises(ValueError, match="task_family"):
        env.reset(seed=0, options={"task_family": "juggle"})
    with pytest.raises(ValueError, match="bogus"):
        env.reset(seed=0, options={"bogus": 1})


def test_stepping_before_reset_or_after_the_end_is_refused():
    env = FractalSimEnv(render_images=False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(make_action())
    env.reset(seed=0)
    env.step(make_action(terminate=True))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(make_action())


# ----------------------------------------------------------------------------------------------
# World rules


def test_terminate_action_ends_the_episode_and_the_step_limit_truncates():
    env = FractalSimEnv(render_images=False, max_steps=7)
    env.reset(seed=1, options={"task_family": "pick"})
    _obs, reward, terminated, truncated, info = env.step(make_action(terminate=True))
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)
    info, observations = _rollout(env, noop_policy, seed=1)
    assert len(observations) == 8 and info["steps"] == 7 and not info["success"]


def test_gripper_grasps_lifts_releases_and_the_object_falls():
    env = FractalSimEnv(render_images=False)
    env.reset(seed=2, options={"task_family": "pick"})
    target = env.target_object()
    env.scene.gripper = target.position + np.array([0.0, 0.0, 0.05])  # within reach
    obs, *_ = env.step(make_action(gripper=1.0))
    assert env.scene.held is target and obs["gripper_closed"][0] == 1.0
    for _ in range(3):
        *_, info = env.step(make_action((0.0, 0.0, 1.0), gripper=1.0))
    assert target.position[2] > 0.2 and not info["success"]
    _obs, reward, terminated, _trunc, info = env.step(make_action((0.0, 0.0, 1.0), gripper=1.0))
    assert target.position[2] >= 0.25 and reward == 1.0 and terminated and info["success"]

    env.reset(seed=2, options={"task_family": "move_near"})
    target = env.target_object()
    env.scene.gripper = target.position.copy()
    env.step(make_action(gripper=1.0))
    env.step(make_action((0.0, 0.0, 1.0), gripper=1.0))
    env.step(make_action(gripper=-1.0))
    assert env.scene.held is None and target.position[2] == 0.0 and not env.scene.gripper_closed


def test_a_held_handle_slides_its_drawer_and_open_drawer_succeeds():
    env = FractalSimEnv(render_images=False)
    env.reset(seed=3, options={"task_family": "open_drawer"})
    drawer = env.task.drawer
    env.scene.gripper = drawer_handle(drawer, 0.0)
    env.step(make_action(gripper=1.0))
    assert env.scene.held_drawer == drawer
    opened = []
    for _ in range(4):
        _obs, reward, terminated, _trunc, info = env.step(make_action((1.0, 0.3, 0.0), gripper=1.0))
        opened.append(env.scene.drawer_open[drawer])
        assert np.allclose(env.scene.gripper, drawer_handle(drawer, opened[-1]))  # stays on the handle
        if terminated:
            break
    assert np.all(np.diff(opened) > 0) and info["success"] and opened[-1] > 0.75


def test_place_upright_needs_pitch_and_knock_over_needs_a_push():
    env = FractalSimEnv(render_images=False)
    env.reset(seed=4, options={"task_family": "place_upright"})
    target = env.target_object()
    env.scene.gripper = target.position.copy()
    env.step(make_action(gripper=1.0))
    env.step(make_action(rotation_delta=(0.0, 0.0, 0.5), gripper=1.0))  # yaw does not right it
    assert not target.upright
    for _ in range(3):
        env.step(make_action(rotation_delta=(0.0, 0.4, 0.0), gripper=1.0))
    assert target.upright
    *_, info = env.step(make_action(gripper=-1.0))
    assert info["success"]

    env.reset(seed=4, options={"task_family": "knock_over"})
    target = env.target_object()
    env.scene.gripper = target.position + np.array([0.0, 0.0, 0.3])
    env.step(make_action((0.0, 1.0, 0.0)))  # too high to touch it
    env.scene.gripper = target.position + np.array([0.01, 0.0, 0.0])
    env.step(make_action((0.0, 0.0, 0.0)))  # standing in it without pushing
    assert target.upright
    _obs, reward, terminated, _trunc, info = env.step(make_action((0.0, 1.0, 0.0)))
    assert not target.upright and reward == 1.0 and terminated and info["success"]


# ----------------------------------------------------------------------------------------------
# Expert and baselines


def test_expert_solves_at_least_98_percent_of_200_noisy_episodes():
    env = FractalSimEnv(render_images=False)  # rendering does not change the world; tested below
    expert = ScriptedExpert(env, noise_std=0.03, seed=0)
    results: dict[str, list[bool]] = {f: [] for f in TASK_FAMILIES}
    for seed in range(200):
        info, _ = _rollout(env, expert, seed=seed, family=TASK_FAMILIES[seed % len(TASK_FAMILIES)])
        results[info["task_family"]].append(info["success"])
    overall = np.mean([s for v in results.values() for s in v])
    assert overall >= 0.98, {f: np.mean(v) for f, v in results.items()}
    assert all(np.mean(v) >= 0.9 for v in results.values()), {f: np.mean(v) for f, v in results.items()}


def test_expert_with_rendering_succeeds_and_terminates_when_done():
    env = FractalSimEnv()
    expert = ScriptedExpert(env, noise_std=0.03, seed=1)
    for seed, family in enumerate(TASK_FAMILIES):
        info, observations = _rollout(env, expert, seed=100 + seed, family=family)
        assert info["success"], family
        assert not np.array_equal(observations[0]["image"], observations[-1]["image"]), family
        assert expert(observations[-1])["terminate_episode"].tolist() == [1, 0, 0]


def test_noop_policy_never_succeeds():
    env = FractalSimEnv(render_images=False)
    results = [_rollout(env, noop_policy, seed=seed)[0] for seed in range(200)]
    assert sum(r["success"] for r in results) == 0
    assert all(r["steps"] == env.max_steps for r in results)  # never terminates: truncated


def test_same_seed_same_episode():
    def run(seed: int) -> list[dict]:
        env = FractalSimEnv()
        return _rollout(env, ScriptedExpert(env, seed=seed), seed=seed)[1]

    first, again, other = run(7), run(7), run(8)
    assert len(first) == len(again)
    for a, b in zip(first, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


# ----------------------------------------------------------------------------------------------
# Recording


def test_record_episode_has_the_tfds_example_layout_and_is_deterministic():
    episodes = [record_episode(i, seed=0) for i in range(60)]
    lengths, families, cut = [], set(), 0
    for episode in episodes:
        meta = flatten_dict({"aspects": episode["aspects"], "attributes": episode["attributes"]})
        assert set(meta) == set(EPISODE_METADATA_SPEC)
        steps = episode["steps"]
        lengths.append(len(steps))
        families.add(episode["attributes"]["task_family_name"])
        cut += not episode["aspects"]["success"]
        for i, step in enumerate(steps):
            flat = flatten_dict(step)
            assert set(flat) == set(STEP_SPEC)
            for path, spec in STEP_SPEC.items():
                if spec.dtype == "string":
                    assert isinstance(flat[path], str), path
                else:
                    value = np.asarray(flat[path])
                    assert value.shape == spec.shape, (path, value.shape)
                    assert value.dtype == np.dtype(spec.dtype), (path, value.dtype)
            assert step["is_first"] == (i == 0) and step["is_last"] == step["is_terminal"] == (
                i == len(steps) - 1
            )
            expected = [1, 0, 0] if i == len(steps) - 1 else [0, 1, 0]
            assert step["action"]["terminate_episode"].tolist() == expected
        assert steps[-1]["reward"] == float(episode["aspects"]["success"])
    assert families == set(TASK_FAMILIES)
    assert min(lengths) < 6 and max(lengths) > 40 and 1 <= cut <= 12
    again = record_episode(3, seed=0)
    assert again["aspects"] == episodes[3]["aspects"] and again["attributes"] == episodes[3]["attributes"]
    assert len(again["steps"]) == len(episodes[3]["steps"])
    for a, b in zip(episodes[3]["steps"], again["steps"]):
        fa, fb = flatten_dict(a), flatten_dict(b)
        assert all(np.array_equal(fa[k], fb[k]) for k in fa)
    other = record_episode(3, seed=1)["steps"][0]["observation"]["image"]
    assert not np.array_equal(other, episodes[3]["steps"][0]["observation"]["image"])


def test_record_episode_encodes_with_the_real_tfds_features():
    pytest.importorskip("tensorflow_datasets")
    from rt1.rlds_spec import tfds_features

    features = tfds_features()
    for index in range(3):
        features.encode_example(record_episode(index, seed=0))


def test_recorded_data_is_what_the_env_returns_when_its_executed_actions_are_replayed():
    """data == env: every recorded observation field, the operator-side ones included (DART: the executed
    actions are the labels plus noise on world_vector only, so replaying the labels would not do)."""
    checked = set()
    for index in range(12):
        episode, executed = record_rollout(index, seed=0)
        assert len(executed) == len(episode["steps"]) - 1
        env = FractalSimEnv()
        obs, _ = env.reset(seed=episode_seeds(index, 0)[0])
        for t, step in enumerate(episode["steps"]):
            recorded = step["observation"]
            assert set(recorded) == set(obs)
            for key in obs:
                assert np.array_equal(np.asarray(recorded[key]), np.asarray(obs[key])), (index, t, key)
            if t + 1 < len(episode["steps"]):
                run = executed[t]
                for key in ACTION_SPEC:
                    if key not in ("world_vector", "terminate_episode"):
                        assert np.array_equal(run[key], step["action"][key]), (index, t, key)
                obs, *_ = env.step({**run, "terminate_episode": np.array([0, 1, 0], np.int32)})
        checked.add(episode["attributes"]["task_family_name"])
        commanded = [s["observation"]["gripper_closedness_commanded"][0] for s in episode["steps"]]
        applied = [s["action"]["gripper_closedness_action"][0] for s in episode["steps"]]
        assert commanded[0] == -1.0 and commanded[1:] == applied[:-1]  # the last command applied
    assert len(checked) >= 5


def test_dart_recording_labels_the_clean_expert_action_at_states_off_its_path():
    """Executed world_vector = label + N(0, DART_STD) noise; the label is the noise-free expert's action
    at the visited state, so labels are the expert's -1/0/+1 per-axis commands, executed motion is not."""
    labels, noise = [], []
    for index in range(10):
        episode, executed = record_rollout(index, seed=0)
        for step, run in zip(episode["steps"], executed):
            labels.append(step["action"]["world_vector"])
            noise.append(run["world_vector"] - step["action"]["world_vector"])
    labels, noise = np.array(labels), np.array(noise)
    saturated = np.isclose(np.abs(labels), 1.0) | np.isclose(labels, 0.0)
    assert saturated.mean() > 0.55  # the axis control law: most components are -1, 0 or +1 (measured 0.63)
    unclipped = noise[np.abs(labels) < 0.5]
    assert 0.7 * DART_STD < unclipped.std() < 1.3 * DART_STD and abs(unclipped.mean()) < 0.1
    clean, clean_executed = record_rollout(2, seed=0, dart_std=0.0)
    assert all(
        np.array_equal(s["action"]["world_vector"], r["world_vector"])
        for s, r in zip(clean["steps"], clean_executed)
    )


def test_make_episode_is_the_recorded_expert_rollout():
    from rt1.sim.mini_fractal import make_episode

    a, b = make_episode(4, 0), record_episode(4, 0)
    assert a["attributes"] == b["attributes"] and len(a["steps"]) == len(b["steps"])
    for x, y in zip(a["steps"], b["steps"]):
        fx, fy = flatten_dict(x), flatten_dict(y)
        assert all(np.array_equal(fx[k], fy[k]) for k in fx)


def test_instruction_embeddings_tell_which_object_moves_near_which():
    # A bag of words gave "move A near B" and "move B near A" the same embedding (cosine 1.0): the policy could
    # not know which object to move. Word pairs make the embedding order-sensitive.
    from rt1.sim.scene import instruction_embedding

    a = instruction_embedding("move coke can near pepsi can")
    b = instruction_embedding("move pepsi can near coke can")
    assert float(a @ b) < 0.95
    assert np.array_equal(a, instruction_embedding("move coke can near pepsi can"))  # deterministic
