"""The demo recipe's candidates (issue 34): closed-loop success against training CPU-minutes, and the probe.

    python benchmarks/recipe_candidates.py --candidate demo --data-dir PRE --train-index PRE_INDEX/train_idx_N.csv \
        --max-steps 6000 --marks 3,6,10 [--chunk-windows 1] [--batch-size 16] [--out run.json]

One candidate per run, on one thread (run two at once on 2 cores): the model is built from `--candidate`, trained
on the preprocessed bundled data (stage 2 at the candidate's frame size: `--image-size 32`, 48 or 64) with AdamW
at lr 2e-3 (weight decay 1e-2) and cosine decay to 0.1x over --max-steps, one window at a time or chunks of
--chunk-windows (train_ddp.py's loader), batches of --batch-size windows. When its process CPU time passes each of
--marks (CPU-minutes), it is evaluated in closed loop on --eval-episodes episodes (seed 0, task families in turn)
and probed (`rt1.evaluation.probe`: the named object's and the gripper's table position from its image tokens),
and its weights are saved next to --out. docs/evaluation.md (issue 34) has the figures of every candidate.

Candidates:
    demo        the `demo` preset's model (32x32)
    demo48      the same at 48x48 (attention window 3: a 6x6 map)
    google64    Google's network (GoogleRT1Config) at 64x64 frames: encoder input 64 (2x2 map), width 0.25,
                depth 0.5, 8 tokens (bottleneck 32), 2 layers x 4 heads x 32, model width 128, no dropout
    keypoints   the `demo` model + a ninth image token from a spatial softmax over its final feature map (the
                expected x, y of each channel: the anchor network's keypoints); benchmark-only, not a preset
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from rt1.config import PRESETS  # noqa: E402
from rt1.google_config import GoogleRT1Config  # noqa: E402
from rt1.model import build_model  # noqa: E402
from rt1.model.rt1 import RT1  # noqa: E402


class KeypointRT1(RT1):
    """The MaxViT RT-1 with one more image token: a spatial softmax over the final feature map per channel."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.keypoint_projection = nn.Linear(2 * config.embed_dim, config.embed_dim)
        self.keypoint_log_temperature = nn.Parameter(torch.zeros(()))

    def encode_frames(self, frames, text_embeds):
        """frames (N, H, W, 3) uint8, text (N, E) -> tokens (N, num_learned_tokens + 1, D)."""
        features = self.feature_map(frames, text_embeds)  # (N, h, w, D)
        tokens = self.token_learner(features)
        n, h, w, d = features.shape
        attention = (features.reshape(n, h * w, d) * self.keypoint_log_temperature.exp()).softmax(dim=1)
        ys = torch.linspace(-1, 1, h).repeat_interleave(w)
        xs = torch.linspace(-1, 1, w).repeat(h)
        keypoints = torch.cat([torch.einsum("nsd,s->nd", attention, c) for c in (xs, ys)], dim=1)
        return torch.cat([tokens, self.keypoint_projection(keypoints)[:, None]], dim=1)


def build_candidate(name: str) -> nn.Module:
    demo = PRESETS["demo"].model
    if name == "demo":
        return build_model(demo)
    if name == "demo48":
        return build_model(demo.replace(image_size=48, attention_window=3))
    if name == "keypoints":
        return KeypointRT1(demo)
    if name == "google64":
        config = GoogleRT1Config(
            image_height=64,
            image_width=64,
            encoder_input_size=64,
            width_coefficient=0.25,
            depth_coefficient=0.5,
            num_layers=2,
            num_heads=4,
            key_dim=32,
            model_dim=128,
            dropout=0.0,
            drop_connect_rate=0.0,
            token_learner_bottleneck=32,
        )
        return build_model(config)
    raise SystemExit(f"recipe_candidates: unknown --candidate {name!r}")


def cosine_lr(step: int, total: int, peak: float, floor: float = 0.1) -> float:
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def evaluate(model, step: int, cpu_seconds: float, losses: list, args) -> dict:
    from rt1.evaluation.closed_loop import evaluate_policy, rt1_policy_factory
    from rt1.evaluation.probe import probe_model

    model.eval()
    result = evaluate_policy(rt1_policy_factory(model), args.eval_episodes, seed=0)
    probe = probe_model(model, args.probe_scenes, args.probe_scenes * 2 // 3)
    model.train()
    overall = result["overall"]
    return {
        "cpu_minutes": round(cpu_seconds / 60, 2),
        "step": step,
        "loss": round(float(np.mean(losses[-500:])), 4),
        "successes": round(overall["success_rate"] * overall["episodes"]),
        "episodes": overall["episodes"],
        "per_family": {f: v["success_rate"] for f, v in result["per_family"].items()},
        "probe_r2": probe["r2"],
    }


def run(args: argparse.Namespace) -> None:
    from rt1.data.dataset import RT1Dataset
    from rt1.train.checkpoint import seed_everything
    from rt1.train.loaders import make_train_loader
    from rt1.train.step import StepSettings, train_step

    torch.set_num_threads(1)
    seed_everything(args.seed)
    model = build_candidate(args.candidate)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-2
    )
    dataset = RT1Dataset(args.train_index, args.data_dir, augment=False)
    loader, sampler = make_train_loader(
        dataset,
        rank=0,
        world_size=1,
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        num_workers=0,
        pin_memory=False,
        chunk_windows=args.chunk_windows,
    )
    settings = StepSettings(torch.device("cpu"))
    marks = sorted(float(m) * 60 for m in args.marks.split(","))
    rows, step, cpu, losses, epoch = [], 0, 0.0, [], 0
    model.train()
    while marks:
        sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            tick = time.process_time()  # this one-thread process's CPU time: the machine is shared
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, args.max_steps, args.lr)
            losses.append(train_step(model, iter([batch]), optimizer, settings).item())
            step += 1
            cpu += time.process_time() - tick
            if cpu < marks[0]:
                continue
            marks.pop(0)
            rows.append(evaluate(model, step, cpu, losses, args))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"settings": _settings(args), "rows": rows}, indent=1) + "\n")
                torch.save(model.state_dict(), args.out.with_name(f"{args.out.stem}_{step}.pt"))
            if not marks:
                break


def _settings(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidate", required=True, choices=("demo", "demo48", "google64", "keypoints"))
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="stage 2's output at the candidate's size"
    )
    parser.add_argument("--train-index", type=Path, required=True, help="stage 3's train_idx_N.csv")
    parser.add_argument("--max-steps", type=int, required=True, help="the cosine schedule's length")
    parser.add_argument("--marks", default="3,6,10", help="CPU-minutes to evaluate at (default 3,6,10)")
    parser.add_argument("--chunk-windows", type=int, default=1, help="chunks of K windows (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step (default 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--eval-episodes", type=int, default=28, help="closed-loop episodes (default 28)")
    parser.add_argument(
        "--probe-scenes", type=int, default=1500, help="probe scenes, 2/3 fitted (default 1500)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--out", type=Path, help="JSON of the evaluations; the weights go next to it")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
