"""`plot_actions.py`: run a trained policy over recorded episodes the way a robot would, plot and score it.

For each selected episode the policy (`rt1.policy.RT1Policy`, frame-token cache, 6-frame history)
predicts the action tokens of every step from the recorded frames and the instruction embedding;
they are detokenized with the model's bins and bounds (`RT1Policy.tokenizer`: the fixed RT-1 bounds, RT-1-X's
512 bins and world_vector in [-2, 2]) and compared with the recorded actions.

Outputs in --out (default: plots/{checkpoint name} in the checkpoint's directory), written atomically:
    episode_{source_index}.png   per selected episode (not with --all): frames every 6 steps and the
                                 11 action dimensions, ground truth blue, prediction orange
    metrics.json                 per episode and overall (see rt1.evaluation.metrics)
    predictions.npz              the predicted and recorded tokens and actions behind the metrics
    error_summary.png            with --all: error and token accuracy per dimension
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt1.data.index import IndexEpisode, WindowIndexError, index_episodes, read_index
from rt1.errors import RT1Error, one_line, run_cli
from rt1.evaluation import metrics
from rt1.evaluation.plots import plot_episode, plot_error_summary
from rt1.io import atomic_output, check_output_dir_option, outermost_missing, remove_empty_dirs
from rt1.progress import progress_bar


class EvaluationError(RT1Error, ValueError):
    """Bad selection or input; a one-line message."""


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path
    data_dir: Path
    index: Path
    out: Path | None = None  # None: {checkpoint's directory}/plots/{checkpoint name without .pt}
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
        if not isinstance(self.cond_scale, (int, float)) or not math.isfinite(self.cond_scale):
            raise EvaluationError(f"--cond-scale must be a finite number, got {self.cond_scale!r}")
        if self.out is None:
            object.__setattr__(self, "out", default_out_dir(self.checkpoint))
        check_output_dir_option(self.out)


def default_out_dir(checkpoint: Path) -> Path:
    """Where plots go without --out: next to the checkpoint, e.g. save/rt1_ddp/plots/checkpoint-3/."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / "plots" / checkpoint.stem


def check_index_matches_data(episodes: list[IndexEpisode], index_csv: Path, data_dir: Path) -> dict:
    """The files the episodes come from exist in data_dir with the content digests the index recorded.

    An index built from another data directory names the same files but other content: without this
    check its episode K would be plotted from whatever episode sits at that row. Returns {file: image_size}.
    """
    from rt1.data.preprocessed_file import PreprocessedFile
    from rt1.data.preprocessed_schema import PreprocessedFormatError

    meta = read_index(index_csv).meta or {}
    digests = {f["file"]: f["content_digest"] for f in meta.get("files", [])}
    sizes = {}
    for name in dict.fromkeys(e.file for e in episodes):
        path = Path(data_dir) / name
        if not path.is_file():
            raise EvaluationError(
                f"{index_csv} names {name}, which is not in --data-dir {data_dir}: pass the "
                "directory the index was built from"
            )
        try:
            f = PreprocessedFile(path)
        except (PreprocessedFormatError, OSError) as e:
            raise EvaluationError(f"{path}: {one_line(e)}") from None
        try:
            digest, sizes[name] = f.content_digest, f.image_size
        finally:
            f.close()
        expected = digests.get(name)
        if expected is not None and digest != expected:
            raise EvaluationError(
                f"{index_csv} does not match --data-dir {data_dir}: {name} has content digest {digest[:12]}..., the "
                f"index recorded {expected[:12]}... (built from {meta.get('data_dir', 'another directory')}); pass "
                "the data directory the index was built from, or rebuild the index with data_emerge.py"
            )
    return sizes


def select_episodes(available: list[IndexEpisode], cfg: EvalConfig) -> list[IndexEpisode]:
    if cfg.evaluate_all:
        return available
    if cfg.episodes:
        by_source = {e.source_index: e for e in available}
        missing = [k for k in cfg.episodes if k not in by_source]
        if missing:
            raise EvaluationError(
                f"episode(s) {missing} not in {cfg.index.name}; it has source episodes {sorted(by_source)}"
            )
        return [by_source[k] for k in cfg.episodes]
    if cfg.instruction is not None:
        chosen = [e for e in available if e.instruction == cfg.instruction]
        if not chosen:
            known = sorted({e.instruction for e in available})
            raise EvaluationError(
                f"no episode with instruction {cfg.instruction!r} in {cfg.index.name}; "
                f"instructions there: {known}"
            )
        return chosen[: cfg.max_episodes]
    return available[: cfg.max_episodes]


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the evaluation; returns the metrics written to metrics.json.

    Every input is checked before --out is created (the index against the data's content digests, the
    checkpoint, the device, the image size), so a refused run leaves no directory behind; outputs are
    written atomically.
    """
    from rt1.data.preprocessed_file import PreprocessedFile
    from rt1.model import check_model_path, load_model
    from rt1.policy import RT1Policy, check_device

    check_model_path(cfg.checkpoint)  # a missing or unreadable checkpoint fails before any output is made
    try:
        available = index_episodes(cfg.index)
    except (WindowIndexError, OSError) as e:
        raise EvaluationError(one_line(e)) from None
    if not available:
        raise EvaluationError(f"{cfg.index} lists no episodes")
    selected = select_episodes(available, cfg)
    sizes = check_index_matches_data(selected, cfg.index, cfg.data_dir)
    device = check_device(cfg.device)  # rt1.policy: one line naming --device
    model, model_config, _ = load_model(cfg.checkpoint, device)
    expected = tuple(model_config.frame_size)
    wrong = {name: size for name, size in sizes.items() if tuple(size) != expected}
    if wrong:
        name, size = next(iter(wrong.items()))
        raise EvaluationError(
            f"{cfg.data_dir / name} holds {size[0]}x{size[1]} frames but {cfg.checkpoint} was trained on "
            f"{expected[0]}x{expected[1]}: evaluate it on data preprocessed with --image-size "
            f"{expected[0]}x{expected[1]} (or native for the camera's 256x320)"
        )
    policy = RT1Policy(model, cond_scale=cfg.cond_scale)
    check_out_is_this_models(cfg)
    created = outermost_missing(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    try:
        return _evaluate_into(cfg, selected, policy, PreprocessedFile, progress)
    except BaseException:
        if created is not None:
            remove_empty_dirs(cfg.out, created)
        raise


def check_out_is_this_models(cfg: EvalConfig) -> None:
    """Refuse an --out holding another model's outputs (two models whose paths end in the same name share
    the default plots/NAME folder): its metrics.json records the model's resolved path."""
    try:
        recorded = json.loads((cfg.out / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return  # no outputs of an earlier run (or unreadable ones, which this run replaces)
    if not isinstance(recorded, dict):
        return
    other = recorded.get("checkpoint_path", recorded.get("checkpoint"))
    if isinstance(other, str) and Path(other).resolve() != Path(cfg.checkpoint).resolve():
        raise EvaluationError(
            f"{cfg.out} holds the outputs of another model ({other}): pass --out with a folder of its own"
        )


def _evaluate_into(
    cfg: EvalConfig, selected: list[IndexEpisode], policy, preprocessed_file, progress: bool
) -> dict:
    per_episode, all_sums, arrays = {}, [], {}
    files: dict = {}
    try:
        with progress_bar(len(selected), desc="evaluate", unit="episode", enabled=progress) as bar:
            for ep in selected:
                if ep.file not in files:
                    files[ep.file] = preprocessed_file(cfg.data_dir / ep.file)
                episode = files[ep.file].episode(ep.episode, decode_images=True)
                pred_tokens = policy.predict_episode(episode.images, episode.language_embedding)
                sums = metrics.episode_sums(
                    pred_tokens, episode.action_tokens, episode.actions, policy.tokenizer
                )
                all_sums.append(sums)
                summary = {"instruction": ep.instruction, "file": ep.file, **metrics.summarize(sums)}
                per_episode[str(ep.source_index)] = summary
                key = f"episode_{ep.source_index}"
                arrays[f"{key}/pred_tokens"] = pred_tokens
                arrays[f"{key}/true_tokens"] = episode.action_tokens
                arrays[f"{key}/true_actions"] = episode.actions
                if not cfg.evaluate_all:
                    _plot_episode(cfg, ep, episode, pred_tokens, policy, summary)
                bar.update()
    finally:
        for f in files.values():
            f.close()
    return _write_results(cfg, selected, per_episode, metrics.summarize(metrics.combine(all_sums)), arrays)


def _plot_episode(cfg: EvalConfig, ep: IndexEpisode, episode, pred_tokens, policy, summary: dict) -> None:
    """episode_{source index}.png: the episode's predicted vs ground-truth actions."""
    with atomic_output(cfg.out / f"episode_{ep.source_index}.png") as tmp:
        plot_episode(
            tmp,
            episode.images,
            ep.instruction,
            episode.actions,
            metrics.predicted_actions(pred_tokens, policy.tokenizer),
            subtitle=f"source episode {ep.source_index}, token accuracy "
            f"{summary['token_accuracy']:.2f}, cond_scale {cfg.cond_scale}",
        )


def _write_results(
    cfg: EvalConfig, selected: list[IndexEpisode], per_episode: dict, overall: dict, arrays: dict
) -> dict:
    """metrics.json, predictions.npz and (--all) error_summary.png; -> what metrics.json holds."""
    result = {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_path": str(Path(cfg.checkpoint).resolve()),
        "index": str(cfg.index),
        "cond_scale": cfg.cond_scale,
        "episodes": per_episode,
        "overall": overall,
    }
    with atomic_output(cfg.out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    with atomic_output(cfg.out / "predictions.npz") as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to the temporary name
            np.savez_compressed(f, **arrays)
    if cfg.evaluate_all:
        with atomic_output(cfg.out / "error_summary.png") as tmp:
            plot_error_summary(
                tmp,
                overall["mae"],
                overall["token_accuracy_per_dim"],
                f"{len(selected)} episodes of {cfg.index.name}: token accuracy "
                f"{overall['token_accuracy']:.3f}",
            )
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_cli(lambda _: run(args))


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plot_actions.py",
        description="Run a trained RT-1 checkpoint over recorded episodes as a robot would (6-frame history, "
        "frame-token cache) and plot predicted (orange) vs ground-truth (blue) actions.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="checkpoint-{epoch}.pt from train_ddp.py, or a model directory from python -m rt1.export",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="preprocessed data directory (PRE_DIR)")
    parser.add_argument(
        "--index", type=Path, required=True, help="index CSV from data_emerge.py, e.g. val_idx_M.csv"
    )
    select = parser.add_mutually_exclusive_group()
    select.add_argument(
        "--episode", type=int, action="append", default=[], help="source episode index to plot (repeatable)"
    )
    select.add_argument(
        "--instruction", help='plot episodes with this instruction, e.g. "pick brown chip bag"'
    )
    select.add_argument(
        "--all",
        action="store_true",
        help="evaluate every episode of the index: metrics and a summary plot only",
    )
    parser.add_argument(
        "--max-episodes",
        type=int,
        default=3,
        help="with --instruction or no selection: how many episodes to plot (default 3)",
    )
    parser.add_argument(
        "--cond-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: plots/{checkpoint name} next to the checkpoint, e.g. "
        "save/rt1_ddp/plots/checkpoint-3)",
    )
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", help="cpu or cuda")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        args.checkpoint,
        args.data_dir,
        args.index,
        args.out,
        tuple(args.episode),
        args.instruction,
        args.all,
        args.max_episodes,
        args.cond_scale,
        args.device,
    )
    result = evaluate(cfg)
    overall = result["overall"]
    print(
        f"{len(result['episodes'])} episode(s): token accuracy {overall['token_accuracy']:.3f}, terminate "
        f"accuracy {overall['terminate_accuracy']:.3f}; outputs in {cfg.out}"
    )
    for name in sorted(cfg.out.glob("*.png")):
        print(f"  {name}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
