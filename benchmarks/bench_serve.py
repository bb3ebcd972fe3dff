"""Per-step overhead of the policy server over in-process inference, 256x320 camera frames on loopback.

    python benchmarks/bench_serve.py [--steps 300] [--preset tiny] [--out bench_serve.json]

One exported model (random weights of --preset, written by `python -m rt1.export` in a temporary directory)
acts two ways side by side in one run, on the same observations (camera frames of scripted-expert rollouts
in the simulated scene, 256x320x3 uint8):

    in-process   RT1EnvPolicy(RT1Policy): training_frame (JPEG, resize, JPEG, decode) + RT1Policy.step
    served       PolicyClient.act against `python -m rt1.serve` on 127.0.0.1 (one torch thread both sides):
                 msgpack + WebSocket both ways + the same training_frame + RT1Policy.step in the server;
                 "server compute" is the server's own time of that preprocessing + step (the reply's compute_ms)

The two alternate step by step (each pair sees the same frame at the same episode step), so machine load
hits both alike. Printed: median and p99 of each and of the per-step overhead (served - in-process of the
same pair); the actions of the two must be equal at every step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

EPISODE_STEPS = 40  # steps per episode before both sides reset (reset time is not counted)
WARMUP = 10


def observations(count: int) -> list[list[dict]]:
    """Episodes of camera observations from scripted-expert rollouts (EPISODE_STEPS each)."""
    from rt1.sim.env import FractalSimEnv
    from rt1.sim.expert import ScriptedExpert

    env = FractalSimEnv(max_steps=EPISODE_STEPS)
    expert = ScriptedExpert(env, noise_std=0.0)
    episodes, seed = [], 0
    while (
        sum(len(e) - 1 for e in episodes) < count
    ):  # an episode's first step (with the reset) is not measured
        obs, _ = env.reset(seed=seed)
        expert.reset()
        episode, done = [obs], False
        while not done and len(episode) < EPISODE_STEPS:
            obs, _, terminated, truncated, _ = env.step(expert(obs))
            episode.append(obs)
            done = terminated or truncated
        episodes.append(episode)
        seed += 1
    return episodes


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="measured steps per side (default 300)")
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny: CPU-sized)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    import torch

    from rt1.config import PRESETS
    from rt1.evaluation.closed_loop import RT1EnvPolicy
    from rt1.export import export
    from rt1.model import RT1
    from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
    from rt1.policy import RT1Policy
    from rt1.serve import PolicyClient, ServedEnvPolicy, local_server

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = PRESETS[args.preset].model
    episodes = observations(args.steps + WARMUP)
    frame_bytes = episodes[0][0]["image"].nbytes
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
        checkpoint = Path(work) / "checkpoint-1.pt"
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "model": RT1(config).state_dict(),
                "model_config": config.to_dict(),
                "train_args": {},
            },
            checkpoint,
        )
        model_dir = export(checkpoint, Path(work) / "model")
        local = RT1EnvPolicy(RT1Policy.from_path(model_dir))
        times = {"in-process": [], "served": [], "server compute": []}
        mismatches = 0
        with local_server(model_dir, "--threads", "1") as (uri, _proc), PolicyClient(uri) as client:
            served = ServedEnvPolicy(client)
            step = 0
            for episode in episodes:
                local.reset()
                served.reset()
                served(episode[0])  # the first step also sends the reset: not measured
                local(episode[0])
                for obs in episode[1:]:
                    t0 = time.perf_counter()
                    a = local(obs)
                    t1 = time.perf_counter()
                    b = served(obs)
                    t2 = time.perf_counter()
                    mismatches += any(not np.array_equal(a[k], b[k]) for k in a)
                    step += 1
                    if step > WARMUP:
                        times["in-process"].append(t1 - t0)
                        times["served"].append(t2 - t1)
                        times["server compute"].append(client.last_compute_ms / 1e3)
                    if len(times["served"]) >= args.steps:
                        break
                if len(times["served"]) >= args.steps:
                    break
    overhead = np.subtract(times["served"], times["in-process"])
    result = {
        "preset": args.preset,
        "steps": len(overhead),
        "frame_bytes": frame_bytes,
        "action_mismatches": mismatches,
        **{
            f"{name}_ms": {"median": percentile(v, 50), "p99": percentile(v, 99)} for name, v in times.items()
        },
        "overhead_ms": {
            "median": percentile(overhead, 50),
            "p99": percentile(overhead, 99),
            "median_difference": percentile(times["served"], 50) - percentile(times["in-process"], 50),
        },
    }
    print(
        f"policy step, {args.preset} preset, {frame_bytes:,}-byte 256x320 frames, {len(overhead)} steps, "
        "1 torch thread each side, 127.0.0.1"
    )
    print(f"{'':<28}{'median ms':>12}{'p99 ms':>12}")
    for name in ("in-process", "served", "server compute"):
        print(f"{name:<28}{result[name + '_ms']['median']:>12.2f}{result[name + '_ms']['p99']:>12.2f}")
    print(
        f"{'overhead (served - in-proc)':<28}{result['overhead_ms']['median']:>12.2f}"
        f"{result['overhead_ms']['p99']:>12.2f}"
    )
    transport = np.subtract(times["served"], times["server compute"])
    result["transport_ms"] = {"median": percentile(transport, 50), "p99": percentile(transport, 99)}
    print(
        f"{'served - server compute':<28}{result['transport_ms']['median']:>12.2f}{result['transport_ms']['p99']:>12.2f}"
        "   (messages, WebSocket, thread hand-offs)"
    )
    verdict = "met" if result["overhead_ms"]["median"] <= 5.0 else "NOT met"
    print(f"target: median overhead <= 5 ms: {verdict}; actions equal at every step: {mismatches == 0}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
