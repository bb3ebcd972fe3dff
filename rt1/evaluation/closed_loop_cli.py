"""eval_closed_loop.py: closed-loop evaluation of a checkpoint (or an exported model, or a policy server) next
to the scripted expert and the no-op baseline, and the open-loop replay of recorded episodes."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from rt1.data.images import JPEG_QUALITY
from rt1.errors import run_cli
from rt1.evaluation.closed_loop import (
    ClosedLoopError,
    closed_loop_evaluation,
    evaluation_episodes,
    format_table,
    rt1_policy_factory,
    write_results,
)
from rt1.evaluation.replay import format_replay, replay_recorded
from rt1.io import check_output_dir_option
from rt1.sim.env import MAX_EPISODE_STEPS
from rt1.sim.scene import TASK_FAMILIES

# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_cli(lambda _: run(args))


def build_arg_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python eval_closed_loop.py",
        description="Closed-loop success rates of a trained RT-1 policy in the simulated fractal scene, "
        "next to the scripted expert and a no-op policy on the same evaluation seeds.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint-{epoch}.pt from train_ddp.py, or a model directory from python -m rt1.export",
    )
    source.add_argument(
        "--server",
        help="act through a policy server (python -m rt1.serve) instead, e.g. "
        "ws://127.0.0.1:8000; it applies its model's image preprocessing",
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="evaluation episodes per policy (default 100)"
    )
    parser.add_argument(
        "--task-family",
        nargs="+",
        choices=TASK_FAMILIES,
        default=list(TASK_FAMILIES),
        metavar="F",
        help=f"task families, taken in turn (default: all seven: {', '.join(TASK_FAMILIES)})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="evaluation seed (default 0); evaluation scenes are never training episodes",
    )
    parser.add_argument(
        "--cond-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1)"
    )
    parser.add_argument(
        "--videos", type=int, default=0, help="GIF rollouts of the first K policy episodes (default 0)"
    )
    _add_rollout_options(parser)
    return parser


def _add_rollout_options(parser) -> None:
    """The episodes' step limit and image quality, the threads, the replay, the output directory."""
    parser.add_argument(
        "--max-steps",
        type=int,
        default=MAX_EPISODE_STEPS,
        help="step limit per episode (default %(default)s)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="stage 2's --jpeg-quality of the training data (default: the model's, as rt1.serve takes it: "
        f"an export's config.json value, {JPEG_QUALITY} for a checkpoint; not with --server, whose "
        "model's applies)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: one small-batch step gains nothing from more)",
    )
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="N",
        help="also replay the first N recorded episodes of the bundled dataset open loop (per-dimension "
        "action error against the recorded actions) next to closed-loop rollouts of the same "
        "scenes; written to results.json under 'replay' (default 0: none)",
    )
    parser.add_argument(
        "--replay-seed",
        type=int,
        default=0,
        help="the bundled dataset's --seed the replayed episodes come from (default 0, the demo's)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and videos/")


def check_args(args) -> None:
    """The options' values, checked before torch loads (one-line ClosedLoopError)."""
    if args.videos < 0 or args.threads < 1 or args.max_steps < 1:
        raise ClosedLoopError("--videos must be >= 0, --threads and --max-steps >= 1")
    if args.server and args.jpeg_quality is not None:
        raise ClosedLoopError("--jpeg-quality does not apply with --server: the server's model sets it")
    if not math.isfinite(args.cond_scale):  # NaN would "succeed" with 0% and write invalid JSON
        raise ClosedLoopError(f"--cond-scale must be a finite number, got {args.cond_scale}")
    check_output_dir_option(args.out)
    if args.replay < 0 or args.replay_seed < 0:
        raise ClosedLoopError("--replay and --replay-seed must be >= 0")
    evaluation_episodes(args.episodes, args.task_family, args.seed)


def run(args) -> int:
    check_args(args)
    common = (args.episodes, args.task_family, args.seed, args.max_steps, args.out, args.videos)
    with contextlib.ExitStack() as stack:
        if args.server:
            factory, settings = served_policy(args, stack)
        else:
            factory, settings = checkpoint_policy(args)
        results = closed_loop_evaluation(factory, *common, settings=settings)
        print(format_table(results))
        if args.replay:  # through the same policy: the server's session, or the in-process model
            results["replay"] = replay_recorded(factory, args.replay, args.replay_seed, args.max_steps)
            write_results(args.out / "results.json", results)
            print()
            print(format_replay(results["replay"]))
    print(f"wrote {args.out / 'results.json'}")
    for path in results["policy"].get("videos", []):
        print(f"  {path}")
    return 0


def served_policy(args, stack: contextlib.ExitStack) -> tuple:
    """(policy factory, settings for results.json) of the policy server at --server (its session in `stack`)."""
    from rt1.serve import PolicyClient, ServedEnvPolicy

    client = stack.enter_context(PolicyClient(args.server))
    served = client.info()["model"]

    def factory(env):
        return ServedEnvPolicy(client, args.cond_scale)

    settings = {
        "server": args.server,
        "model": served["name"],
        "cond_scale": args.cond_scale,
        "jpeg_quality": served["jpeg_quality"],
    }
    return factory, settings


def checkpoint_policy(args) -> tuple:
    """(policy factory, settings for results.json) of the model in --checkpoint, run in this process."""
    import torch

    from rt1.model import load_model
    from rt1.policy import model_jpeg_quality

    torch.set_num_threads(args.threads)
    jpeg_quality = model_jpeg_quality(args.checkpoint, args.jpeg_quality)  # as rt1.serve does
    model, _config, _train_args = load_model(args.checkpoint)
    factory = rt1_policy_factory(model, args.cond_scale, jpeg_quality)
    settings = {
        "checkpoint": str(args.checkpoint),
        "cond_scale": args.cond_scale,
        "jpeg_quality": jpeg_quality,
    }
    return factory, settings
