"""The one check a stage makes of a file found under one of its output names, before writing anything.

Stages 1 and 2 both call `existing_output`: a file there is either an HDF5 file of the stage's own format
(the caller then checks it is complete and of this configuration) or refused by name, never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import h5py

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def existing_output(
    path: Path, fmt: str, what: str, error: type[Exception], *, redo_damaged: bool = False
) -> h5py.File | None:
    """`path` opened read-only if it is an HDF5 file whose `format` attribute is `fmt`; None if it is absent.

    Raises `error` (one line naming the file) if it is not HDF5 or of another format: a user's file under an
    output's name. An HDF5 file that cannot be opened (truncated by a crash: the stage's own output) is
    refused too, unless `redo_damaged`, where None tells the caller to write it again.
    """
    path = Path(path)
    if not path.exists():
        return None
    is_hdf5 = False  # also for a path that cannot be read at all (a directory, no permission)
    try:
        with open(path, "rb") as f:
            is_hdf5 = f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
        handle = h5py.File(path, "r") if is_hdf5 else None
    except OSError:
        if redo_damaged and is_hdf5:
            return None
        handle = None
    if handle is None:
        raise error(
            f"{path} exists and is not an HDF5 file: it has {what}'s name but is not one; move it away "
            "or use another --out-dir"
        )
    found = handle.attrs.get("format")
    if found != fmt:
        handle.close()
        raise error(
            f"{path} exists and is not {what} (format attribute {found!r}); move it away or use another "
            "--out-dir"
        )
    return handle
