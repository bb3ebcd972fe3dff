"""Stage 1: RLDS episodes (TFDS directory) -> segment HDF5 files (`rt1.data.segment_schema`).

Segments cover aligned source ranges [k*L, (k+1)*L) of the `train` split, clipped to the requested
[start, end), with L = `episodes_per_segment`; a segment is named for the range it covers. Source
positions are the canonical read order of `rt1.data.rlds_reader` (shards in file order, records in
order), so any split of the work (`--workers`, `--start/--end-episode`, a rerun) stores the same
episodes under the same `source_index`. Images stay the JPEG bytes of the TFRecords.

Each segment is written to a temporary name and renamed when complete. A rerun re-reads the source
of every segment: a finished one is verified (its episodes' indices and content fingerprints must
equal the source's) and skipped, a missing one is written. Free space is checked before each write.
One run per output directory (`stage.lock`, as training's `train.lock`); a stop (Ctrl-C, SIGTERM) stops
the worker processes too and leaves only finished segments and temporaries the next run removes.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt1.data.filters import get_filter
from rt1.data.rlds_reader import num_episodes, open_builder, read_episodes
from rt1.data.segment_schema import FILE_SUFFIX, Episode, segment_file_name, stored_episodes, write_segment
from rt1.errors import RT1Error, install_sigterm_handler, one_line, run_cli
from rt1.io import (
    check_free_space,
    check_writable_dir,
    locked_output_dir,
    remove_stale_temporaries,
    worker_pool,
)
from rt1.progress import progress_bar
from rt1.rlds_spec import ACTION_SPEC, EMBEDDING_DIM, OBSERVATION_VECTORS


class ConversionError(RT1Error, ValueError):
    """Bad input for the conversion: a one-line message naming the file or value."""


@dataclass(frozen=True)
class ConvertConfig:
    data_dir: Path
    out_dir: Path
    task_filter: str = "all"
    episodes_per_segment: int = 20  # the original's --episode-sec-len
    start_episode: int = 0
    end_episode: int | None = None  # exclusive; None = the end of the split
    workers: int = 1

    def __post_init__(self):
        get_filter(self.task_filter)
        if self.episodes_per_segment < 1:
            raise ConversionError(f"--episode-sec-len must be >= 1, got {self.episodes_per_segment}")
        if self.start_episode < 0:
            raise ConversionError(f"--start-episode must be >= 0, got {self.start_episode}")
        if self.end_episode is not None and self.end_episode <= self.start_episode:
            raise ConversionError(
                f"empty selection: --end-episode {self.end_episode} <= --start-episode {self.start_episode}"
            )
        if self.workers < 1:
            raise ConversionError(f"--workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class SegmentTask:
    """One segment of the plan: its source range, and what a finished file of that name holds (None: absent)."""

    episode_range: tuple[int, int]
    stored: list[tuple[int, str]] | None  # (source_index, fingerprint) per stored episode

    @property
    def name(self) -> str:
        return segment_file_name(*self.episode_range)


@dataclass
class SegmentResult:
    name: str
    status: str  # "written", or "verified" (already complete, content checked against the source)
    episodes_read: int = 0
    episodes_kept: int = 0
    steps: int = 0
    bytes_written: int = 0


def plan_segments(num_episodes: int, cfg: ConvertConfig) -> list[tuple[int, int]]:
    """Aligned [a, b) ranges covering the selection; independent of where a run starts."""
    end = num_episodes if cfg.end_episode is None else min(cfg.end_episode, num_episodes)
    if cfg.start_episode >= end:
        raise ConversionError(
            f"empty selection: episodes [{cfg.start_episode}, {cfg.end_episode}) of a split of {num_episodes}"
        )
    length = cfg.episodes_per_segment
    ranges = []
    for k in range(cfg.start_episode // length, (end - 1) // length + 1):
        a, b = max(k * length, cfg.start_episode), min((k + 1) * length, end)
        ranges.append((a, b))
    return ranges


def _to_episode(steps: dict, source_index: int) -> Episode:
    obs, action = steps["observation"], steps["action"]
    instructions = obs["natural_language_instruction"]
    embeddings = obs["natural_language_embedding"]
    if np.any(instructions != instructions[0]):
        raise ConversionError(
            f"source episode {source_index}: natural_language_instruction changes within the episode"
        )
    if not np.all(embeddings == embeddings[0]):
        raise ConversionError(
            f"source episode {source_index}: natural_language_embedding changes within the episode"
        )
    return Episode(
        source_index=source_index,
        instruction=instructions[0].decode("utf-8"),
        language_embedding=embeddings[0],
        images=list(obs["image"]),
        actions={k: action[k] for k in ACTION_SPEC},
        observations={k: obs[k] for k in OBSERVATION_VECTORS},
        is_first=steps["is_first"],
        is_last=steps["is_last"],
        is_terminal=steps["is_terminal"],
        reward=steps["reward"],
    )


# Bytes per step besides the image: every action and observation vector, reward and flags.
_VECTOR_BYTES_PER_STEP = (
    sum(4 * int(np.prod(spec.shape)) for spec in (*ACTION_SPEC.values(), *OBSERVATION_VECTORS.values()))
    + 4
    + 3
)


def estimate_segment_bytes(episodes: list[Episode]) -> int:
    """An upper estimate of a segment file's size (HDF5 adds ~16 bytes per image and fixed metadata)."""
    images = sum(len(jpeg) + 16 for e in episodes for jpeg in e.images)
    per_episode = sum(4 * EMBEDDING_DIM + 64 + len(e.instruction.encode()) for e in episodes)
    steps = sum(e.num_steps for e in episodes)
    return images + per_episode + steps * _VECTOR_BYTES_PER_STEP + (256 << 10)


def _check_matches_source(
    path: Path, stored: list[tuple[int, str]], read: list[tuple[int, str]], data_dir
) -> None:
    """A finished segment must hold exactly the episodes its range has in the source, by label and content."""
    for i in range(max(len(stored), len(read))):
        have = stored[i] if i < len(stored) else None
        want = read[i] if i < len(read) else None
        if have != want:
            what = (
                f"holds source episode {have[0]} with fingerprint {have[1]}"
                if have
                else f"ends before source episode {want[0]}"
            )
            source = (
                f"source episode {want[0]} has fingerprint {want[1]}"
                if want
                else "the source has no more episodes"
            )
            raise ConversionError(
                f"{path} {what}, but in {data_dir} {source}: the file is another dataset's or an "
                "older run's output; delete it (or use another --out-dir) and rerun"
            )


_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)" + re.escape(FILE_SUFFIX) + "$")


def check_one_segmentation(out_dir: Path, ranges: list[tuple[int, int]], episodes_per_segment: int) -> None:
    """Refuse a plan whose ranges overlap a segment file of another range in `out_dir` (a run with another
    --episode-sec-len): its episodes would be stored twice, which only stage 3 would notice."""
    existing = []
    for path in out_dir.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match:
            existing.append((int(match.group(1)), int(match.group(2)), path))
    planned = set(ranges)
    overlapping = sorted(
        (a, b, path)
        for a, b, path in existing
        if (a, b) not in planned and any(a < end and start < b for start, end in ranges)
    )
    if overlapping:
        a, b, path = overlapping[0]
        length = max(b - a for a, b, _ in existing)
        if length == episodes_per_segment:  # same length, cut at another --start/--end-episode
            raise ConversionError(
                f"{path} covers source episodes [{a}, {b}), part of a segment this run writes whole: "
                "its episodes would be stored a second time; delete it (an earlier run's partial "
                "segment) or use another --out-dir"
            )
        raise ConversionError(
            f"{out_dir} holds segments of {length} episodes (e.g. {path.name}, source episodes "
            f"[{a}, {b})): this run's --episode-sec-len {episodes_per_segment} would store those "
            f"episodes a second time; rerun with --episode-sec-len {length} or use another --out-dir"
        )


def convert_run(
    builder, cfg: ConvertConfig, tasks: list[SegmentTask], on_episode=None
) -> list[SegmentResult]:
    """Convert (or verify) consecutive segments, reading their episodes as one canonical-order stream."""
    keep = get_filter(cfg.task_filter)
    stream = read_episodes(builder, tasks[0].episode_range[0], tasks[-1].episode_range[1])
    results = []
    for task in tasks:
        a, b = task.episode_range
        path = cfg.out_dir / task.name
        episodes, read = [], 0
        for source_index, steps in itertools.islice(stream, b - a):
            episode = _to_episode(steps, source_index)
            read += 1
            if keep(episode.instruction):
                episodes.append(episode)
            if on_episode is not None:
                on_episode()
        result = SegmentResult(task.name, "written", read, len(episodes), sum(e.num_steps for e in episodes))
        if task.stored is not None:
            _check_matches_source(
                path, task.stored, [(e.source_index, e.fingerprint) for e in episodes], cfg.data_dir
            )
            result.status = "verified"
        else:
            check_free_space(cfg.out_dir, estimate_segment_bytes(episodes), path.name)
            try:
                result.bytes_written = write_segment(path, episodes, (a, b), cfg.task_filter)
            except OSError as e:
                raise ConversionError(f"{path}: cannot write the segment ({one_line(e)})") from None
        results.append(result)
    return results


_worker_builder = None


def _convert_in_worker(cfg: ConvertConfig, tasks: list[SegmentTask]) -> list[SegmentResult]:
    global _worker_builder
    if _worker_builder is None:
        _worker_builder = open_builder(cfg.data_dir)
    return convert_run(_worker_builder, cfg, tasks)


def _contiguous_runs(tasks: list[SegmentTask], max_len: int) -> list[list[SegmentTask]]:
    """Split the plan into runs of at most `max_len` segments (each run is one TFDS pipeline)."""
    return [tasks[i : i + max_len] for i in range(0, len(tasks), max_len)]


@dataclass
class ConvertSummary:
    written: int = 0
    verified: int = 0
    episodes_read: int = 0
    episodes_kept: int = 0
    steps: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def add(self, r: SegmentResult) -> None:
        self.written += r.status == "written"
        self.verified += r.status == "verified"
        self.episodes_read += r.episodes_read
        self.episodes_kept += r.episodes_kept
        self.steps += r.steps
        self.bytes_written += r.bytes_written

    def __str__(self) -> str:
        rate = self.episodes_read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.written + self.verified} segments ({self.written} written, {self.verified} already complete "
            f"and verified against the source), {self.episodes_read} episodes read, {self.episodes_kept} kept, "
            f"{self.steps} steps, {self.bytes_written / 2**20:.1f} MiB written in {self.seconds:.1f} s "
            f"({rate:.1f} episodes/s)"
        )


def convert(cfg: ConvertConfig, progress: bool = True) -> ConvertSummary:
    """Run stage 1 for `cfg`; returns a summary. Raises ConversionError on bad input."""
    builder = open_builder(cfg.data_dir)
    ranges = plan_segments(num_episodes(builder), cfg)
    check_writable_dir(cfg.out_dir)
    with locked_output_dir(cfg.out_dir, "stage-1 run"):  # one run per directory, before touching its files
        for stale in remove_stale_temporaries(cfg.out_dir):
            print(f"removed unfinished {stale.name} from an interrupted run", file=sys.stderr, flush=True)
        check_one_segmentation(cfg.out_dir, ranges, cfg.episodes_per_segment)
        # Every file in the way is checked before any work: an unrelated file is refused, never overwritten.
        tasks = [
            SegmentTask(r, stored_episodes(cfg.out_dir / segment_file_name(*r), r, cfg.task_filter))
            for r in ranges
        ]
        summary = ConvertSummary()
        start = time.perf_counter()
        total = sum(b - a for a, b in ranges)
        with progress_bar(total, unit="episode", desc=f"convert[{cfg.task_filter}]", enabled=progress) as bar:
            if cfg.workers == 1 or len(tasks) <= 1:
                for result in convert_run(builder, cfg, tasks, on_episode=lambda: bar.update(1)):
                    summary.add(result)
            else:
                # Two runs per worker: long enough to amortise TFDS pipeline set-up, short enough to balance load.
                runs = _contiguous_runs(tasks, max_len=-(-len(tasks) // (2 * cfg.workers)))
                context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
                with worker_pool(cfg.workers, mp_context=context) as pool:  # a stop stops the workers too
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

    parser = argparse.ArgumentParser(
        description=f"Stage 1: convert fractal20220817_data RLDS episodes (task filter '{task_filter}') "
        "into segment HDF5 files named {a}-{b}_episode.h5, one per --episode-sec-len episodes. "
        "Source episodes are numbered in the canonical read order (shards in file order, records "
        "in order). Resumable: a rerun verifies finished segments against the source by content "
        "and writes the missing ones."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="TFDS dataset directory, e.g. .../fractal20220817_data/0.1.0",
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="directory for the segment files")
    parser.add_argument(
        "--episode-sec-len", type=int, default=20, help="source episodes per segment file (default 20)"
    )
    parser.add_argument("--start-episode", type=int, default=0, help="first source episode (default 0)")
    parser.add_argument(
        "--end-episode", type=int, default=None, help="end of the selection, exclusive (default: all)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="segments converted in parallel processes (default 1)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides the progress bar
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

    def run(_) -> int:
        install_sigterm_handler()  # SIGTERM unwinds: workers stopped, temporaries removed, exit 143
        cfg = ConvertConfig(
            args.data_dir,
            args.out_dir,
            task_filter,
            args.episode_sec_len,
            args.start_episode,
            args.end_episode,
            args.workers,
        )
        summary = convert(cfg, progress=not args.no_progress)
        print(f"stage 1 [{task_filter}] done: {summary}; output in {args.out_dir}")
        return 0

    return run_cli(run)
