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
`[S, T]`.) tests/test_closed_loop.py checks that no evaluation scene equals a training scene.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rt1.data.images import JPEG_QUALITY, training_frame
from rt1.rlds_spec import ACTION_SPEC
from rt1.errors import RT1Error, run_cli
from rt1.io import atomic_output, check_output_dir_option
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


def evaluation_episodes(count: int, families: Sequence[str] = TASK_FAMILIES, seed: int = 0) -> list[EvalEpisode]:
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


def run_episode(env: FractalSimEnv, policy: Callable[[dict], dict], episode: EvalEpisode,
                keep_frames: bool = False) -> tuple[dict, list[np.ndarray]]:
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
    record = {**asdict(episode), "instruction": env.task.instruction, "success": success,
              "steps": int(info["steps"]), "outcome": outcome_text(success, terminated and not success)}
    return record, frames


def evaluate_policy(make_policy_fn: PolicyFactory, episodes: int, families: Sequence[str] = TASK_FAMILIES,
                    seed: int = 0, max_steps: int = MAX_EPISODE_STEPS, *, render_images: bool = True,
                    videos: int = 0, video_dir: Path | None = None, name: str = "policy") -> dict[str, Any]:
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
    per_family = {f: summarize([r for r in records if r["family"] == f]) for f in families
                  if any(r["family"] == f for r in records)}
    result = {"overall": summarize(records), "per_family": per_family, "episodes": records,
              "seconds": round(seconds, 3)}
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

    `image_size` defaults to the model's; `jpeg_quality` must be stage 2's `--jpeg-quality` of the
    training data (default `JPEG_QUALITY`).
    """

    def __init__(self, policy, image_size: int | None = None, jpeg_quality: int = JPEG_QUALITY) -> None:
        self.policy = policy
        self.image_size = int(image_size or policy.config.image_size)
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


def closed_loop_evaluation(make_policy_fn: PolicyFactory, episodes: int, families: Sequence[str] = TASK_FAMILIES,
                           seed: int = 0, max_steps: int = MAX_EPISODE_STEPS, out_dir: Path | None = None,
                           videos: int = 0, settings: dict | None = None) -> dict[str, Any]:
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
        "policy": evaluate_policy(make_policy_fn, **common, videos=videos,
                                  video_dir=None if out_dir is None else out_dir / "videos"),
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
# Open-loop replay of recorded episodes, next to closed-loop rollouts of the same scenes

REPLAY_DIMS = ("world_x", "world_y", "world_z", "roll", "pitch", "yaw", "gripper", "terminate")
REPLAY_STEP_BUCKETS = (("step 0", 0, 1), ("steps 1-5", 1, 6), ("steps 6+", 6, None))


def replay_episode(make_policy_fn: PolicyFactory, index: int, data_seed: int = 0,
                   max_steps: int = MAX_EPISODE_STEPS) -> dict[str, Any]:
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
    return {"index": index, "family": family, "instruction": record["instruction"], "steps": len(predicted),
            "abs_error": {d: error[:, c].round(4).tolist() for d, c in zip(REPLAY_DIMS, columns)},
            "closed_loop": {k: record[k] for k in ("success", "steps", "outcome")}}


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


def replay_recorded(make_policy_fn: PolicyFactory, count: int, data_seed: int = 0,
                    max_steps: int = MAX_EPISODE_STEPS) -> dict[str, Any]:
    """`replay_episode` for recorded episodes 0..count-1 -> {"episodes": [...], "summary": ..., "data_seed"}."""
    if count < 1:
        raise ClosedLoopError(f"--replay must be at least 1 episode, got {count}")
    episodes = [replay_episode(make_policy_fn, i, data_seed, max_steps) for i in range(count)]
    return {"data_seed": data_seed, "episodes": episodes, "summary": replay_summary(episodes)}


def format_replay(replay: dict) -> str:
    """Per-episode and per-step-bucket open-loop errors next to each scene's closed-loop outcome."""
    dims = REPLAY_DIMS
    header = f"{'episode':<42}" + "".join(f"{d:>9}" for d in dims) + "   closed loop"
    lines = [f"open-loop replay of recorded episodes (data seed {replay['data_seed']}): mean |predicted - recorded| "
             "per dimension (terminate: wrong-class rate)", header, "-" * len(header)]
    for e in replay["episodes"]:
        label = f"{e['index']:>3} {e['instruction'][:30]:<30} {e['steps']:>3} st"
        cells = "".join(f"{np.mean(e['abs_error'][d]):>9.3f}" for d in dims)
        c = e["closed_loop"]
        lines.append(f"{label:<42}{cells}   {c['outcome']} ({c['steps']} st)")
    summary = replay["summary"]
    lines.append("-" * len(header))
    for name, row in summary["by_step"].items():
        lines.append(f"{'all episodes, ' + name:<42}" + "".join(
            f"{row[d]:>9.3f}" if row[d] is not None else f"{'-':>9}" for d in dims))
    lines.append(f"{'all episodes, all steps':<42}" + "".join(f"{summary['mean_abs_error'][d]:>9.3f}" for d in dims)
                 + f"   {summary['closed_loop']['success_rate']:.0%} success")
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
    images = [annotate_frame(f, instruction, k, total, outcome if k == total else None) for k, f in enumerate(frames)]
    durations = [GIF_FRAME_MS] * (len(images) - 1) + [GIF_LAST_FRAME_MS]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python eval_closed_loop.py",
        description="Closed-loop success rates of a trained RT-1 policy in the simulated fractal scene, "
                    "next to the scripted expert and a no-op policy on the same evaluation seeds.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path,
                        help="checkpoint-{epoch}.pt from train_ddp.py, or a model directory from python -m rt1.export")
    source.add_argument("--server", help="act through a policy server (python -m rt1.serve) instead, e.g. "
                                         "ws://127.0.0.1:8000; it applies its model's image preprocessing")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per policy (default 100)")
    parser.add_argument("--task-family", nargs="+", choices=TASK_FAMILIES, default=list(TASK_FAMILIES),
                        metavar="F", help=f"task families, taken in turn (default: all seven: {', '.join(TASK_FAMILIES)})")
    parser.add_argument("--seed", type=int, default=0,
                        help="evaluation seed (default 0); evaluation scenes are never training episodes")
    parser.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    parser.add_argument("--videos", type=int, default=0, help="GIF rollouts of the first K policy episodes (default 0)")
    parser.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS,
                        help="step limit per episode (default %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY,
                        help="stage 2's --jpeg-quality of the training data (default %(default)s; with --server "
                             "the server's own setting applies)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: one small-batch step gains nothing from more)")
    parser.add_argument("--replay", type=int, default=0, metavar="N",
                        help="also replay the first N recorded episodes of the bundled dataset open loop (per-dimension "
                             "action error against the recorded actions) next to closed-loop rollouts of the same "
                             "scenes; written to results.json under 'replay' (default 0: none)")
    parser.add_argument("--replay-seed", type=int, default=0,
                        help="the bundled dataset's --seed the replayed episodes come from (default 0, the demo's)")
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and videos/")
    args = parser.parse_args(argv)

    def run(_) -> int:
        if args.videos < 0 or args.threads < 1 or args.max_steps < 1 or not 1 <= args.jpeg_quality <= 100:
            raise ClosedLoopError("--videos must be >= 0, --threads and --max-steps >= 1, --jpeg-quality 1..100")
        if not math.isfinite(args.cond_scale):  # NaN would "succeed" with 0% and write invalid JSON
            raise ClosedLoopError(f"--cond-scale must be a finite number, got {args.cond_scale}")
        check_output_dir_option(args.out)
        if args.replay < 0 or args.replay_seed < 0:
            raise ClosedLoopError("--replay and --replay-seed must be >= 0")
        evaluation_episodes(args.episodes, args.task_family, args.seed)  # bad values fail before loading torch
        common = (args.episodes, args.task_family, args.seed, args.max_steps, args.out, args.videos)
        if args.server:
            from rt1.serve import PolicyClient, ServedEnvPolicy

            with PolicyClient(args.server) as client:
                served = client.info()["model"]
                results = closed_loop_evaluation(
                    lambda env: ServedEnvPolicy(client, args.cond_scale), *common,
                    settings={"server": args.server, "model": served["path"], "cond_scale": args.cond_scale,
                              "jpeg_quality": served["jpeg_quality"]})
        else:
            import torch

            from rt1.model import load_model

            torch.set_num_threads(args.threads)
            model, _config, _train_args = load_model(args.checkpoint)
            results = closed_loop_evaluation(
                rt1_policy_factory(model, args.cond_scale, args.jpeg_quality), *common,
                settings={"checkpoint": str(args.checkpoint), "cond_scale": args.cond_scale,
                          "jpeg_quality": args.jpeg_quality})
        print(format_table(results))
        if args.replay:
            factory = rt1_policy_factory(model, args.cond_scale, args.jpeg_quality)
            results["replay"] = replay_recorded(factory, args.replay, args.replay_seed, args.max_steps)
            write_results(args.out / "results.json", results)
            print()
            print(format_replay(results["replay"]))
        print(f"wrote {args.out / 'results.json'}")
        for path in results["policy"].get("videos", []):
            print(f"  {path}")
        return 0

    return run_cli(run)
