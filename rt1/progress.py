"""Progress that reads well on a terminal and in a log file.

`progress_bar(total, desc=..., unit=...)` is a tqdm bar when stderr is a terminal. When it is not (a
cluster job's log, `make demo`'s log files, `2> file`), a bar would write a `\\r` update many times a
second into one endless line; instead a `LineProgress` writes one plain line

    preprocess (all): 120/870 files (13.8%), 2.41 files/s, elapsed 49 s, about 311 s left [episodes=2400]

at most every `interval` seconds (default 60, or the environment variable RT1_PROGRESS_SECONDS) and
one when it closes. `enabled=False` writes nothing. Both have tqdm's `update`, `set_postfix`, `close`
and context-manager interface, the part the pipeline uses.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_INTERVAL = 60.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def line_interval() -> float:
    """Seconds between progress lines when the output is not a terminal (RT1_PROGRESS_SECONDS overrides)."""
    try:
        return max(0.0, float(os.environ.get("RT1_PROGRESS_SECONDS", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class LineProgress:
    """tqdm's interface, writing a full line at most every `interval` seconds and when closed."""

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str,
        initial: int = 0,
        interval: float | None = None,
        stream=None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = line_interval() if interval is None else interval
        self.stream = stream
        self.start = self.last = time.monotonic()
        self.initial = initial
        self.postfix = ""
        self.closed = False

    def _line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit}s ({100 * self.n / self.total:.1f}%)"
        else:
            text += f" {self.unit}s"
        text += f", {rate:.2f} {self.unit}s/s, elapsed {elapsed:.0f} s"
        if not final and self.total and rate > 0:
            text += f", about {(self.total - self.n) / rate:.0f} s left"
        if final:
            text += ", done" if self.total is None or self.n >= self.total else ", stopped"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _emit(self, final: bool = False) -> None:
        stream = self.stream or sys.stderr
        print(self._line(final), file=stream, flush=True)
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(final=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, refresh: bool = False, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(
    total: int | None, *, desc: str, unit: str, enabled: bool = True, initial: int = 0, leave: bool = True
):
    """A tqdm bar on a terminal, periodic lines otherwise, nothing when not `enabled`."""
    if not enabled:
        return _Silent()
    if stderr_is_terminal():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LineProgress(total, desc=desc, unit=unit, initial=initial)


__all__ = ["progress_bar", "LineProgress", "stderr_is_terminal", "line_interval"]
