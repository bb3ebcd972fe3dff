"""Atomic writes, output-directory checks and directory locks, shared by every stage that writes files.

Write-then-rename: a long job never leaves a truncated file under a final name. `DirectoryLock`: one
run at a time per output directory (a lock file naming host and PID; a stale one is taken over);
`locked_output_dir` is that lock for the data stages. `worker_pool`: a stage's worker processes, stopped
with it when it stops (Ctrl-C, SIGTERM, an error) instead of running on as orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from rt1.errors import RT1Error

TEMP_MARKER = ".partial-"
STAGE_LOCK = "stage.lock"  # the lock file of a data stage's output directory (training's is train.lock)


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
    except OSError as e:
        if e.filename is None and e.errno is not None:  # e.g. ENOSPC from a write: name the file
            raise OSError(e.errno, f"cannot write {final}: {e.strerror}") from None
        raise
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


class OutputPathError(RT1Error, ValueError):
    """An output-directory option names a file (or a path under one); the message names the option."""


def check_output_dir_option(directory: Path, option: str = "--out") -> None:
    """Refuse at start-up an output directory that is a file or lies under one (mkdir would fail only at the
    end, with a bare errno naming no option)."""
    path = Path(directory)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise OutputPathError(
                    f"{option} {directory} exists and is not a directory"
                    if existing == path
                    else f"{option} {directory} cannot be created: {existing} is a file"
                )
            return


class DiskFullError(RT1Error, OSError):
    """Not enough free space for the next output; the message names the directory and the sizes."""


def check_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start writing `what` into `directory` unless ~10% more than `needed_bytes` is free.

    Checked before each output file: HDF5 can crash the process when the disk fills mid-write.
    """
    if os.statvfs(directory).f_flag & os.ST_RDONLY:  # a read-only medium reports no free blocks
        raise OutputPathError(f"{directory} is on a read-only filesystem: cannot write {what} there")
    free = shutil.disk_usage(directory).free
    if free < needed_bytes * 1.1:
        raise DiskFullError(
            f"not enough free space in {directory} for {what}: needs about "
            f"{needed_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free"
        )


# ---- one run per directory ------------------------------------------------------------------------


class DirectoryLockedError(RT1Error):
    """Another live process holds the directory's lock; the message names it (host, PID, since when)."""


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a live holder from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class DirectoryLock:
    """An exclusive lock on a directory: the file `directory/name` holding this host, PID and start time.

    `acquire()` creates the file atomically (written under a temporary name, then hard-linked to the lock
    name, which fails if it exists: the lock never exists half-written). If it exists:
      - held by a live process (or by another host, which cannot be checked): `DirectoryLockedError`
        naming the holder and the lock file;
      - held by a dead process on this host (or a PID now used by another process): taken over, and
        `acquire` returns the stale holder's description for the caller to warn about.
    `release()` deletes the file if it is still ours. Use it as a context manager, or acquire/release.
    """

    def __init__(self, directory: Path, name: str = "train.lock", *, what: str = "run") -> None:
        self.path = Path(directory) / name
        self.what = what
        self.held = False
        self._mine: dict | None = None

    def _record(self) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "start_time": _process_start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(map(str, sys.argv)),
        }

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _describe(self, holder: dict) -> str:
        return (
            f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}"
            + (f": {holder['command']}" if holder.get("command") else "")
        )

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        if pid == os.getpid():
            return False  # ourselves (an earlier acquire in this process): not stale, and not takeable
        if not _pid_alive(pid):
            return True
        recorded, current = holder.get("start_time"), _process_start_time(pid)
        return recorded is not None and current is not None and recorded != current  # PID reused

    def _try_create(self) -> bool:
        record = self._record()
        tmp = temporary_path(self.path)
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: exclusive create (briefly empty)
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
        finally:
            tmp.unlink(missing_ok=True)
        self._mine, self.held = record, True
        return True

    def acquire(self) -> str | None:
        """Take the lock; returns a description of a stale holder that was replaced, else None."""
        replaced = None
        for _ in range(5):
            if self._try_create():
                return replaced
            holder = self._read()
            if holder is None:
                continue  # released meanwhile: try again
            if holder == {}:
                raise DirectoryLockedError(
                    f"{self.path} exists but is not a lock this code wrote: another {self.what} may be using "
                    f"{self.path.parent}; if none is, delete {self.path}"
                )
            if not self._stale(holder):
                raise DirectoryLockedError(
                    f"{self.path.parent} is in use by another {self.what} ({self._describe(holder)}); wait for "
                    f"it to end or use another directory (if that process is gone, delete {self.path})"
                )
            # Stale: move it aside, check we moved the stale one (not a lock taken meanwhile), retry.
            aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            moved = json.loads(aside.read_text(encoding="utf-8") or "{}") if aside.exists() else {}
            if moved != holder:  # someone else's fresh lock: put it back and look again
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            replaced = self._describe(holder)
        raise DirectoryLockedError(
            f"cannot take the lock {self.path}: it keeps changing (several runs starting?)"
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._read() == self._mine:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked_output_dir(directory: Path, what: str):
    """Hold `directory/STAGE_LOCK` for the block (`DirectoryLockedError` if a live run holds it): take it before
    removing stale temporaries, so a starting run never deletes a live run's temporary file."""
    lock = DirectoryLock(directory, STAGE_LOCK, what=what)
    stale = lock.acquire()
    if stale is not None:
        print(
            f"took over the stale lock {lock.path} of a run that is gone ({stale})",
            file=sys.stderr,
            flush=True,
        )
    try:
        yield lock
    finally:
        lock.release()


# ---- worker processes that stop with their parent --------------------------------------------------


def _init_worker() -> None:
    """In each worker: Ctrl-C (sent to the whole process group) is the parent's to answer, and SIGTERM kills
    (a forked worker would otherwise inherit the parent's handler and carry on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_workers(pool) -> None:
    """Cancel what has not started and terminate the workers of a `ProcessPoolExecutor` now.

    A killed worker leaves at most a temporary file (`temporary_path`), which the next run removes.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


@contextlib.contextmanager
def worker_pool(workers: int, mp_context=None):
    """A `ProcessPoolExecutor` whose workers end with the block: on any exception in the parent (an error,
    `KeyboardInterrupt`, `Terminated`) they are terminated before it propagates, never left running."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp_context, initializer=_init_worker)
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def outermost_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None if `path` exists): what a mkdir creates."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def remove_empty_dirs(directory: Path, outermost: Path) -> None:
    """Remove `directory` and its parents up to `outermost` while they are empty (undo a refused run's mkdir)."""
    path = Path(directory).absolute()
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == outermost or path.parent == path:
            return
        path = path.parent
