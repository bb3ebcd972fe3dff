"""Stage 2: segment files (stage 1) -> preprocessed files (`rt1.data.preprocessed_schema`).

For each `*_episode.h5` segment file in the input directory, keeps the episodes the task filter
selects, resizes every frame to the target size (squash) and re-encodes it as JPEG (`--image-size
native`: keeps the source JPEG bytes as they are), tokenizes the actions with the fixed RT-1 bounds, and
writes one output file of the same name. Used by `DataPreprocess_batch_all.py` (filter "all") and
`DataPreprocess_batch_pick.py` (filter "pick").

- Atomic: an output appears under its final name only when complete (temp name + rename).
- Resumable: a rerun skips outputs that are complete and still match their input, redoes the others,
  and removes temporaries left by an interrupted run. One run per output directory at a time
  (`stage.lock`); a stop (Ctrl-C, SIGTERM) stops the worker processes too.
- `delete_input`: an input is deleted only after its output was re-opened and checked whole
  (layout, content digest, every frame decodes).
- Errors are `PreprocessError` with a one-line message naming the file.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from rt1.config import DEFAULT_IMAGE_SIZE
from rt1.data.filters import TASK_FILTERS, get_filter
from rt1.data.h5files import existing_output
from rt1.data.images import (
    JPEG_QUALITY,
    NATIVE,
    NATIVE_DESCRIPTION,
    RESIZE_DESCRIPTION,
    ImageSizeError,
    image_size_label,
    parse_image_size,
)
from rt1.data.preprocess_episode import PreprocessError, preprocess_episode, target_size
from rt1.data.preprocessed_schema import (
    FORMAT,
    PreprocessedEpisode,
    PreprocessedFormatError,
    open_preprocessed,
    verify_preprocessed,
    write_preprocessed,
)
from rt1.data.segment_schema import FILE_SUFFIX, SegmentFormatError, open_segment, read_segment
from rt1.errors import install_sigterm_handler, one_line, run_cli
from rt1.io import (
    check_free_space,
    check_writable_dir,
    locked_output_dir,
    remove_stale_temporaries,
    worker_pool,
)
from rt1.progress import progress_bar as new_progress
from rt1.rlds_spec import EMBEDDING_DIM


@dataclass
class FileResult:
    """What happened to one segment file."""

    name: str
    status: str  # "written" or "skipped" (output already complete)
    episodes: int  # episodes in the output
    steps: int
    bytes: int  # size of the output file
    dropped_episodes: int = 0  # episodes of the input the filter left out (0 when skipped)
    input_deleted: bool = False


@dataclass
class Summary:
    in_dir: Path
    out_dir: Path
    task_filter: str
    image_size: tuple[int, int] | str  # (H, W) or NATIVE
    files: list[FileResult] = field(default_factory=list)
    stale_removed: int = 0
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(r.status == "written" for r in self.files)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.files)

    @property
    def episodes(self) -> int:
        return sum(r.episodes for r in self.files)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.files)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.files)

    def format(self) -> str:
        per_step = f" ({self.bytes / self.steps / 1024:.1f} KiB per step)" if self.steps else ""
        dropped = sum(r.dropped_episodes for r in self.files)
        deleted = sum(r.input_deleted for r in self.files)
        lines = [
            f"preprocessed {len(self.files)} segment files from {self.in_dir} into {self.out_dir} "
            f"(filter '{self.task_filter}', {image_size_label(self.image_size)} JPEG) in {self.seconds:.1f} s",
            f"  files: {self.written} written, {self.skipped} skipped (already complete), "
            f"{self.stale_removed} stale temporaries removed",
            f"  episodes: {self.episodes} in the outputs, {dropped} left out by the filter in this run",
            f"  steps: {self.steps}; bytes: {self.bytes / 2**20:.1f} MiB{per_step}",
        ]
        if deleted:
            lines.append(f"  inputs deleted after their output was verified: {deleted}")
        return "\n".join(lines)


def output_is_complete(
    out_path: Path,
    in_path: Path | None,
    *,
    task_filter: str,
    image_size: int | tuple[int, int] | str,
    jpeg_quality: int = JPEG_QUALITY,
) -> bool:
    """True when `out_path` is a finished output of this configuration for `in_path`, so a rerun may skip it.

    False (redo) when it is missing, unreadable, of another format version, or its input changed since.
    `PreprocessError` when it exists but belongs to another configuration (filter, size, quality) or is not
    a preprocessed file at all: a rerun must not overwrite it silently.
    """
    out_path = Path(out_path)
    found = check_output_in_the_way(out_path)
    if found is None:
        return False  # absent, or an HDF5 file too damaged to open (truncated): redo
    found.close()
    try:
        with open_preprocessed(out_path) as f:
            attrs = {k: f.attrs[k] for k in _RESUME_ATTRS}
    except (PreprocessedFormatError, KeyError):
        return False  # corrupt, or of another format version: redo
    _check_same_configuration(out_path, attrs, task_filter, image_size, jpeg_quality)
    if attrs["source_file"] != out_path.name:
        return False
    if in_path is None or not Path(in_path).exists():
        return True  # input already deleted by an earlier --delete-input run
    return _same_input(Path(in_path), attrs)


# The attributes of an output that say what it was made from and how.
_RESUME_ATTRS = (
    "task_filter",
    "image_size",
    "jpeg_quality",
    "resize",
    "source_file",
    "episode_range",
    "source_num_episodes",
    "source_num_steps",
    "source_format_version",
    "source_size",
)


def _check_same_configuration(
    out_path: Path, attrs: dict, task_filter: str, image_size, jpeg_quality: int
) -> None:
    """PreprocessError when the output was written with another filter, image size or JPEG quality."""
    if attrs["task_filter"] != task_filter:
        raise PreprocessError(
            f"{out_path} was written with task filter '{attrs['task_filter']}', this run uses "
            f"'{task_filter}': use a separate --out-dir per filter"
        )
    size, native = target_size(image_size)
    found_size = tuple(int(x) for x in attrs["image_size"])
    found_native = attrs["resize"] == NATIVE_DESCRIPTION
    if (found_size, found_native) != (size, native):
        raise PreprocessError(
            f"{out_path} was written at image size {found_size}{' by --image-size native' if found_native else ''}, this run "
            f"uses {image_size_label(NATIVE if native else size)}: use a separate --out-dir per image size"
        )
    if not native and int(attrs["jpeg_quality"]) != jpeg_quality:
        raise PreprocessError(
            f"{out_path} was written at JPEG quality {int(attrs['jpeg_quality'])}, this run uses "
            f"{jpeg_quality}: use a separate --out-dir per quality"
        )


def _same_input(in_path: Path, attrs: dict) -> bool:
    """Whether the segment file `in_path` is the one the output was made from (its range, counts, size)."""
    try:
        with open_segment(in_path) as seg:
            return (
                tuple(int(x) for x in seg.attrs["episode_range"])
                == tuple(int(x) for x in attrs["episode_range"])
                and int(seg.attrs["num_episodes"]) == int(attrs["source_num_episodes"])
                and int(seg.attrs["num_steps"]) == int(attrs["source_num_steps"])
                and int(seg.attrs["format_version"]) == int(attrs["source_format_version"])
                and in_path.stat().st_size == int(attrs["source_size"])
            )
    except SegmentFormatError as e:
        raise PreprocessError(one_line(e)) from None
    except (KeyError, OSError) as e:
        raise PreprocessError(f"{in_path}: corrupt segment file ({one_line(e)})") from None


def check_output_in_the_way(out_path: Path) -> h5py.File | None:
    """The check stage 1 makes too (`existing_output`): a preprocessed HDF5 file under the name, None, or refused."""
    return existing_output(out_path, FORMAT, "a preprocessed file", PreprocessError, redo_damaged=True)


def estimate_output_bytes(episodes: list[PreprocessedEpisode]) -> int:
    """An upper estimate of an output file's size: frames, per-step tokens and actions, per-episode rows."""
    frames = sum(len(jpeg) + 8 for e in episodes for jpeg in e.jpeg_frames)
    steps = sum(e.num_steps for e in episodes)
    return frames + steps * 200 + len(episodes) * (4 * EMBEDDING_DIM + 256) + (64 << 10)


def preprocess_segment(
    in_path: Path,
    out_path: Path,
    *,
    task_filter: str = "all",
    image_size: int | tuple[int, int] | str = DEFAULT_IMAGE_SIZE,
    jpeg_quality: int = JPEG_QUALITY,
    verify: bool = False,
) -> FileResult:
    """Preprocess one segment file into `out_path` (atomically); `verify` re-opens and checks the output."""
    in_path, out_path = Path(in_path), Path(out_path)
    keep = get_filter(task_filter)
    segment, source = _read_source(in_path)
    size, native = target_size(image_size)
    kept = [ep for ep in segment.episodes if ep.num_steps > 0 and keep(ep.instruction)]
    episodes = [preprocess_episode(ep, in_path, size, native, jpeg_quality) for ep in kept]
    try:
        check_free_space(out_path.parent, estimate_output_bytes(episodes), out_path.name)
        nbytes, digest = write_preprocessed(
            out_path,
            episodes,
            image_size=size,
            jpeg_quality=0 if native else jpeg_quality,
            resize=NATIVE_DESCRIPTION if native else RESIZE_DESCRIPTION,
            task_filter=task_filter,
            source=source,
        )
    except OSError as e:
        raise PreprocessError(f"{out_path}: cannot write ({one_line(e)})") from None
    if verify:
        try:
            verify_preprocessed(out_path, digest)
        except (PreprocessedFormatError, FileNotFoundError) as e:
            raise PreprocessError(f"verification of the new output failed: {one_line(e)}") from None
    steps = sum(e.num_steps for e in episodes)
    dropped = len(segment.episodes) - len(kept)
    return FileResult(out_path.name, "written", len(episodes), steps, nbytes, dropped)


def _read_source(in_path: Path) -> tuple:
    """(the segment, the attributes an output keeps of its source) of the segment file `in_path`."""
    try:
        segment = read_segment(in_path)
        with open_segment(in_path) as seg:
            source = {
                "source_dataset": str(seg.attrs.get("source_dataset", "")),
                "source_file": in_path.name,
                "source_size": in_path.stat().st_size,
                "source_format_version": int(seg.attrs["format_version"]),
                "source_num_episodes": int(seg.attrs["num_episodes"]),
                "source_num_steps": int(seg.attrs["num_steps"]),
                "episode_range": segment.episode_range,
                "segment_task_filter": segment.task_filter,
            }
    except SegmentFormatError as e:
        raise PreprocessError(one_line(e)) from None
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise PreprocessError(
            f"{in_path}: corrupt segment file ({type(e).__name__}: {one_line(e)})"
        ) from None
    return segment, source


@dataclass(frozen=True)
class _Task:
    in_path: Path
    out_path: Path
    task_filter: str
    image_size: tuple[int, int] | str
    jpeg_quality: int
    delete_input: bool


def _run_task(task: _Task) -> FileResult:
    """One file, in a worker process: skip if complete, else preprocess; then delete the input if asked."""
    if output_is_complete(
        task.out_path,
        task.in_path,
        task_filter=task.task_filter,
        image_size=task.image_size,
        jpeg_quality=task.jpeg_quality,
    ):
        if task.delete_input:
            try:
                verify_preprocessed(task.out_path)
            except (PreprocessedFormatError, FileNotFoundError) as e:
                raise PreprocessError(f"verification of an existing output failed: {one_line(e)}") from None
        try:
            with open_preprocessed(task.out_path) as f:
                result = FileResult(
                    task.out_path.name,
                    "skipped",
                    int(f.attrs["num_episodes"]),
                    int(f.attrs["num_steps"]),
                    task.out_path.stat().st_size,
                )
        except PreprocessedFormatError as e:
            raise PreprocessError(one_line(e)) from None
    else:
        result = preprocess_segment(
            task.in_path,
            task.out_path,
            task_filter=task.task_filter,
            image_size=task.image_size,
            jpeg_quality=task.jpeg_quality,
            verify=task.delete_input,
        )
    if task.delete_input and task.in_path.exists():
        task.in_path.unlink()
        result.input_deleted = True
    return result


def list_segment_files(in_dir: Path) -> list[Path]:
    """The segment files of `in_dir`, sorted by name; `PreprocessError` if there are none."""
    in_dir = Path(in_dir)
    if not in_dir.exists():
        raise PreprocessError(f"input directory {in_dir} does not exist")
    if not in_dir.is_dir():
        raise PreprocessError(f"input path {in_dir} is not a directory")
    entries = list(in_dir.iterdir())
    if not entries:
        raise PreprocessError(f"input directory {in_dir} is empty")
    inputs = sorted(
        (p for p in entries if p.name.endswith(FILE_SUFFIX) and p.is_file()), key=lambda p: p.name
    )
    if not inputs:
        raise PreprocessError(f"no segment files (*{FILE_SUFFIX}) in {in_dir}")
    return inputs


def preprocess_dir(
    in_dir: Path,
    out_dir: Path,
    *,
    task_filter: str = "all",
    image_size: int | tuple[int, int] | str = DEFAULT_IMAGE_SIZE,
    workers: int = 1,
    delete_input: bool = False,
    jpeg_quality: int = JPEG_QUALITY,
    progress: bool = True,
) -> Summary:
    """Preprocess every segment file of `in_dir` into `out_dir`; returns the summary.

    `workers` > 1 uses that many processes. Raises `PreprocessError` (one line, naming the file) on the
    first failing file; the outputs already finished stay, and a rerun resumes from them.
    """
    started = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    image_size = _check_options(task_filter, image_size, jpeg_quality, workers)
    inputs = list_segment_files(in_dir)
    try:
        check_writable_dir(out_dir)
    except PermissionError as e:
        raise PreprocessError(one_line(e)) from None
    if out_dir.resolve() == in_dir.resolve():
        raise PreprocessError(
            f"--out-dir {out_dir} is the input directory: outputs keep the input names, "
            "so they need a directory of their own"
        )
    summary = Summary(in_dir, out_dir, task_filter, image_size)
    with locked_output_dir(out_dir, "stage-2 run"):  # one run per directory, before touching its files
        summary.stale_removed = len(remove_stale_temporaries(out_dir))
        tasks = [
            _Task(p, out_dir / p.name, task_filter, image_size, jpeg_quality, delete_input) for p in inputs
        ]
        for task in tasks:  # every file in the way is refused before any work, as stage 1 does
            found = check_output_in_the_way(task.out_path)
            if found is not None:
                found.close()
        _run_tasks(tasks, workers, summary, progress)
    summary.files.sort(key=lambda r: r.name)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_options(task_filter: str, image_size, jpeg_quality: int, workers: int) -> tuple[int, int] | str:
    """PreprocessError on a bad option; -> the parsed image size ((H, W) or NATIVE)."""
    if task_filter not in TASK_FILTERS:
        raise PreprocessError(f"unknown task filter '{task_filter}'; known: {sorted(TASK_FILTERS)}")
    try:
        image_size = parse_image_size(image_size)
    except ImageSizeError as e:
        raise PreprocessError(str(e)) from None
    if not 1 <= jpeg_quality <= 100:
        raise PreprocessError(f"JPEG quality {jpeg_quality} is out of range (1..100)")
    if workers < 1:
        raise PreprocessError(f"--workers must be at least 1, got {workers}")
    return image_size


def _run_tasks(tasks: list[_Task], workers: int, summary: Summary, progress: bool) -> None:
    """Every task, in this process or in `workers` processes; each result goes to `summary` as it ends."""

    def bar():
        desc = f"preprocess ({summary.task_filter})"
        return new_progress(len(tasks), unit="file", desc=desc, enabled=progress)

    def done(progress_bar, result: FileResult) -> None:
        summary.files.append(result)
        progress_bar.set_postfix(episodes=summary.episodes, steps=summary.steps, refresh=False)
        progress_bar.update()

    if workers == 1 or len(tasks) == 1:
        with bar() as progress_bar:
            for task in tasks:
                done(progress_bar, _run_task(task))
    else:
        # Workers are started (forked) before the progress bar starts its monitor thread; a stop (or an
        # error) terminates them before it propagates.
        with worker_pool(min(workers, len(tasks))) as pool:
            futures = [pool.submit(_run_task, task) for task in tasks]
            with bar() as progress_bar:
                for future in as_completed(futures):
                    done(progress_bar, future.result())


def build_arg_parser(task_filter: str, prog: str | None = None) -> argparse.ArgumentParser:
    what = (
        "all episodes"
        if task_filter == "all"
        else f"only the episodes the '{task_filter}' task filter selects"
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            f"Stage 2 of the RT-1 pipeline: preprocess the segment files (*{FILE_SUFFIX}, stage 1) of --in-dir "
            f"into --out-dir, keeping {what}. Each output file has its input's name and holds every step once: "
            "frames squash-resized to --image-size and stored as JPEG, actions tokenized to (steps, 11) uint8 "
            "with the fixed RT-1 bounds plus the continuous values, instruction and its embedding, episode "
            "boundaries and source episode index (layout: rt1/data/preprocessed_schema.py). Reruns skip "
            "complete outputs and redo incomplete ones. Next step: data_emerge.py."
        ),
        epilog="Errors print one line 'error: ...' to stderr and exit with status 2.",
    )
    parser.add_argument("--in-dir", required=True, type=Path, help="directory of stage-1 segment files")
    parser.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        help="directory for the preprocessed files (created if missing; one per filter and image size)",
    )
    parser.add_argument(
        "--image-size",
        default=str(DEFAULT_IMAGE_SIZE),
        metavar="N|HxW|native",
        help=f"size of the stored frames: N for N x N (default {DEFAULT_IMAGE_SIZE}: the default preset's "
        "image_size, as the original), HxW for H rows and W columns (e.g. 256x320), or native: the camera's "
        "256x320 frames stored as the source JPEG bytes, not re-encoded (--jpeg-quality unused). The 256x320 "
        "frames are squashed to the size without keeping the aspect ratio",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="number of worker processes (default: the number of CPUs, %(default)s here)",
    )
    parser.add_argument(
        "--delete-input",
        action="store_true",
        help="delete each input file once its output is complete and verified "
        "(re-opened, digest checked, every frame decoded)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=JPEG_QUALITY,
        help=f"JPEG quality of the stored frames (default {JPEG_QUALITY})",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    return parser


def main(argv: list[str] | None = None, *, task_filter: str = "all", prog: str | None = None) -> int:
    """Command line of the DataPreprocess_batch_*.py scripts; returns the exit status."""

    def run(argv: list[str] | None) -> int:
        install_sigterm_handler()  # SIGTERM unwinds: workers stopped, temporaries removed, exit 143
        args = build_arg_parser(task_filter, prog).parse_args(argv)
        summary = preprocess_dir(
            args.in_dir,
            args.out_dir,
            task_filter=task_filter,
            image_size=args.image_size,
            workers=args.workers,
            delete_input=args.delete_input,
            jpeg_quality=args.jpeg_quality,
            progress=not args.no_progress,
        )
        print(summary.format())
        return 0

    return run_cli(run, argv)
