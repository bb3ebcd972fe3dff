"""Closed-loop success vs training steps: the demo preset on the bundled data, our action tokens vs the original's.

    python benchmarks/bench_closed_loop.py                  # builds the bundled dataset (1200 episodes) in a temp dir
    python benchmarks/bench_closed_loop.py --budget-minutes 30 --eval-every 5000 --eval-episodes 56 --out bench.json

Two policies are trained side by side, with the same data, the same budget and the same evaluation seeds:

    ours       the pipeline's action tokens (`rt1.actions.tokenize`: fixed RT-1 bounds per key, gripper
               continuous), as stored by stage 2
    original   the original pipeline's tokenisation, re-implemented here only (`original_tokens`): each float
               key group (world_vector, rotation_delta, base movement = base_displacement_vector +
               vertical rotation) normalised by the min/max of that group over the 6-step window,
               token = int(x * 255), a constant group gives int(value); the gripper cast to int and then
               "tokenised" as an int32 key (argmax over its one entry: always 0); terminate its class index.
               At inference the window's min/max are unknown, so its tokens are read back with the fixed RT-1
               bounds, the only inverse a user has (`rt1.actions.detokenize`).

Each policy trains in its own process with one thread (the two together use the 2 cores), single-process
training of the demo preset with the demo's step (`train_ddp.py --preset demo` under 2 processes: batch 8 per
process at lr 1e-3 x 2; here one process does batch 16 at lr 2e-3; AdamW, weight decay 1e-2, no augmentation,
no condition dropout, 32x32 frames, cosine decay to 0.1 x lr over --max-steps; one window at a time, or chunks
of --chunk-windows consecutive windows through train_ddp.py's chunk sampler, the original's tokens made from
each window's actions either way), until --max-steps or --budget-minutes of training CPU time (this process's,
one thread), whichever comes first. Every --eval-every steps (and at the end) it is
evaluated in closed loop (`rt1.evaluation.closed_loop.evaluate_policy`) on the same --eval-episodes
evaluation seeds (task families in turn, never training scenes); evaluation time is not training time.

Printed: success rate per task family and overall vs steps for both, and the scripted expert and no-op
baselines on the same seeds. --out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundled_data import build_bundled_data  # noqa: E402
from bundled_data import run as run_command

from rt1.config import PRESETS  # noqa: E402

DEMO = PRESETS["demo"]  # the demo's recipe (issue #18)
DEMO_PROCESSES = (
    2  # the demo's step: its per-process batch and lr times the demo's 2 processes, in one process
)
TOKENISATIONS = ("ours", "original")


def _run(args: list, env: dict | None = None) -> None:
    run_command(args, env, label="bench_closed_loop")


def build_data(work: Path, episodes: int) -> tuple[Path, Path]:
    """The bundled dataset through stages 1-3 (the demo's commands)."""
    return build_bundled_data(
        work,
        episodes,
        image_size=DEMO.model.image_size,
        episodes_per_segment=20,
        val_fraction=0.05,
        label="bench_closed_loop",
    )


# ---- the original pipeline's action tokenisation (benchmark only) -------------------------------------

ORIGINAL_GROUPS = ((0, 3), (3, 6), (7, 10))  # world_vector, rotation_delta, base movement (in token order)


def original_tokens(actions):
    """(..., 6, 11) continuous actions in `rt1.actions.flatten_actions` order -> the original's tokens (..., 6, 11).

    Per window and per float group: (a - min) / (max - min) * 255 cast to int over the group's 6 x 3 values,
    or int(a) when the group is constant (clamped to 0..255: the original would index out of range on
    a negative constant); gripper (index 6): always 0; terminate (index 10): its class index.
    """
    import torch

    a = torch.as_tensor(actions, dtype=torch.float32)
    tokens = torch.zeros(a.shape, dtype=torch.int64)
    for lo, hi in ORIGINAL_GROUPS:
        group = a[..., lo:hi]
        gmin = group.amin(dim=(-2, -1), keepdim=True)
        gmax = group.amax(dim=(-2, -1), keepdim=True)
        span = gmax - gmin
        scaled = torch.where(span > 0, (group - gmin) / torch.where(span > 0, span, 1.0) * 255, group)
        tokens[..., lo:hi] = scaled.to(torch.int32).clamp(0, 255).long()
    tokens[..., 6] = 0
    tokens[..., 10] = a[..., 10].round().long()
    return tokens


# ---- one policy: train with periodic closed-loop evaluation (a worker process) ------------------------


def train_and_evaluate(
    tokenisation: str,
    data_dir: Path,
    train_index: Path,
    max_steps: int,
    budget_s: float,
    eval_every: int,
    eval_episodes: int,
    eval_seed: int,
    seed: int,
    chunk_windows: int,
    out_path: Path,
) -> None:
    import numpy as np
    import torch

    from rt1.config import TrainConfig
    from rt1.data.dataset import RT1Dataset
    from rt1.evaluation.closed_loop import evaluate_policy, rt1_policy_factory
    from rt1.model import RT1
    from rt1.train.checkpoint import seed_everything
    from rt1.train.loaders import make_train_loader
    from rt1.train.optim import Optimisation, build_optimizer, build_scheduler, peak_lr
    from rt1.train.step import StepSettings, train_step

    torch.set_num_threads(1)
    seed_everything(seed)
    # The demo preset's run as train_ddp.py --preset demo configures it (lrf 0.1 over --max-steps).
    cfg = TrainConfig(preset=DEMO.name, data_dir=data_dir, train_index=train_index, max_steps=max_steps)
    model = RT1(cfg.model_config)
    lr = peak_lr(cfg, DEMO_PROCESSES)  # the demo's 2 processes' step, taken by one process
    optimizer = build_optimizer(model, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg, lr, max_steps)
    opt = Optimisation(optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), lr, max_steps)
    settings = StepSettings(torch.device("cpu"), loss_reduction=cfg.loss_reduction)
    dataset = RT1Dataset(train_index, data_dir, augment=cfg.augment)
    loader, sampler = make_train_loader(
        dataset,
        rank=0,
        world_size=1,
        batch_size=cfg.batch_size * DEMO_PROCESSES,
        shuffle=True,
        seed=seed,
        num_workers=0,
        pin_memory=False,
        chunk_windows=chunk_windows,
    )
    history = []

    def evaluate(step: int, train_seconds: float, loss: float) -> None:
        model.eval()
        start = time.perf_counter()
        result = evaluate_policy(rt1_policy_factory(model), eval_episodes, seed=eval_seed)
        model.train()
        row = {
            "step": step,
            "train_seconds": round(train_seconds, 1),
            "loss": loss,
            "eval_seconds": round(time.perf_counter() - start, 1),
            "overall": result["overall"],
            "per_family": result["per_family"],
        }
        history.append(row)
        out_path.write_text(json.dumps({"tokenisation": tokenisation, "history": history}, indent=1))
        print(
            f"[{tokenisation}] step {step:5d}  train {train_seconds / 60:4.1f} min  loss {loss:.3f}  "
            f"success {result['overall']['success_rate']:.0%}",
            flush=True,
        )

    step, train_seconds, losses, epoch = 0, 0.0, [], 0
    model.train()
    while step < max_steps and train_seconds < budget_s:
        sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            tick = time.process_time()  # CPU time of this one-thread process: the machine is shared
            if tokenisation == "original":
                batch["action_tokens"] = original_tokens(batch["actions"])
            loss = train_step(model, iter([batch]), opt, settings)
            step += 1
            losses.append(loss.item())
            train_seconds += time.process_time() - tick
            if step % eval_every == 0:
                evaluate(step, train_seconds, float(np.mean(losses[-eval_every:])))
            if step >= max_steps or train_seconds >= budget_s:
                break
    if not history or history[-1]["step"] != step:
        evaluate(step, train_seconds, float(np.mean(losses[-eval_every:])))


# ---- the side-by-side run ---------------------------------------------------------------------------


def baselines(eval_episodes: int, eval_seed: int) -> dict:
    from rt1.evaluation.closed_loop import evaluate_policy, expert_factory, noop_factory

    return {
        name: evaluate_policy(factory, eval_episodes, seed=eval_seed, render_images=False)
        for name, factory in (("expert", expert_factory), ("noop", noop_factory))
    }


def print_tables(runs: dict[str, dict], base: dict) -> None:
    from rt1.sim.scene import TASK_FAMILIES

    short = {
        "pick": "pick",
        "pick_from_drawer": "drawer",
        "move_near": "near",
        "open_drawer": "open",
        "close_drawer": "close",
        "place_upright": "upright",
        "knock_over": "knock",
    }
    header = f"{'policy':<9}{'step':>6}{'train min':>10}{'loss':>7}" + "".join(
        f"{short[f]:>8}" for f in TASK_FAMILIES
    )
    header += f"{'overall':>14}"
    print("\nclosed-loop success vs training steps (the same evaluation seeds for every row)")
    print(header)
    print("-" * len(header))

    def cells(summary: dict) -> str:
        per = summary["per_family"]
        text = "".join(f"{per[f]['success_rate']:>8.0%}" if f in per else f"{'-':>8}" for f in TASK_FAMILIES)
        low, high = summary["overall"]["ci95"]
        return text + f"{summary['overall']['success_rate']:>6.0%} [{low:.0%}-{high:.0%}]"

    for name, run in runs.items():
        for row in run["history"]:
            print(
                f"{name:<9}{row['step']:>6}{row['train_seconds'] / 60:>10.1f}{row['loss']:>7.3f}" + cells(row)
            )
    for name, result in base.items():
        print(f"{name:<9}{'':>6}{'':>10}{'':>7}" + cells(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, help="preprocessed tiny-size data (default: build the bundled set)"
    )
    parser.add_argument("--train-index", type=Path, help="its train_idx_N.csv (with --data-dir)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=1200,
        help="bundled dataset size when building (default 1200: more scenes kept adding success per CPU-minute)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="training CPU-minutes per policy (process CPU time), both in parallel on one core each (default 30)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=15000,
        help="step limit and cosine length (default 15000: ~30 CPU-minutes at ~0.12 s per step)",
    )
    parser.add_argument("--eval-every", type=int, default=5000, help="evaluate every N steps (default 5000)")
    parser.add_argument(
        "--eval-episodes", type=int, default=28, help="evaluation episodes (default 28: 4 per family)"
    )
    parser.add_argument("--eval-seed", type=int, default=0, help="evaluation seed (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--chunk-windows",
        type=int,
        default=1,
        help="train on batches of chunks of K consecutive windows, every frame encoded once (train_ddp.py's "
        "--chunk-windows; default 1, the demo's: K = 6 gave less success per CPU-minute, docs/evaluation.md)",
    )
    parser.add_argument("--tokenisation", nargs="+", choices=TOKENISATIONS, default=list(TOKENISATIONS))
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--worker", choices=TOKENISATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        train_and_evaluate(
            args.worker,
            args.data_dir,
            args.train_index,
            args.max_steps,
            args.budget_minutes * 60,
            args.eval_every,
            args.eval_episodes,
            args.eval_seed,
            args.seed,
            args.chunk_windows,
            args.worker_out,
        )
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_closed_loop-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        if args.data_dir is None:
            data_dir, train_index = build_data(work, args.episodes)
            print(
                f"bundled dataset: {args.episodes} episodes through stages 1-3 in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        else:
            data_dir, train_index = args.data_dir, args.train_index
        procs = {}
        for name in args.tokenisation:
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--worker-out",
                work / f"{name}.json",
                "--data-dir",
                data_dir,
                "--train-index",
                train_index,
                "--max-steps",
                args.max_steps,
                "--budget-minutes",
                args.budget_minutes,
                "--eval-every",
                args.eval_every,
                "--eval-episodes",
                args.eval_episodes,
                "--eval-seed",
                args.eval_seed,
                "--seed",
                args.seed,
                "--chunk-windows",
                args.chunk_windows,
            ]
            procs[name] = subprocess.Popen(
                [str(c) for c in command], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
        failed = [name for name, proc in procs.items() if proc.wait() != 0]
        if failed:
            raise SystemExit(f"bench_closed_loop: the {', '.join(failed)} run failed")
        runs = {name: json.loads((work / f"{name}.json").read_text()) for name in procs}
        base = baselines(args.eval_episodes, args.eval_seed)
        print_tables(runs, base)
        print(
            f"\nwall time {(time.perf_counter() - start) / 60:.1f} min; training budget "
            f"{args.budget_minutes:g} min per policy (one core each, in parallel); "
            f"{args.eval_episodes} evaluation episodes per row"
        )
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        "runs": runs,
                        "baselines": {
                            n: {k: r[k] for k in ("overall", "per_family")} for n, r in base.items()
                        },
                    },
                    indent=1,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
