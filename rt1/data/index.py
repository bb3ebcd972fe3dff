"""Stage 3: the window index of the training loader (`data_emerge.py`).

`build_index(data_dir, out_dir)` lists the preprocessed files of `data_dir`, splits their episodes
into train and validation, and writes into `out_dir` (default: `data_dir`, never the current directory)

    train_idx_{N}.csv, val_idx_{M}.csv    N, M = numbers of windows; header `start_index,file`, then one
                                          row per window: `start_index` is the step row (in that file) where
                                          the window starts, `file` is the file's path relative to data_dir
    train_idx_{N}.json, val_idx_{M}.json  sidecars (format "rt1-window-index", format_version 1): window
                                          length, seed, val fraction, split unit, data_dir, the file list
                                          with each file's steps, episodes and content digest, a fingerprint
                                          of that list, and this split's episodes

Windows: every run of `window` consecutive steps inside one episode (an episode of n steps gives
n - window + 1 windows, one shorter than `window` gives none); a window never crosses an episode.

Split unit: the episode. The episodes that give at least one window are sorted by (source episode
index, file, row) and permuted with `numpy.random.default_rng(seed)`; the first
round(val_fraction * count) go to validation. With val_fraction 0 every episode is in train and no
val files are written (training then runs without --val-index). So no episode has windows in both CSVs, the same data
and seed give byte-identical CSVs whatever order the filesystem lists files in, and a different seed
gives a different split. Adding files changes the split (it is a permutation of all episodes).

`read_index(csv)` and `index_episodes(csv)` read an index back (the loader, plots by episode or
instruction). Errors are `WindowIndexError` with a one-line message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt1.config import DEFAULT_WINDOW
from rt1.data.preprocessed_schema import PreprocessedFormatError, open_preprocessed
from rt1.errors import RT1Error, one_line, run_cli
from rt1.io import atomic_output, check_writable_dir

INDEX_FORMAT = "rt1-window-index"
INDEX_FORMAT_VERSION = 1
CSV_HEADER = "start_index,file"
SPLITS = ("train", "val")


class WindowIndexError(RT1Error, ValueError):
    """An index cannot be built or read; the message is one line."""


@dataclass(frozen=True)
class IndexEpisode:
    """One episode of an index split."""

    file: str  # relative to data_dir
    episode: int  # row in the file's episode table
    source_index: int  # position in the RLDS train split
    instruction: str
    step_start: int  # first step row in the file
    num_steps: int
    num_windows: int
    split: str


@dataclass
class IndexResult:
    train_csv: Path
    val_csv: Path | None  # None with val_fraction 0 (every episode trains; no val files are written)
    train_windows: int
    val_windows: int
    train_episodes: int
    val_episodes: int
    unused_episodes: int  # shorter than the window

    def format(self) -> str:
        val = (
            f"{self.val_windows} windows from {self.val_episodes} episodes -> {self.val_csv}"
            if self.val_csv is not None
            else "none (--val-fraction 0: every episode is in train; no val files)"
        )
        return (
            f"train: {self.train_windows} windows from {self.train_episodes} episodes -> {self.train_csv}\n"
            f"val:   {val}\n"
            f"episodes shorter than the window (no windows): {self.unused_episodes}"
        )


@dataclass
class WindowIndex:
    """An index CSV in memory: row i is the window starting at step row starts[i] of files[file_ids[i]]."""

    csv: Path
    starts: np.ndarray  # int64 (N,)
    file_ids: np.ndarray  # int32 (N,)
    files: list[str]
    meta: dict | None  # the sidecar, if there is one

    def __len__(self) -> int:
        return len(self.starts)


def window_starts(step_start: int, num_steps: int, window: int) -> range:
    """The start rows of the windows of one episode (empty if it is shorter than `window`)."""
    return range(step_start, step_start + max(0, num_steps - window + 1))


def list_preprocessed_files(data_dir: Path) -> list[Path]:
    """The `*.h5` files directly in `data_dir`, sorted by name: independent of the listing order."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise WindowIndexError(f"data directory {data_dir} does not exist or is not a directory")
    return sorted(
        (p for p in data_dir.iterdir() if p.name.endswith(".h5") and p.is_file()), key=lambda p: p.name
    )


def _scan(data_dir: Path) -> tuple[list[dict], list[dict]]:
    """Per-file facts and all episodes of the preprocessed files of `data_dir`."""
    files, episodes = [], []
    for path in list_preprocessed_files(data_dir):
        rel = path.relative_to(data_dir).as_posix()
        if "," in rel or "\n" in rel or '"' in rel:
            raise WindowIndexError(
                f"{path}: file names with commas, quotes or newlines are not supported in an index"
            )
        try:
            with open_preprocessed(path) as f:
                table = {
                    k: f[f"episodes/{k}"][:]
                    for k in ("source_index", "fingerprint", "step_start", "num_steps")
                }
                instructions = list(f["episodes/instruction"].asstr()[:])
                files.append(
                    {
                        "file": rel,
                        "num_steps": int(f.attrs["num_steps"]),
                        "num_episodes": int(f.attrs["num_episodes"]),
                        "image_size": [int(x) for x in f.attrs["image_size"]],
                        "task_filter": str(f.attrs["task_filter"]),
                        "content_digest": str(f.attrs["content_digest"]),
                    }
                )
        except (PreprocessedFormatError, FileNotFoundError) as e:
            raise WindowIndexError(one_line(e)) from None
        except (OSError, KeyError) as e:
            raise WindowIndexError(f"{path}: corrupt preprocessed file ({one_line(e)})") from None
        for row in range(len(table["source_index"])):
            episodes.append(
                {
                    "file": rel,
                    "episode": row,
                    "source_index": int(table["source_index"][row]),
                    "fingerprint": table["fingerprint"][row].decode(),
                    "instruction": instructions[row],
                    "step_start": int(table["step_start"][row]),
                    "num_steps": int(table["num_steps"][row]),
                }
            )
    return files, episodes


def check_each_episode_once(episodes: list[dict]) -> None:
    """Refuse a directory that holds an episode twice, by label (source index) or by content (fingerprint).

    A duplicated episode could land in both splits, and would be over-weighted in training.
    """
    for key, what in (("fingerprint", "content fingerprint"), ("source_index", "source episode index")):
        seen: dict = {}
        for ep in episodes:
            first = seen.setdefault(ep[key], ep)
            if first is not ep:
                raise WindowIndexError(
                    f"{what} {ep[key]} appears twice: {first['file']} episode {first['episode']} (source episode "
                    f"{first['source_index']}) and {ep['file']} episode {ep['episode']} (source episode "
                    f"{ep['source_index']}); the directory holds an episode twice (outputs of different runs?)"
                )


def fingerprint(files: list[dict]) -> str:
    """sha256 over the sorted (file, content digest) list of a data directory."""
    h = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e["file"]):
        h.update(f"{entry['file']}\0{entry['content_digest']}\n".encode())
    return h.hexdigest()


def build_index(
    data_dir: Path,
    out_dir: Path | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    window: int = DEFAULT_WINDOW,
) -> IndexResult:
    """Split the episodes of `data_dir` and write the train and val window CSVs (+ sidecars) to `out_dir`
    (default: `data_dir` itself; the index files sit next to the data they index).

    `val_fraction` 0 puts every episode in train and writes no val files. Index files of an earlier run in
    `out_dir` (train_idx_*/val_idx_* with an rt1 sidecar) are replaced.
    """
    data_dir = Path(data_dir)
    out_dir = data_dir if out_dir is None else Path(out_dir)
    _check_options(val_fraction, seed, window)
    files, episodes = _scan_checked(data_dir)
    usable = sorted(
        (ep for ep in episodes if ep["num_steps"] >= window),
        key=lambda ep: (ep["source_index"], ep["file"], ep["episode"]),
    )
    if not usable:
        raise WindowIndexError(
            f"no episode in {data_dir} has at least {window} steps, so there are no windows"
        )
    splits = SPLITS if val_fraction > 0 else ("train",)
    by_split = _split(usable, val_fraction, seed, window)
    counts = {s: sum(ep["num_steps"] - window + 1 for ep in eps) for s, eps in by_split.items()}

    check_writable_dir(out_dir)
    names = {s: f"{s}_idx_{counts[s]}" for s in splits}
    common = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "window": window,
        "seed": seed,
        "val_fraction": val_fraction,
        "split_unit": "episode",
        "data_dir": str(data_dir.resolve()),
        "fingerprint": fingerprint(files),
        "files": files,
        "csv": {s: names[s] + ".csv" for s in splits},
        "created_by": "data_emerge.py (rt1.data.index.build_index)",
    }
    _remove_previous(out_dir)
    for split in splits:
        meta = {**common, "split": split, "num_windows": counts[split]}
        _write_split(out_dir / names[split], by_split[split], window, meta)
    return IndexResult(
        out_dir / f"{names['train']}.csv",
        out_dir / f"{names['val']}.csv" if "val" in names else None,
        counts["train"],
        counts["val"],
        len(by_split["train"]),
        len(by_split["val"]),
        len(episodes) - len(usable),
    )


def _check_options(val_fraction: float, seed: int, window: int) -> None:
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise WindowIndexError(
            f"--val-fraction must be in [0, 1) (0: no validation split), got {val_fraction}"
        )
    if window < 1:
        raise WindowIndexError(f"--window must be at least 1, got {window}")
    if not isinstance(seed, int) or seed < 0:  # numpy's generator takes only non-negative seeds
        raise WindowIndexError(f"--seed must be >= 0, got {seed}")


def _scan_checked(data_dir: Path) -> tuple[list[dict], list[dict]]:
    """`_scan` of a directory that holds preprocessed files of one image size, and episodes, each once."""
    files, episodes = _scan(data_dir)
    if not files:
        raise WindowIndexError(
            f"no preprocessed files (*.h5) in {data_dir}: run DataPreprocess_batch_*.py first"
        )
    sizes = {tuple(f["image_size"]) for f in files}
    if len(sizes) > 1:
        raise WindowIndexError(
            f"{data_dir} mixes image sizes {sorted(sizes)}: index one preprocessing run at a time"
        )
    if not episodes:
        raise WindowIndexError(f"the preprocessed files in {data_dir} hold no episodes")
    check_each_episode_once(episodes)
    return files, episodes


def _split(usable: list[dict], val_fraction: float, seed: int, window: int) -> dict[str, list[dict]]:
    """{"train": episodes, "val": episodes}, each in (file, episode) order: `val_fraction` of the `usable`
    episodes (sorted by source index) drawn into val by `seed`; refused when it leaves a split empty."""
    num_val = int(round(val_fraction * len(usable)))
    if (num_val == 0 and val_fraction > 0) or num_val == len(usable):
        empty = "val" if num_val == 0 else "train"
        raise WindowIndexError(
            f"the split leaves {empty} empty: {len(usable)} episodes have at least {window} steps "
            f"and --val-fraction {val_fraction} puts {num_val} of them in val"
        )
    order = np.random.default_rng(seed).permutation(len(usable))
    val_ids = {(usable[i]["file"], usable[i]["episode"]) for i in order[:num_val]}
    by_split: dict[str, list[dict]] = {"train": [], "val": []}
    for ep in sorted(usable, key=lambda ep: (ep["file"], ep["episode"])):
        split = "val" if (ep["file"], ep["episode"]) in val_ids else "train"
        by_split[split].append(ep)
    return by_split


def _write_split(stem: Path, eps: list[dict], window: int, meta: dict) -> None:
    """One split's window CSV `stem`.csv and its sidecar `stem`.json (`meta` and the split's episodes)."""
    with atomic_output(stem.with_name(stem.name + ".csv")) as tmp:
        with open(tmp, "w", newline="\n") as out:
            out.write(CSV_HEADER + "\n")
            for ep in eps:
                for start in window_starts(ep["step_start"], ep["num_steps"], window):
                    out.write(f"{start},{ep['file']}\n")
    meta = {
        **meta,
        "num_episodes": len(eps),
        "episodes": [{**ep, "num_windows": ep["num_steps"] - window + 1} for ep in eps],
    }
    with atomic_output(stem.with_name(stem.name + ".json")) as tmp:
        tmp.write_text(_dump_sidecar(meta))


def _dump_sidecar(meta: dict) -> str:
    """JSON with one line per key, and one line per entry of the file and episode lists."""
    lines = []
    for key, value in meta.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join("  " + json.dumps(item) for item in value)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _remove_previous(out_dir: Path) -> None:
    """Delete index files of an earlier build (only those whose sidecar says this code made them)."""
    for split in SPLITS:
        for sidecar in out_dir.glob(f"{split}_idx_*.json"):
            try:
                if json.loads(sidecar.read_text()).get("format") != INDEX_FORMAT:
                    continue
            except (OSError, ValueError):
                continue
            sidecar.with_suffix(".csv").unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)


def sidecar_path(index_csv: Path) -> Path:
    return Path(index_csv).with_suffix(".json")


# What every sidecar holds (the loader, plots and the train/val check use them), with its JSON type.
_SIDECAR_FIELDS = {"split": str, "num_windows": int, "files": list, "episodes": list}


def read_sidecar(index_csv: Path) -> dict | None:
    """The sidecar of an index CSV, checked to be one of this format; None if the CSV has none."""
    sidecar = sidecar_path(index_csv)
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError as e:
        raise WindowIndexError(f"{sidecar}: not valid JSON ({e})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != INDEX_FORMAT
        or meta.get("format_version") != INDEX_FORMAT_VERSION
    ):
        raise WindowIndexError(
            f"{sidecar}: not an rt1 window index sidecar of format_version {INDEX_FORMAT_VERSION}"
        )
    for key, kind in _SIDECAR_FIELDS.items():
        if not isinstance(meta.get(key), kind):
            raise WindowIndexError(
                f"{sidecar}: its '{key}' is missing or not a JSON {kind.__name__}: rebuild the "
                "index with data_emerge.py"
            )
    return meta


def read_index(index_csv: Path) -> WindowIndex:
    """Read an index CSV (and its sidecar, when present)."""
    index_csv = Path(index_csv)
    if not index_csv.is_file():
        raise WindowIndexError(f"index file {index_csv} does not exist")
    with open(index_csv, newline="") as f:
        header = f.readline().strip()
        if header != CSV_HEADER:
            raise WindowIndexError(
                f"{index_csv}: first line is {header!r}, expected the header {CSV_HEADER!r}"
            )
        starts, file_ids, files, ids = [], [], [], {}
        for line_number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            start, sep, name = line.partition(",")
            try:
                value = int(start)
            except ValueError:
                value = -1
            if not sep or not name or value < 0:
                raise WindowIndexError(
                    f"{index_csv} line {line_number}: expected 'start_index,file', got {line!r}"
                )
            if name not in ids:
                ids[name] = len(files)
                files.append(name)
            starts.append(value)
            file_ids.append(ids[name])
    meta = read_sidecar(index_csv)
    if meta is not None:
        sidecar = sidecar_path(index_csv)
        if meta.get("num_windows") != len(starts):
            raise WindowIndexError(
                f"{index_csv} has {len(starts)} windows but its sidecar {sidecar.name} says "
                f"{meta.get('num_windows')}: the CSV was edited or truncated, rebuild it with "
                "data_emerge.py"
            )
    return WindowIndex(index_csv, np.asarray(starts, np.int64), np.asarray(file_ids, np.int32), files, meta)


def index_episodes(index_csv: Path) -> list[IndexEpisode]:
    """The episodes of an index split, in file order (from its sidecar)."""
    meta = read_index(index_csv).meta
    if meta is None:
        raise WindowIndexError(
            f"{index_csv} has no sidecar {sidecar_path(index_csv).name}: rebuild it with data_emerge.py"
        )
    return [
        IndexEpisode(
            split=meta["split"],
            **{
                k: ep[k]
                for k in (
                    "file",
                    "episode",
                    "source_index",
                    "instruction",
                    "step_start",
                    "num_steps",
                    "num_windows",
                )
            },
        )
        for ep in meta["episodes"]
    ]


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data_emerge.py",
        description=(
            "Stage 3 of the RT-1 pipeline: index the training windows of the preprocessed files in --data-dir. "
            "Splits the episodes into train and validation (never splitting an episode), and writes "
            "train_idx_{N}.csv and val_idx_{M}.csv (N, M = numbers of windows; rows 'start_index,file': the "
            "step row where a window starts and the file relative to --data-dir) with a JSON sidecar each "
            "(window length, seed, val fraction, split unit, file list and fingerprint, episodes). Same data "
            "and seed give identical files. Index files of an earlier run in --out-dir are replaced."
        ),
        epilog="Errors print one line 'error: ...' to stderr and exit with status 2.",
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="directory of preprocessed files (stage 2 output)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where to write the CSVs and sidecars (default: --data-dir, next to the data)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of the episodes (with at least --window steps) for validation, in [0, 1); "
        "0: every episode trains and no val files are written (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"steps per training window (default {DEFAULT_WINDOW}: the default preset's num_frames, RT-1's "
        "history length; training checks it equals the model's)",
    )
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_arg_parser().parse_args(argv)
    result = build_index(
        args.data_dir, args.out_dir, val_fraction=args.val_fraction, seed=args.seed, window=args.window
    )
    print(result.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


__all__ = [
    "IndexEpisode",
    "IndexResult",
    "WindowIndex",
    "WindowIndexError",
    "build_index",
    "read_index",
    "read_sidecar",
    "index_episodes",
    "window_starts",
    "list_preprocessed_files",
    "main",
]
