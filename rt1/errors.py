"""One base error class, one-line messages, and the exit statuses of every command line.

Every problem a user can fix raises a subclass of `RT1Error` whose message is one line naming the
file or value. Every entry point runs through `run_cli`, which turns them into

    error: <message>          on stderr, exit status `error.exit_code` (EXIT_USAGE = 2 unless the class says)

and an `OSError` (disk full, permissions) into the same one line, so no traceback reaches a user for
bad input. Ctrl-C exits 130 and SIGTERM (as `Terminated`) 143; training answers them at a step boundary
instead (`rt1.train.stopping`).
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_ERROR = 1  # a run failed (training: a data, checkpoint or process-group problem)
EXIT_USAGE = 2  # bad input: arguments, files, values
EXIT_NON_FINITE_LOSS = 3
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM


class RT1Error(Exception):
    """Base of every error the user can fix; the message is one line naming the file or value."""

    exit_code: int | None = None  # None: the entry point's default (run_cli's `default_exit`)


class Terminated(BaseException):
    """SIGTERM (a scheduler or torchrun stopping the job) as an exception, so cleanup code runs."""


def install_sigterm_handler() -> None:
    """Raise `Terminated` on SIGTERM, so a data stage unwinds (workers stopped, temporaries removed).

    Entry points only: it changes process state. Training uses `rt1.train.stopping` instead."""

    def on_sigterm(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (errors are reported on one line).

    An exception raised in a DataLoader worker reaches the main process re-raised by torch with the
    message "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback ...": the one line
    is then the original message (its last traceback line), with the worker named.
    """
    message = (
        error.args[0] if isinstance(error, KeyError) and error.args else error
    )  # KeyError quotes its text
    text = str(message).strip().splitlines()
    if not text:
        return type(error).__name__
    worker = _WORKER_WRAPPED.match(text[0])
    if worker and len(text) > 1:
        name = worker.group(1)
        for line in reversed(text[1:]):
            head, sep, original = line.partition(": ")
            if sep and (head == name or head.endswith("." + name)):
                return _PATH_REPR.sub(r"'\1'", f"{original.strip()} (in DataLoader {worker.group(2)})")
    return _PATH_REPR.sub(r"'\1'", text[0])


# An OSError given a Path as its filename prints it as PosixPath('...'): a message names the path as text.
_PATH_REPR = re.compile(r"\b(?:Pure)?(?:Posix|Windows)?G?Path\('((?:[^'\\]|\\.)*)'\)")
_WORKER_WRAPPED = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+)\.$")


def run_cli(
    main: Callable[[list[str] | None], int | None],
    argv: list[str] | None = None,
    *,
    label: str = "error",
    default_exit: int = EXIT_USAGE,
) -> int:
    """Run an entry point's `main(argv)` and map its outcome to an exit status with a one-line message."""
    try:
        return main(argv) or EXIT_OK
    except RT1Error as e:
        print(f"{label}: {one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code if e.exit_code is not None else default_exit
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print(f"{label}: {where}{one_line(e)}", file=sys.stderr, flush=True)
        return default_exit
    except KeyboardInterrupt:
        print(
            f"{label}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr, flush=True
        )
        return EXIT_INTERRUPTED
    except Terminated:
        print(
            f"{label}: terminated by SIGTERM; finished outputs are kept, rerun to resume",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_TERMINATED
