"""Atomic writes and output-directory checks, shared by every stage that writes files.

Write-then-rename: a long job never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from rt1.errors import RT1Error

TEMP_MARKER = ".partial-"


def temporary_path(final: Path) -> Path:
    """A sibling of `final` that is unique to this process and recognisable as unfinished."""
    return final.with_name(f"{final.name}{TEMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_output(final: Path):
    """Yield a temporary path; rename it to `final` only if the block finishes without error."""
    final = Path(final)
    tmp = temporary_path(final)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete leftovers of interrupted runs in `directory`; returns what was removed."""
    removed = []
    for path in Path(directory).glob(f"*{TEMP_MARKER}*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_writable_dir(directory: Path) -> None:
    """Create `directory` if needed; raise a one-line error if it cannot be written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create output directory {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {directory} is not writable")


class DiskFullError(RT1Error, OSError):
    """Not enough free space for the next output; the message names the directory and the sizes."""


def check_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start writing `what` into `directory` unless ~10% more than `needed_bytes` is free.

    Checked before each output file: HDF5 can crash the process when the disk fills mid-write.
    """
    free = shutil.disk_usage(directory).free
    if free < needed_bytes * 1.1:
        raise DiskFullError(f"not enough free space in {directory} for {what}: needs about "
                            f"{needed_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free")
