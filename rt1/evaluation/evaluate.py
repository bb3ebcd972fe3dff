"""`plot_actions.py`: run a trained policy over recorded episodes the way a robot would, plot and score it.

For each selected episode the policy (`rt1.policy.RT1Policy`, frame-token cache, 6-frame history)
predicts the action tokens of every step from the recorded frames and the instruction embedding;
they are detokenized with the fixed RT-1 bounds and compared with the recorded actions.

Outputs in --out:
    episode_{source_index}.png   per selected episode (not with --all): frames every 6 steps and the
                                 11 action dimensions, ground truth blue, prediction orange
    metrics.json                 per episode and overall (see rt1.evaluation.metrics)
    predictions.npz              the predicted and recorded tokens and actions behind the metrics
    error_summary.png            with --all: error and token accuracy per dimension
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rt1.data.index import IndexEpisode, WindowIndexError, index_episodes
from rt1.errors import RT1Error, run_cli
from rt1.evaluation import metrics
from rt1.evaluation.plots import plot_episode, plot_error_summary


class EvaluationError(RT1Error, ValueError):
    """Bad selection or input; a one-line message."""


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path
    data_dir: Path
    index: Path
    out: Path
    episodes: tuple[int, ...] = ()  # source episode indices (RLDS train split positions)
    instruction: str | None = None
    evaluate_all: bool = False
    max_episodes: int = 3
    cond_scale: float = 1.0
    device: str = "cpu"

    def __post_init__(self):
        if self.evaluate_all and (self.episodes or self.instruction):
            raise EvaluationError("--all evaluates every episode of the index: drop --episode/--instruction")
        if self.episodes and self.instruction:
            raise EvaluationError("give --episode or --instruction, not both")
        if self.max_episodes < 1:
            raise EvaluationError(f"--max-episodes must be >= 1, got {self.max_episodes}")


def select_episodes(available: list[IndexEpisode], cfg: EvalConfig) -> list[IndexEpisode]:
    if cfg.evaluate_all:
        return available
    if cfg.episodes:
        by_source = {e.source_index: e for e in available}
        missing = [k for k in cfg.episodes if k not in by_source]
        if missing:
            raise EvaluationError(
                f"episode(s) {missing} not in {cfg.index.name}; it has source episodes "
                f"{sorted(by_source)}")
        return [by_source[k] for k in cfg.episodes]
    if cfg.instruction is not None:
        chosen = [e for e in available if e.instruction == cfg.instruction]
        if not chosen:
            known = sorted({e.instruction for e in available})
            raise EvaluationError(f"no episode with instruction {cfg.instruction!r} in {cfg.index.name}; "
                                  f"instructions there: {known}")
        return chosen[: cfg.max_episodes]
    return available[: cfg.max_episodes]


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the evaluation; returns the metrics written to metrics.json."""
    import torch

    from rt1.data.preprocessed_schema import PreprocessedFile
    from rt1.model import load_model
    from rt1.policy import RT1Policy

    if not cfg.checkpoint.is_file():
        raise EvaluationError(f"checkpoint {cfg.checkpoint} does not exist")
    try:
        available = index_episodes(cfg.index)
    except (WindowIndexError, OSError) as e:
        raise EvaluationError(str(e)) from None
    if not available:
        raise EvaluationError(f"{cfg.index} lists no episodes")
    selected = select_episodes(available, cfg)
    model, model_config, _ = load_model(cfg.checkpoint, torch.device(cfg.device))
    policy = RT1Policy(model, cond_scale=cfg.cond_scale)
    cfg.out.mkdir(parents=True, exist_ok=True)

    per_episode, all_sums, arrays = {}, [], {}
    files: dict[str, PreprocessedFile] = {}
    try:
        for ep in tqdm(selected, desc="evaluate", unit="episode", disable=not progress):
            if ep.file not in files:
                files[ep.file] = PreprocessedFile(cfg.data_dir / ep.file)
            episode = files[ep.file].episode(ep.episode, decode_images=True)
            pred_tokens = policy.predict_episode(episode.images, episode.language_embedding)
            sums = metrics.episode_sums(pred_tokens, episode.action_tokens, episode.actions)
            all_sums.append(sums)
            per_episode[str(ep.source_index)] = {"instruction": ep.instruction, "file": ep.file,
                                                 **metrics.summarize(sums)}
            key = f"episode_{ep.source_index}"
            arrays[f"{key}/pred_tokens"] = pred_tokens
            arrays[f"{key}/true_tokens"] = episode.action_tokens
            arrays[f"{key}/true_actions"] = episode.actions
            if not cfg.evaluate_all:
                summary = per_episode[str(ep.source_index)]
                plot_episode(cfg.out / f"{key}.png", episode.images, ep.instruction, episode.actions,
                             metrics.predicted_actions(pred_tokens),
                             subtitle=f"source episode {ep.source_index}, token accuracy "
                                      f"{summary['token_accuracy']:.2f}, cond_scale {cfg.cond_scale}")
    finally:
        for f in files.values():
            f.close()
    overall = metrics.summarize(metrics.combine(all_sums))
    result = {"checkpoint": str(cfg.checkpoint), "index": str(cfg.index), "cond_scale": cfg.cond_scale,
              "episodes": per_episode, "overall": overall}
    (cfg.out / "metrics.json").write_text(json.dumps(result, indent=2))
    np.savez_compressed(cfg.out / "predictions.npz", **arrays)
    if cfg.evaluate_all:
        plot_error_summary(cfg.out / "error_summary.png", overall["mae"], overall["token_accuracy_per_dim"],
                           f"{len(selected)} episodes of {cfg.index.name}: token accuracy {overall['token_accuracy']:.3f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="plot_actions.py",
        description="Run a trained RT-1 checkpoint over recorded episodes as a robot would (6-frame history, "
                    "frame-token cache) and plot predicted (orange) vs ground-truth (blue) actions.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint-{epoch}.pt from train_ddp.py")
    parser.add_argument("--data-dir", type=Path, required=True, help="preprocessed data directory (PRE_DIR)")
    parser.add_argument("--index", type=Path, required=True, help="index CSV from data_emerge.py, e.g. val_idx_M.csv")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--episode", type=int, action="append", default=[],
                        help="source episode index to plot (repeatable)")
    select.add_argument("--instruction", help='plot episodes with this instruction, e.g. "pick brown chip bag"')
    select.add_argument("--all", action="store_true", help="evaluate every episode of the index: metrics and a "
                                                           "summary plot only")
    parser.add_argument("--max-episodes", type=int, default=3,
                        help="with --instruction or no selection: how many episodes to plot (default 3)")
    parser.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output directory (default ./plots)")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    def run(_) -> int:
        cfg = EvalConfig(args.checkpoint, args.data_dir, args.index, args.out, tuple(args.episode), args.instruction,
                         args.all, args.max_episodes, args.cond_scale, args.device)
        result = evaluate(cfg)
        overall = result["overall"]
        print(f"{len(result['episodes'])} episode(s): token accuracy {overall['token_accuracy']:.3f}, terminate "
              f"accuracy {overall['terminate_accuracy']:.3f}; outputs in {args.out}")
        for name in sorted(args.out.glob("*.png")):
            print(f"  {name}")
        return 0

    return run_cli(run)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
