"""Stage 1: RLDS episodes (TFDS directory) -> segment HDF5 files (`rt1.data.segment_schema`).

Segments cover aligned source ranges [k*L, (k+1)*L) of the `train` split, clipped to the requested
[start, end), with L = `episode_sec_len`; a segment is named for the range it covers. Episodes are
read with TFDS skip-decoding, so the JPEG bytes go to disk untouched. Each segment is written to a
temporary name and renamed when complete; a rerun skips complete segments and redoes the rest.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rt1.data.atomic import check_writable_dir, remove_stale_temporaries
from rt1.data.filters import get_filter
from rt1.data.rlds_spec import ACTION_SPEC, DATASET_NAME, DATASET_VERSION, OBSERVATION_VECTORS, spec_mismatches
from rt1.data.segment_schema import Episode, is_complete_segment, segment_file_name, write_segment


class ConversionError(ValueError):
    """Bad input for the conversion: a one-line message naming the file or value."""


@dataclass(frozen=True)
class ConvertConfig:
    data_dir: Path
    out_dir: Path
    task_filter: str = "all"
    episode_sec_len: int = 20
    start_episode: int = 0
    end_episode: int | None = None  # exclusive; None = the end of the split
    workers: int = 1

    def __post_init__(self):
        get_filter(self.task_filter)
        if self.episode_sec_len < 1:
            raise ConversionError(f"--episode-sec-len must be >= 1, got {self.episode_sec_len}")
        if self.start_episode < 0:
            raise ConversionError(f"--start-episode must be >= 0, got {self.start_episode}")
        if self.end_episode is not None and self.end_episode <= self.start_episode:
            raise ConversionError(
                f"empty selection: --end-episode {self.end_episode} <= --start-episode {self.start_episode}")
        if self.workers < 1:
            raise ConversionError(f"--workers must be >= 1, got {self.workers}")


@dataclass
class SegmentResult:
    name: str
    episodes_read: int = 0
    episodes_kept: int = 0
    steps: int = 0
    bytes_written: int = 0


def resolve_rlds_dir(data_dir: Path) -> Path:
    """Accept the version directory itself, or a parent holding fractal20220817_data/0.1.0."""
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / DATASET_VERSION, data_dir / DATASET_NAME / DATASET_VERSION):
        if (candidate / "dataset_info.json").is_file():
            return candidate
    raise ConversionError(
        f"--data-dir {data_dir} is not a TFDS dataset directory (no dataset_info.json; "
        f"expected e.g. .../{DATASET_NAME}/{DATASET_VERSION})")


def open_builder(data_dir: Path):
    """`tfds.builder_from_directory` after checking the directory holds fractal-format data."""
    import tensorflow_datasets as tfds

    rlds_dir = resolve_rlds_dir(data_dir)
    try:
        builder = tfds.builder_from_directory(str(rlds_dir))
    except Exception as e:  # TFDS raises several types for unreadable metadata
        raise ConversionError(f"{rlds_dir}: cannot read the TFDS dataset ({type(e).__name__}: {e})") from None
    problems = spec_mismatches(builder.info.features)
    if problems:
        raise ConversionError(f"{rlds_dir}: features are not the fractal spec: {'; '.join(problems)}")
    if "train" not in builder.info.splits:
        raise ConversionError(f"{rlds_dir}: no 'train' split")
    return builder


def plan_segments(num_episodes: int, cfg: ConvertConfig) -> list[tuple[int, int]]:
    """Aligned [a, b) ranges covering the selection; independent of where a run starts."""
    end = num_episodes if cfg.end_episode is None else min(cfg.end_episode, num_episodes)
    if cfg.start_episode >= end:
        raise ConversionError(
            f"empty selection: episodes [{cfg.start_episode}, {cfg.end_episode}) of a split of {num_episodes}")
    length = cfg.episode_sec_len
    ranges = []
    for k in range(cfg.start_episode // length, (end - 1) // length + 1):
        a, b = max(k * length, cfg.start_episode), min((k + 1) * length, end)
        ranges.append((a, b))
    return ranges


def _episode_dataset(builder, start: int, end: int):
    """tf.data of whole episodes [start, end): each element is the episode's steps batched."""
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(
        split=f"train[{start}:{end}]", shuffle_files=False,
        decoders={"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}},
    )
    return tfds.as_numpy(ds.map(lambda episode: episode["steps"].batch(1 << 30).get_single_element()))


def _to_episode(steps: dict, source_index: int) -> Episode:
    obs, action = steps["observation"], steps["action"]
    instructions = obs["natural_language_instruction"]
    embeddings = obs["natural_language_embedding"]
    if np.any(instructions != instructions[0]):
        raise ConversionError(f"source episode {source_index}: natural_language_instruction changes within the episode")
    if not np.all(embeddings == embeddings[0]):
        raise ConversionError(f"source episode {source_index}: natural_language_embedding changes within the episode")
    return Episode(
        source_index=source_index,
        instruction=instructions[0].decode("utf-8"),
        language_embedding=embeddings[0],
        images=list(obs["image"]),
        actions={k: action[k] for k in ACTION_SPEC},
        observations={k: obs[k] for k in OBSERVATION_VECTORS},
        is_first=steps["is_first"], is_last=steps["is_last"], is_terminal=steps["is_terminal"],
        reward=steps["reward"],
    )


def _contiguous_runs(ranges: list[tuple[int, int]], max_len: int) -> list[list[tuple[int, int]]]:
    """Group consecutive ranges (each run read with one TFDS pipeline), at most `max_len` per run."""
    runs: list[list[tuple[int, int]]] = []
    for r in ranges:
        if runs and runs[-1][-1][1] == r[0] and len(runs[-1]) < max_len:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def convert_run(builder, cfg: ConvertConfig, ranges: list[tuple[int, int]], on_episode=None) -> list[SegmentResult]:
    """Convert consecutive segments, reading their episodes as one stream (one TFDS pipeline per run)."""
    keep = get_filter(cfg.task_filter)
    stream = iter(_episode_dataset(builder, ranges[0][0], ranges[-1][1]))
    results = []
    for a, b in ranges:
        result = SegmentResult(segment_file_name(a, b))
        episodes = []
        for source_index in range(a, b):
            steps = next(stream, None)
            if steps is None:
                raise ConversionError(f"{cfg.data_dir}: the train split ended before episode {source_index}")
            episode = _to_episode(steps, source_index)
            result.episodes_read += 1
            if keep(episode.instruction):
                episodes.append(episode)
            if on_episode is not None:
                on_episode()
        result.episodes_kept = len(episodes)
        result.steps = sum(e.num_steps for e in episodes)
        result.bytes_written = write_segment(cfg.out_dir / result.name, episodes, (a, b), cfg.task_filter)
        results.append(result)
    return results


_worker_builder = None


def _convert_in_worker(cfg: ConvertConfig, ranges: list[tuple[int, int]]) -> list[SegmentResult]:
    global _worker_builder
    if _worker_builder is None:
        _worker_builder = open_builder(cfg.data_dir)
    return convert_run(_worker_builder, cfg, ranges)


@dataclass
class ConvertSummary:
    segments: int = 0
    skipped_segments: int = 0
    episodes_read: int = 0
    episodes_kept: int = 0
    steps: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def add(self, r: SegmentResult) -> None:
        self.segments += 1
        self.episodes_read += r.episodes_read
        self.episodes_kept += r.episodes_kept
        self.steps += r.steps
        self.bytes_written += r.bytes_written

    def __str__(self) -> str:
        rate = self.episodes_read / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.segments} segments ({self.skipped_segments} already complete, skipped), "
                f"{self.episodes_read} episodes read, {self.episodes_kept} kept, {self.steps} steps, "
                f"{self.bytes_written / 2**20:.1f} MiB written in {self.seconds:.1f} s ({rate:.1f} episodes/s)")


def convert(cfg: ConvertConfig, progress: bool = True) -> ConvertSummary:
    """Run stage 1 for `cfg`; returns a summary. Raises ConversionError on bad input."""
    builder = open_builder(cfg.data_dir)
    ranges = plan_segments(builder.info.splits["train"].num_examples, cfg)
    check_writable_dir(cfg.out_dir)
    for stale in remove_stale_temporaries(cfg.out_dir):
        tqdm.write(f"removed unfinished {stale.name} from an interrupted run")
    todo = [r for r in ranges if not is_complete_segment(cfg.out_dir / segment_file_name(*r), r, cfg.task_filter)]
    summary = ConvertSummary(segments=len(ranges) - len(todo), skipped_segments=len(ranges) - len(todo))
    start = time.perf_counter()
    total = sum(b - a for a, b in todo)
    with tqdm(total=total, unit="episode", desc=f"convert[{cfg.task_filter}]", disable=not progress) as bar:
        if cfg.workers == 1 or len(todo) <= 1:
            for run in _contiguous_runs(todo, max_len=len(todo)):
                for result in convert_run(builder, cfg, run, on_episode=lambda: bar.update(1)):
                    summary.add(result)
        else:
            # Two runs per worker: long enough to amortise TFDS pipeline set-up, short enough to balance load.
            runs = _contiguous_runs(todo, max_len=-(-len(todo) // (2 * cfg.workers)))
            context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
            with concurrent.futures.ProcessPoolExecutor(cfg.workers, mp_context=context) as pool:
                futures = [pool.submit(_convert_in_worker, cfg, run) for run in runs]
                for future in concurrent.futures.as_completed(futures):
                    for result in future.result():
                        summary.add(result)
                        bar.update(result.episodes_read)
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: list[str] | None = None, task_filter: str = "all") -> int:
    """Command line of `data_preprocessing/rt_data_generator_*.py` (the scripts differ by filter)."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(
        description=f"Stage 1: convert fractal20220817_data RLDS episodes (task filter '{task_filter}') "
                    "into segment HDF5 files named {a}-{b}_episode.h5, one per --episode-sec-len episodes. "
                    "Resumable: rerunning skips complete segments.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="TFDS dataset directory, e.g. .../fractal20220817_data/0.1.0")
    parser.add_argument("--out-dir", type=Path, required=True, help="directory for the segment files")
    parser.add_argument("--episode-sec-len", type=int, default=20, help="source episodes per segment file (default 20)")
    parser.add_argument("--start-episode", type=int, default=0, help="first source episode (default 0)")
    parser.add_argument("--end-episode", type=int, default=None, help="end of the selection, exclusive (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="segments converted in parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides the progress bar
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        cfg = ConvertConfig(args.data_dir, args.out_dir, task_filter, args.episode_sec_len, args.start_episode,
                            args.end_episode, args.workers)
        summary = convert(cfg, progress=not args.no_progress)
    except (ConversionError, PermissionError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"stage 1 [{task_filter}] done: {summary}; output in {args.out_dir}")
    return 0
