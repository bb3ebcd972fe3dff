"""Checks that an index a run is given is the one stage 3 wrote: its files inside --data-dir and listed in
its sidecar, and a train/val pair from one build, neither swapped nor the same file."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from rt1.data.index import WindowIndex, WindowIndexError, read_sidecar, sidecar_path


def check_files_confined(index: WindowIndex, data_dir: Path) -> None:
    """Every file `index` names must lie inside `data_dir` (a relative path without '..') and, when the index
    has a sidecar, be one of the files it lists: an edited CSV never trains on a file from elsewhere."""
    listed = None
    if index.meta is not None:
        listed = {entry.get("file") for entry in index.meta["files"] if isinstance(entry, dict)}
    for name in index.files:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in parts:
            raise WindowIndexError(
                f"{index.csv} names {name}, which is outside the data directory {data_dir}: "
                "an index names files relative to --data-dir; rebuild it with data_emerge.py"
            )
        if listed is not None and name not in listed:
            raise WindowIndexError(
                f"{index.csv} names {name}, which is not listed in its sidecar "
                f"{sidecar_path(index.csv).name}: the CSV was edited; rebuild it with "
                "data_emerge.py"
            )


def check_train_val(train_csv: Path, val_csv: Path | None) -> None:
    """Refuse a validation index that is the training index, a swapped pair, or a pair of two builds (whose
    episodes may overlap), from what the sidecars record. Without a sidecar only the same file is caught."""
    if val_csv is None:
        return
    train_csv, val_csv = Path(train_csv), Path(val_csv)
    if train_csv.resolve() == val_csv.resolve():
        raise WindowIndexError(
            f"--train-index {train_csv} is also --val-index: validation would measure the "
            "training windows; pass the val_idx_*.csv data_emerge.py wrote with it"
        )
    metas = {}
    for option, csv, split in (("--train-index", train_csv, "train"), ("--val-index", val_csv, "val")):
        metas[split] = meta = read_sidecar(csv)
        if meta is not None and meta["split"] != split:
            raise WindowIndexError(
                f"{option} {csv} is the split '{meta['split']}' (its sidecar says so), not "
                f"'{split}': are --train-index and --val-index swapped?"
            )
    if metas["train"] is not None and metas["val"] is not None:
        for key in ("fingerprint", "seed", "val_fraction", "window"):
            ours, theirs = metas["train"].get(key), metas["val"].get(key)
            if ours != theirs:
                raise WindowIndexError(
                    f"--train-index {train_csv} and --val-index {val_csv} come from different "
                    f"builds ({key} {ours} vs {theirs}), so their episodes may overlap: use the "
                    "pair one data_emerge.py run wrote"
                )
