"""Open-loop replay: the frames of recorded episodes fed to a policy, its per-dimension action error against
the recorded actions, next to closed-loop rollouts of the same scenes (`eval_closed_loop.py --replay N`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rt1.evaluation.closed_loop import (
    ClosedLoopError,
    EvalEpisode,
    PolicyFactory,
    env_action,
    run_episode,
    summarize,
)
from rt1.sim.env import MAX_EPISODE_STEPS, FractalSimEnv

# ----------------------------------------------------------------------------------------------
# Open-loop replay of recorded episodes, next to closed-loop rollouts of the same scenes

REPLAY_DIMS = ("world_x", "world_y", "world_z", "roll", "pitch", "yaw", "gripper", "terminate")
CELL = 2 + max(map(len, REPLAY_DIMS))  # a column's width: two spaces before the longest name
REPLAY_STEP_BUCKETS = (("step 0", 0, 1), ("steps 1-5", 1, 6), ("steps 6+", 6, None))


def replay_episode(
    make_policy_fn: PolicyFactory, index: int, data_seed: int = 0, max_steps: int = MAX_EPISODE_STEPS
) -> dict[str, Any]:
    """Recorded episode `index` of the bundled dataset for `data_seed`, open loop and closed loop.

    Open loop: the recorded frames (through `training_frame`, as the policy sees live ones) are fed to
    a fresh policy in order and each action is compared with the recorded action of that step.
    Closed loop: the same policy acts from the same scene (the episode's env seed and family).
    Returns {index, family, instruction, steps, abs_error {dim: (steps,)}, closed_loop {success, steps,
    outcome}}; terminate's error is 1 where the predicted class differs.
    """
    from rt1.actions import ACTION_DIM_NAMES, flatten_actions
    from rt1.sim.record import episode_seeds, record_episode

    episode = record_episode(index, data_seed)
    env = FractalSimEnv(max_steps=max_steps)
    policy = make_policy_fn(env)
    if hasattr(policy, "reset"):
        policy.reset()
    predicted, recorded = [], []
    for step in episode["steps"]:
        predicted.append(flatten_actions(env_action(policy(step["observation"]))))
        recorded.append(flatten_actions(step["action"]))
    error = np.abs(np.stack(predicted) - np.stack(recorded))
    columns = [ACTION_DIM_NAMES.index(d) for d in REPLAY_DIMS]
    error[:, ACTION_DIM_NAMES.index("terminate")] = error[:, ACTION_DIM_NAMES.index("terminate")] > 0
    family = episode["attributes"]["task_family_name"]
    scene = EvalEpisode(index, family, episode_seeds(index, data_seed)[0])
    record, _frames = run_episode(env, policy, scene)
    return {
        "index": index,
        "family": family,
        "instruction": record["instruction"],
        "steps": len(predicted),
        "abs_error": {d: error[:, c].round(4).tolist() for d, c in zip(REPLAY_DIMS, columns)},
        "closed_loop": {k: record[k] for k in ("success", "steps", "outcome")},
    }


def replay_summary(episodes: Sequence[dict]) -> dict[str, Any]:
    """Mean absolute error per dimension over all replayed steps and per step bucket, and closed-loop success."""
    summary: dict[str, Any] = {"mean_abs_error": {}, "by_step": {}}
    for dim in REPLAY_DIMS:
        values = np.concatenate([e["abs_error"][dim] for e in episodes])
        summary["mean_abs_error"][dim] = round(float(values.mean()), 4)
    for name, lo, hi in REPLAY_STEP_BUCKETS:
        row = {}
        for dim in REPLAY_DIMS:
            values = [v for e in episodes for v in e["abs_error"][dim][lo:hi]]
            row[dim] = round(float(np.mean(values)), 4) if values else None
        summary["by_step"][name] = row
    summary["closed_loop"] = summarize([e["closed_loop"] for e in episodes])
    return summary


def replay_recorded(
    make_policy_fn: PolicyFactory, count: int, data_seed: int = 0, max_steps: int = MAX_EPISODE_STEPS
) -> dict[str, Any]:
    """`replay_episode` for recorded episodes 0..count-1 -> {"episodes": [...], "summary": ..., "data_seed"}."""
    if count < 1:
        raise ClosedLoopError(f"--replay must be at least 1 episode, got {count}")
    episodes = [replay_episode(make_policy_fn, i, data_seed, max_steps) for i in range(count)]
    return {"data_seed": data_seed, "episodes": episodes, "summary": replay_summary(episodes)}


def format_replay(replay: dict) -> str:
    """Per-episode and per-step-bucket open-loop errors next to each scene's closed-loop outcome."""
    dims = REPLAY_DIMS
    header = f"{'episode':<42}" + "".join(f"{d:>{CELL}}" for d in dims) + "   closed loop"
    lines = [
        f"open-loop replay of recorded episodes (data seed {replay['data_seed']}): mean |predicted - recorded| "
        "per dimension (terminate: wrong-class rate)",
        header,
        "-" * len(header),
    ]
    for e in replay["episodes"]:
        label = f"{e['index']:>3} {e['instruction'][:30]:<30} {e['steps']:>3} st"
        cells = "".join(f"{np.mean(e['abs_error'][d]):>{CELL}.3f}" for d in dims)
        c = e["closed_loop"]
        lines.append(f"{label:<42}{cells}   {c['outcome']} ({c['steps']} st)")
    summary = replay["summary"]
    lines.append("-" * len(header))
    for name, row in summary["by_step"].items():
        lines.append(
            f"{'all episodes, ' + name:<42}"
            + "".join(f"{row[d]:>{CELL}.3f}" if row[d] is not None else f"{'-':>{CELL}}" for d in dims)
        )
    lines.append(
        f"{'all episodes, all steps':<42}"
        + "".join(f"{summary['mean_abs_error'][d]:>{CELL}.3f}" for d in dims)
        + f"   {summary['closed_loop']['success_rate']:.0%} success"
    )
    return "\n".join(lines)
