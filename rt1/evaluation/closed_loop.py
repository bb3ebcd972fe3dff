"""Closed-loop evaluation: a policy acts in `FractalSimEnv`; success rates per task family.

    from rt1.evaluation.closed_loop import closed_loop_evaluation, rt1_policy_factory
    results = closed_loop_evaluation(rt1_policy_factory(model, cond_scale=1.0), episodes=100, out_dir=OUT)

A *policy factory* is `make_policy_fn(env) -> policy`; a policy is a callable `obs -> RLDS action dict`
with an optional `reset()` that is called after every `env.reset()` (the factory gets the env so a
privileged policy such as the scripted expert can read the state). `evaluate_policy` runs one policy
on the evaluation episodes and summarises it; `closed_loop_evaluation` runs the policy and the two
baselines (scripted expert, no-op) on the same episodes, writes `results.json` and GIF rollouts.

Evaluation episodes (`evaluation_episodes`): episode i of evaluation seed S has task family
`families[i % len(families)]` and env seed drawn from
`np.random.default_rng(np.random.SeedSequence(S, spawn_key=(EVAL_STREAM, i)))`. The training data
(`rt1.sim.mini_fractal`, `rt1.sim.record.episode_seeds`) draws episode `index` of seed S' from
`np.random.default_rng([S', index])`. NumPy pads a short entropy with zeros to 4 words before any
spawn key, so the evaluation key is the 6+ words [S, 0, 0, 0, EVAL_STREAM, i] while a training key
[S', index] (each < 2**64) is at most 4 words: the two streams never share a key, for any seeds.
(A plain `[S, EVAL_STREAM, i]` would not do: `[S, T, 0]` is the same seed as the training key
`[S, T]`.) tests/evaluation/test_closed_loop.py checks that no evaluation scene equals a training scene.

Each observation image reaches an RT-1 policy through `rt1.data.images.training_frame`: the same
JPEG encoding as the stored dataset, stage 2's resize and re-encoding, and the loader's decoding.

results.json: `{"policy": R, "expert": R, "noop": R, "settings": {...}}` where each R is
`{"overall": S, "per_family": {family: S}, "episodes": [per-episode records]}` and each S is
`{"success_rate", "ci95": [low, high] (Wilson score interval), "episodes", "mean_steps"}`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt1.data.images import JPEG_QUALITY, training_frame
from rt1.errors import RT1Error
from rt1.io import atomic_output
from rt1.rlds_spec import ACTION_SPEC
from rt1.sim.env import MAX_EPISODE_STEPS, FractalSimEnv
from rt1.sim.expert import ScriptedExpert, noop_policy
from rt1.sim.scene import TASK_FAMILIES

EVAL_STREAM = 0x45564C  # "EVL": the spawn-key tag of evaluation episodes (see the module docstring)
Z_95 = 1.959963984540054  # two-sided 95% normal quantile
GIF_FRAME_MS = 200
GIF_LAST_FRAME_MS = 1500

PolicyFactory = Callable[[FractalSimEnv], Callable[[dict], dict]]


class ClosedLoopError(RT1Error, ValueError):
    """Bad evaluation settings (episodes, families, seed, videos); the message names the value."""


# ----------------------------------------------------------------------------------------------
# Episodes and statistics


@dataclass(frozen=True)
class EvalEpisode:
    """Evaluation episode `index`: its task family and the env seed of its scene."""

    index: int
    family: str
    env_seed: int


def evaluation_episodes(
    count: int, families: Sequence[str] = TASK_FAMILIES, seed: int = 0
) -> list[EvalEpisode]:
    """The first `count` evaluation episodes of evaluation seed `seed`, families in turn."""
    if count < 1:
        raise ClosedLoopError(f"the number of evaluation episodes must be at least 1, got {count}")
    families = list(families)
    if not families:
        raise ClosedLoopError("at least one task family is needed")
    unknown = sorted(set(families) - set(TASK_FAMILIES))
    if unknown:
        raise ClosedLoopError(f"unknown task family {unknown}; expected some of {list(TASK_FAMILIES)}")
    if seed < 0:
        raise ClosedLoopError(f"the evaluation seed must be >= 0, got {seed}")
    episodes = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(EVAL_STREAM, i)))
        episodes.append(EvalEpisode(i, families[i % len(families)], int(rng.integers(2**63 - 1))))
    return episodes


def wilson_interval(successes: int, n: int, z: float = Z_95) -> list[float]:
    """Wilson score interval [low, high] of a binomial proportion (95% by default); [0, 1] for n = 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return [low, high]


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """{"success_rate", "ci95", "episodes", "mean_steps"} of per-episode records (success, steps)."""
    n = len(records)
    successes = sum(bool(r["success"]) for r in records)
    return {
        "success_rate": successes / n if n else 0.0,
        "ci95": wilson_interval(successes, n),
        "episodes": n,
        "mean_steps": float(np.mean([r["steps"] for r in records])) if n else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# Rollouts


def outcome_text(success: bool, stopped: bool) -> str:
    return "success" if success else ("failed: policy stopped" if stopped else "failed: step limit")


def run_episode(
    env: FractalSimEnv, policy: Callable[[dict], dict], episode: EvalEpisode, keep_frames: bool = False
) -> tuple[dict, list[np.ndarray]]:
    """One rollout -> (record {index, family, env_seed, instruction, success, steps, outcome}, frames).

    `frames` are the camera images from the reset to the last step (empty unless `keep_frames`).
    """
    obs, info = env.reset(seed=episode.env_seed, options={"task_family": episode.family})
    if hasattr(policy, "reset"):
        policy.reset()
    frames = [obs["image"]] if keep_frames else []
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _reward, terminated, truncated, info = env.step(policy(obs))
        if keep_frames:
            frames.append(obs["image"])
    success = bool(info["success"])
    record = {
        **asdict(episode),
        "instruction": env.task.instruction,
        "success": success,
        "steps": int(info["steps"]),
        "outcome": outcome_text(success, terminated and not success),
    }
    return record, frames


def evaluate_policy(
    make_policy_fn: PolicyFactory,
    episodes: int,
    families: Sequence[str] = TASK_FAMILIES,
    seed: int = 0,
    max_steps: int = MAX_EPISODE_STEPS,
    *,
    render_images: bool = True,
    videos: int = 0,
    video_dir: Path | None = None,
    name: str = "policy",
) -> dict[str, Any]:
    """Run a policy on the evaluation episodes -> {"overall", "per_family", "episodes", "seconds"}.

    `render_images=False` gives black images (for state-only policies: faster, same world). With
    `videos` > 0 the first `videos` episodes are written to `video_dir/{name}_{index:03d}_{family}.gif`
    and listed under "videos".
    """
    if videos and video_dir is None:
        raise ClosedLoopError("videos > 0 needs a video_dir")
    env = FractalSimEnv(max_steps=max_steps, render_images=render_images or videos > 0)
    policy = make_policy_fn(env)
    records, written = [], []
    start = time.perf_counter()
    for episode in evaluation_episodes(episodes, families, seed):
        keep = episode.index < videos
        env.render_images = render_images or keep
        record, frames = run_episode(env, policy, episode, keep_frames=keep)
        records.append(record)
        if keep:
            path = Path(video_dir) / f"{name}_{episode.index:03d}_{episode.family}.gif"
            write_rollout_gif(path, frames, record["instruction"], record["outcome"])
            written.append(str(path))
    seconds = time.perf_counter() - start
    per_family = {
        f: summarize([r for r in records if r["family"] == f])
        for f in families
        if any(r["family"] == f for r in records)
    }
    result = {
        "overall": summarize(records),
        "per_family": per_family,
        "episodes": records,
        "seconds": round(seconds, 3),
    }
    if written:
        result["videos"] = written
    return result


# ----------------------------------------------------------------------------------------------
# Policies


def env_action(action: dict) -> dict[str, np.ndarray]:
    """A policy's RLDS action dict (numpy or torch values) -> numpy arrays of the env's dtypes and shapes."""
    missing = sorted(set(ACTION_SPEC) - set(action))
    if missing:
        raise ClosedLoopError(f"the policy's action lacks {missing}")
    out = {}
    for key, spec in ACTION_SPEC.items():
        value = action[key]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value, dtype=spec.dtype).reshape(spec.shape)
    return out


class RT1EnvPolicy:
    """An `RT1Policy` acting in the env: each camera image goes through `training_frame` first.

    `image_size` (N or (H, W)) defaults to the model's `frame_size`; `jpeg_quality` must be stage 2's
    `--jpeg-quality` of the training data (default `JPEG_QUALITY`).
    """

    def __init__(
        self, policy, image_size: int | tuple[int, int] | None = None, jpeg_quality: int = JPEG_QUALITY
    ) -> None:
        self.policy = policy
        self.image_size = image_size or tuple(policy.config.frame_size)
        self.jpeg_quality = jpeg_quality

    def reset(self) -> None:
        self.policy.reset()

    def __call__(self, obs: dict) -> dict[str, np.ndarray]:
        frame = training_frame(obs["image"], self.image_size, self.jpeg_quality)
        return env_action(self.policy.step(frame, obs["natural_language_embedding"]))


def rt1_policy_factory(model, cond_scale: float = 1.0, jpeg_quality: int = JPEG_QUALITY) -> PolicyFactory:
    """A factory of `RT1EnvPolicy` around `RT1Policy(model, cond_scale)` (its token cache on)."""
    from rt1.policy import RT1Policy

    def make(env: FractalSimEnv) -> RT1EnvPolicy:
        return RT1EnvPolicy(RT1Policy(model, cond_scale=cond_scale), jpeg_quality=jpeg_quality)

    return make


def expert_factory(env: FractalSimEnv) -> ScriptedExpert:
    """The scripted expert baseline, without action noise (the dataset's demonstrator at its best)."""
    return ScriptedExpert(env, noise_std=0.0)


def noop_factory(env: FractalSimEnv) -> Callable[[dict], dict]:
    """The no-op baseline: no motion, gripper open, never terminates."""
    return noop_policy


# ----------------------------------------------------------------------------------------------
# The whole evaluation


def closed_loop_evaluation(
    make_policy_fn: PolicyFactory,
    episodes: int,
    families: Sequence[str] = TASK_FAMILIES,
    seed: int = 0,
    max_steps: int = MAX_EPISODE_STEPS,
    out_dir: Path | None = None,
    videos: int = 0,
    settings: dict | None = None,
) -> dict[str, Any]:
    """The policy, the scripted expert and the no-op baseline on the same evaluation episodes.

    Writes `out_dir/results.json` (and `out_dir/videos/*.gif` of the policy's first `videos`
    episodes) when `out_dir` is given; returns the same dict.
    """
    families = list(families)
    evaluation_episodes(episodes, families, seed)  # validates the arguments before any work
    out_dir = None if out_dir is None else Path(out_dir)
    if videos and out_dir is None:
        raise ClosedLoopError("videos > 0 needs an out_dir")
    common = dict(episodes=episodes, families=families, seed=seed, max_steps=max_steps)
    results = {
        "policy": evaluate_policy(
            make_policy_fn, **common, videos=videos, video_dir=None if out_dir is None else out_dir / "videos"
        ),
        "expert": evaluate_policy(expert_factory, **common, render_images=False),
        "noop": evaluate_policy(noop_factory, **common, render_images=False),
        "settings": {**common, "eval_stream": EVAL_STREAM, **(settings or {})},
    }
    if out_dir is not None:
        write_results(out_dir / "results.json", results)
    return results


def write_results(path: Path, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")


def format_table(results: dict) -> str:
    """The three policies side by side: success rate, 95% interval and mean steps per family."""
    names = [n for n in ("policy", "expert", "noop") if n in results]
    families = list(results[names[0]]["per_family"])
    header = f"{'task family':<18}" + "".join(f"{n:>28}" for n in names)
    lines = [header, "-" * len(header)]
    for row in [*families, "overall"]:
        cells = []
        for n in names:
            s = results[n]["overall"] if row == "overall" else results[n]["per_family"][row]
            low, high = s["ci95"]
            cells.append(f"{s['success_rate']:>6.0%} [{low:4.0%},{high:5.0%}] {s['mean_steps']:4.1f} st")
        lines.append(f"{row:<18}" + "".join(f"{c:>28}" for c in cells))
    n = results[names[0]]["overall"]["episodes"]
    lines.append(f"(success rate [95% Wilson interval] mean steps; {n} episodes per policy, the same seeds)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Rollout animations


def annotate_frame(image: np.ndarray, instruction: str, step: int, total: int, outcome: str | None):
    """A PIL image: the camera frame with the instruction above and the step (and outcome) below."""
    from PIL import Image, ImageDraw

    h, w, _ = image.shape
    band = 18
    canvas = Image.new("RGB", (w, h + 2 * band), (0, 0, 0))
    canvas.paste(Image.fromarray(np.asarray(image, np.uint8), "RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), instruction, fill=(255, 255, 255))
    draw.text((4, h + band + 3), f"step {step}/{total}", fill=(255, 255, 255))
    if outcome is not None:
        color = (80, 230, 80) if outcome == "success" else (240, 80, 80)
        draw.text((90, h + band + 3), outcome.upper(), fill=color)
    return canvas


def write_rollout_gif(path: Path, frames: Sequence[np.ndarray], instruction: str, outcome: str) -> Path:
    """Write an animated GIF of a rollout (frame k = the image after k steps); the last frame lingers."""
    if not frames:
        raise ValueError("a rollout GIF needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = len(frames) - 1
    images = [
        annotate_frame(f, instruction, k, total, outcome if k == total else None)
        for k, f in enumerate(frames)
    ]
    durations = [GIF_FRAME_MS] * (len(images) - 1) + [GIF_LAST_FRAME_MS]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path
