"""Recording the scripted expert's rollouts in `FractalSimEnv` as TFDS example dicts (RLDS layout).

`record_episode(index, seed)` is the drop-in replacement of `rt1.sim.mini_fractal.make_episode`:
same dict layout (aspects, attributes, steps with observation / action / is_first / is_last /
is_terminal / reward), same family distribution, and ~8% of episodes cut to 2..5 steps as aborted
real episodes are. Step t holds the observation before action t; the last step holds the final
observation and the expert's stop action (terminate_episode [1, 0, 0]; [0, 1, 0] before it).
Every recorded observation is exactly what `FractalSimEnv` returned (state fields included), so the
data and the environment agree field by field: replaying an episode's *executed* actions
(`record_rollout`) in `FractalSimEnv().reset(seed=episode_seeds(index, seed)[0])` gives back its
observations.

DART-style recording (Laskey et al. 2017): the env executes the expert's action with N(0, `DART_STD`)
noise on its `world_vector`, and the step is labelled with the expert's clean action at the state the
noisy one led to. So the data shows states off the expert's straight path together with the action
that recovers from them, and the labels carry no noise. (Before: the noise was on the label itself and
the executed path stayed the expert's.) `dart_std=0` records the noise-free expert.

Seeds: episode `index` of the dataset for `seed` draws everything from
`np.random.default_rng([seed, index])` (see `episode_seeds`). Closed-loop evaluation draws its
episodes from a disjoint stream (`rt1.evaluation.closed_loop.evaluation_episodes`).
"""

from __future__ import annotations

import numpy as np

from rt1.sim.env import MAX_EPISODE_STEPS, FractalSimEnv
from rt1.sim.expert import CONTINUE, TERMINATE, ScriptedExpert
from rt1.sim.scene import TASK_FAMILIES

TRUNCATE_PROBABILITY = 0.08  # fraction of episodes cut to 2..5 steps
DART_STD = 0.3  # world_vector noise of the executed action (the label is the expert's clean action)


def _record_step(obs: dict, action: dict) -> dict:
    return {"observation": dict(obs), "action": {k: np.array(v, copy=True) for k, v in action.items()}}


def episode_seeds(index: int, seed: int) -> tuple[int, int, np.random.Generator]:
    """(env seed, expert noise seed, rng for the truncation draw) of dataset episode `index` for `seed`."""
    rng = np.random.default_rng([seed, index])
    env_seed, noise_seed = (int(s) for s in rng.integers(2**63 - 1, size=2))
    return env_seed, noise_seed, rng


def record_episode(
    index: int,
    seed: int,
    max_steps: int = MAX_EPISODE_STEPS,
    *,
    dart_std: float = DART_STD,
    control: str = "axis",
) -> dict:
    """Episode `index` of the dataset for `seed`: one DART-noised expert rollout, as a TFDS example dict.

    Deterministic in (index, seed). The environment seed, the executed actions' noise and the
    truncation draw all come from `np.random.default_rng([seed, index])`.
    """
    return record_rollout(index, seed, max_steps, dart_std=dart_std, control=control)[0]


def record_rollout(
    index: int,
    seed: int,
    max_steps: int = MAX_EPISODE_STEPS,
    *,
    dart_std: float = DART_STD,
    control: str = "axis",
) -> tuple[dict, list[dict]]:
    """(the TFDS example dict of `record_episode`, the actions the env executed after each recorded step)."""
    if dart_std < 0:
        raise ValueError(f"dart_std must be >= 0, got {dart_std}")
    env_seed, noise_seed, rng = episode_seeds(index, seed)
    env = FractalSimEnv(max_steps=max_steps)
    expert = ScriptedExpert(env, noise_std=0.0, control=control)
    noise = np.random.default_rng(noise_seed)
    obs, info = env.reset(seed=env_seed)
    expert.reset()
    steps, executed = [], []
    while True:
        action = expert(obs)
        steps.append(_record_step(obs, action))
        if action["terminate_episode"][0] == 1:
            break
        run = dict(action)
        if dart_std > 0:
            run["world_vector"] = np.clip(
                action["world_vector"] + noise.normal(0.0, dart_std, size=3), -1.0, 1.0
            ).astype(np.float32)
        executed.append(run)
        obs, _reward, terminated, truncated, info = env.step(run)
        if terminated or truncated:
            # The final observation, with the expert's stop (it terminates once the task succeeded).
            steps.append(_record_step(obs, expert.stop_action()))
            break
    success = bool(info["success"])
    cut = rng.random() < TRUNCATE_PROBABILITY
    if cut:
        steps = steps[: rng.integers(2, 6)]
    last = len(steps) - 1
    for i, step in enumerate(steps):
        step["is_first"] = i == 0
        step["is_last"] = step["is_terminal"] = i == last
        step["reward"] = np.float32(1.0 if (i == last and success and not cut) else 0.0)
        step["action"]["terminate_episode"] = (TERMINATE if i == last else CONTINUE).copy()
    example = {**_metadata(success and not cut, info["task_family"]), "steps": steps}
    return example, executed[: len(steps) - 1]


def _metadata(success: bool, family: str) -> dict:
    """The episode_metadata-like fields of an example: its aspects and attributes."""
    return {
        "aspects": {
            "already_success": False,
            "feasible": True,
            "has_aspects": True,
            "success": success,
            "undesirable": False,
        },
        "attributes": {
            "collection_mode": 1,
            "collection_mode_name": "teleop",
            "data_type": 0,
            "data_type_name": "synthetic",
            "env": 0,
            "env_name": "mini_fractal",
            "location": 0,
            "location_name": "simulated table",
            "objects_family": 0,
            "objects_family_name": "fractal objects",
            "task_family": TASK_FAMILIES.index(family),
            "task_family_name": family,
        },
    }
