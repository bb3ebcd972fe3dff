"""Does a policy's image encoder see where the named object is? A linear probe on its image tokens.

    python -m rt1.evaluation.probe --checkpoint save/.../checkpoint-E.pt [--scenes 1500] [--train-scenes 1000]
        [--seed 500000] [--out probe.json]

Scenes of the table families (pick, move near, place upright, knock over: the instruction names an object on the
table) are drawn from `FractalSimEnv` with their own seed stream (500000 on, far from the training and evaluation
seeds). Each first camera frame goes through `training_frame` (what a training frame became) and the model's
`encode_frames` with the scene's instruction; the flattened image tokens (n x D values) are the features. A ridge
regression from the standardised features to each target, its strength chosen on the last fifth of the training
scenes, is fitted on `--train-scenes` and scored on the rest:

    named object   the table (x, y) of the object the instruction names (the simulator knows it)
    gripper        the gripper's (x, y): the control that a position can be read from these tokens at all

Printed and written (--out): R^2 of x and y per target (1: read exactly; 0: no better than the mean; below 0:
worse), the chosen strength and the counts. docs/evaluation.md (issue 34) has the figures of the recipe's
candidates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rt1.data.images import training_frame
from rt1.errors import RT1Error, run_cli
from rt1.sim.env import FractalSimEnv

PROBE_FAMILIES = ("pick", "move_near", "place_upright", "knock_over")  # the instruction names a table object
PROBE_SEED = 500_000  # first scene seed: far from the bundled dataset's and the evaluation's streams
RIDGE_STRENGTHS = (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


class ProbeError(RT1Error, ValueError):
    """Bad probe sizes; the message names the value."""


def probe_scenes(count: int, frame_size: tuple[int, int], seed: int = PROBE_SEED) -> dict[str, np.ndarray]:
    """`count` first frames of table-family scenes (families in turn) -> frames uint8 (count, H, W, 3), text
    float32 (count, 512), and the targets "named object" and "gripper", float64 (count, 2) each."""
    env = FractalSimEnv()
    frames, texts, named, gripper = [], [], [], []
    for i in range(count):
        obs, _ = env.reset(seed=seed + i, options={"task_family": PROBE_FAMILIES[i % len(PROBE_FAMILIES)]})
        frames.append(training_frame(obs["image"], frame_size))
        texts.append(obs["natural_language_embedding"])
        named.append(env.target_object().position[:2])
        gripper.append(env.scene.gripper[:2])
    return {
        "frames": np.stack(frames),
        "text": np.stack(texts).astype(np.float32),
        "named object": np.stack(named).astype(np.float64),
        "gripper": np.stack(gripper).astype(np.float64),
    }


@torch.no_grad()
def image_token_features(model, frames: np.ndarray, text: np.ndarray, batch: int = 100) -> np.ndarray:
    """frames uint8 (N, H, W, 3), text (N, 512) -> the model's image tokens flattened, float64 (N, n * D)."""
    model.eval()
    out = []
    for i in range(0, len(frames), batch):
        tokens = model.encode_frames(
            torch.from_numpy(frames[i : i + batch]), torch.from_numpy(text[i : i + batch])
        )
        out.append(tokens.flatten(1).double().numpy())
    return np.concatenate(out)


def _ridge(x: np.ndarray, y: np.ndarray, strength: float) -> np.ndarray:
    """Weights (F, T) of ridge regression without intercept (x, y centred), in the dual form (F may exceed N)."""
    return x.T @ np.linalg.solve(x @ x.T + strength * np.eye(len(x)), y)


def ridge_probe(features: np.ndarray, targets: dict[str, np.ndarray], train: int) -> dict:
    """Fit on the first `train` rows, score R^2 on the rest -> {"r2": {target: [x, y]}, "strength": float}."""
    if not 5 <= train <= len(features) - 2:
        raise ProbeError(f"train scenes {train} must be at least 5 and leave 2 of {len(features)} to score")
    names = list(targets)
    y = np.concatenate([targets[n] for n in names], axis=1)
    mean, std = features[:train].mean(0), features[:train].std(0) + 1e-6
    x = (features - mean) / std
    y = y - y[:train].mean(0)
    fit = train * 4 // 5

    def held_out_error(strength: float) -> float:
        return float(((x[fit:train] @ _ridge(x[:fit], y[:fit], strength) - y[fit:train]) ** 2).mean())

    strength = min(RIDGE_STRENGTHS, key=held_out_error)
    pred, true = x[train:] @ _ridge(x[:train], y[:train], strength), y[train:]
    r2 = 1.0 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
    return {
        "r2": {n: [round(float(v), 3) for v in r2[2 * i : 2 * i + 2]] for i, n in enumerate(names)},
        "strength": strength,
    }


def probe_model(model, scenes: int, train: int, seed: int = PROBE_SEED) -> dict:
    """The probe of `model` on `scenes` scenes (`train` of them to fit) -> ridge_probe's result and the counts."""
    if scenes < 7:
        raise ProbeError(f"--scenes must be at least 7, got {scenes}")
    data = probe_scenes(scenes, tuple(model.config.frame_size), seed)
    features = image_token_features(model, data["frames"], data["text"])
    targets = {k: data[k] for k in ("named object", "gripper")}
    return {**ridge_probe(features, targets, train), "scenes": scenes, "train_scenes": train, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.evaluation.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint-{epoch}.pt or a model directory"
    )
    parser.add_argument("--scenes", type=int, default=1500, help="scenes in all (default %(default)s)")
    parser.add_argument(
        "--train-scenes", type=int, default=1000, help="scenes to fit on (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help="first scene seed (default %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    return run_cli(lambda _: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rt1.model.load import load_model

    model, _, _ = load_model(args.checkpoint)
    result = {
        "checkpoint": str(args.checkpoint),
        **probe_model(model, args.scenes, args.train_scenes, args.seed),
    }
    for name, (x, y) in result["r2"].items():
        print(f"{name:14s} R^2 x {x:6.3f}  y {y:6.3f}")
    print(
        f"(ridge strength {result['strength']:g}; {args.train_scenes} scenes fitted, {args.scenes - args.train_scenes} scored)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
