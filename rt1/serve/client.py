"""The client side of the policy server (numpy, msgpack and websockets only; no torch)."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from rt1.actions import NUM_ACTION_TOKENS
from rt1.errors import one_line
from rt1.serve.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HARD_LIMIT_FACTOR,
    ServeError,
    ServerError,
    _kind,
    action_of_reply,
    encode,
    pack_array,
)


class PolicyClient:
    """A blocking client of one server session (one episode at a time).

    with PolicyClient("ws://127.0.0.1:8000") as client:
        client.reset(instruction_embedding=obs["natural_language_embedding"])
        action = client.act(obs)                 # RLDS action dict of numpy arrays
    """

    def __init__(
        self,
        uri: str,
        timeout: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
    ) -> None:
        """`token`: the server's shared token (default: $RT1_SERVE_TOKEN, if set)."""
        import os

        from websockets.sync.client import connect

        token = os.environ.get("RT1_SERVE_TOKEN") if token is None else token

        self.uri, self.timeout = uri, timeout
        self.last_tokens: np.ndarray | None = None
        self.last_compute_ms = math.nan  # the server's preprocessing + inference time of the last act
        try:
            self._ws = connect(
                uri,
                open_timeout=timeout,
                close_timeout=min(timeout, 10.0),
                compression=None,
                max_size=max_message_bytes * HARD_LIMIT_FACTOR,
                proxy=None,
                additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                legacy=True,
            )  # the client owns the connection (closed by close())
        except Exception as e:  # noqa: BLE001 - OSError (refused), InvalidURI, InvalidHandshake, TimeoutError
            raise ServerError(
                f"cannot connect to policy server {uri} ({type(e).__name__}: {one_line(e)})"
            ) from None

    def request(self, message: dict, expect: str) -> dict:
        """Send one request and return its reply; an error reply raises ServerError."""
        return self.request_raw(encode(message), expect)

    def request_raw(self, data: bytes | str, expect: str | None = None) -> dict:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(data)
            reply = msgpack.unpackb(self._ws.recv(timeout=self.timeout), raw=False)
        except (ConnectionClosed, TimeoutError, OSError) as e:
            raise ServerError(f"policy server {self.uri}: {type(e).__name__}: {one_line(e)}") from None
        if not isinstance(reply, dict):
            raise ServerError(f"policy server {self.uri} sent {_kind(reply)}, not a map")
        if reply.get("type") == "error":
            raise ServerError(f"policy server {self.uri}: {reply.get('error')}")
        if expect is not None and reply.get("type") != expect:
            raise ServerError(f"policy server {self.uri} answered {reply.get('type')!r}, expected {expect!r}")
        return reply

    def info(self) -> dict:
        return self.request({"type": "info"}, "info")

    def reset(
        self, instruction_embedding=None, instruction: str | None = None, cond_scale: float = 1.0
    ) -> None:
        message: dict[str, Any] = {"type": "reset", "cond_scale": float(cond_scale)}
        if instruction_embedding is not None:
            message["instruction_embedding"] = pack_array(np.asarray(instruction_embedding, np.float32))
        if instruction is not None:
            message["instruction"] = instruction
        self.request(message, "reset")
        self.last_tokens = None

    def act(self, observation: dict) -> dict[str, np.ndarray]:
        """RLDS observation (needs `image`; other fractal keys are checked by the server) -> action dict."""
        wire = {k: v if isinstance(v, str) else pack_array(np.asarray(v)) for k, v in observation.items()}
        reply = self.request({"type": "act", "observation": wire}, "action")
        action = action_of_reply(reply)
        tokens = reply.get("tokens")
        if not isinstance(tokens, list) or len(tokens) != NUM_ACTION_TOKENS:
            raise ServerError(f"policy server {self.uri} sent tokens {tokens!r}")
        self.last_tokens = np.array(tokens, np.int64)
        self.last_compute_ms = float(reply.get("compute_ms", math.nan))
        return action

    def close(self) -> None:
        """End the session (the server frees it) and the connection."""
        try:
            self.request({"type": "close"}, "closed")
        except ServerError:
            pass  # already gone
        finally:
            self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServedEnvPolicy:
    """A closed-loop policy (`obs -> action`, `reset()`) acting through a server session: the first
    observation of an episode sends its instruction embedding as the reset."""

    def __init__(self, client: PolicyClient, cond_scale: float = 1.0) -> None:
        self.client, self.cond_scale = client, cond_scale
        self._started = False

    def reset(self) -> None:
        self._started = False

    def __call__(self, obs: dict) -> dict[str, np.ndarray]:
        if not self._started:
            self.client.reset(
                instruction_embedding=obs["natural_language_embedding"], cond_scale=self.cond_scale
            )
            self._started = True
        return self.client.act(obs)


# ---- a server process on this machine (tests, benchmarks) ---------------------------------------------


@contextlib.contextmanager
def local_server(model: Path, *args: str, startup_timeout: float = 120.0, stop_timeout: float = 20.0):
    """Run `python -m rt1.serve --model MODEL --host 127.0.0.1 --port 0 ARGS` and yield (uri, process).

    Waits (bounded) for the "serving ..." line; the process is stopped with SIGTERM when the block ends
    and killed if it has not exited within `stop_timeout` seconds, whatever happens in the block.
    """
    import queue
    import re
    import subprocess
    import tempfile
    import threading

    cmd = [
        sys.executable,
        "-m",
        "rt1.serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
    ]
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=Path(__file__).resolve().parents[2]
    )  # the repository: `-m rt1.serve` finds rt1
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output: the process exited

    threading.Thread(target=read, daemon=True).start()
    try:
        try:
            first = lines.get(timeout=startup_timeout)
        except queue.Empty:
            raise ServeError(f"the policy server did not start within {startup_timeout:.0f} s") from None
        found = re.search(r"ws://127\.0\.0\.1:(\d+)", first)
        if not found:
            proc.wait(timeout=stop_timeout)
            errors.seek(0)
            raise ServeError(f"the policy server did not start: {first.strip()} {errors.read().strip()}")
        proc.lines = lines  # later stdout lines, e.g. "stopped on signal 15"
        yield f"ws://127.0.0.1:{found.group(1)}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=stop_timeout)
        errors.close()


# ---- command line -----------------------------------------------------------------------------------
