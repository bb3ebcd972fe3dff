"""A WebSocket policy server for a robot, and its client.

    python -m rt1.serve --model PATH [--host 127.0.0.1] [--port 8000] [--device cpu] [--threads 1]

PATH is a checkpoint file or a directory of `python -m rt1.export`. Each connection is one episode
session with its own `RT1Policy` (its own token cache); the sessions share one copy of the weights.

Wire format: every message is one binary WebSocket frame holding one msgpack map. A numpy array is the
map {"dtype": numpy dtype string ("|u1", "<f4", "<i4", ...), "shape": [...], "data": raw C-order bytes}.

    request                                                    reply
    {"type": "info"}                                           {"type": "info", "protocol", "model": {...},
                                                                "sessions", "max_message_bytes"}
    {"type": "reset", "instruction_embedding": array (E,)      {"type": "reset", "step": 0}
       | "instruction": text (models whose config names
       the mini-fractal embedding), ["cond_scale": float]}
    {"type": "act", "observation": RLDS observation map}       {"type": "action", "action": {RLDS key: array},
       (`image` uint8 (H, W, 3) required; any other key of     "tokens": [11 ints], "step": t,
       the fractal observation spec checked if present)        "compute_ms": server time of the step}
    {"type": "close"}                                          {"type": "closed"}, then the server closes

Any bad message (not msgpack, a text frame, wrong or missing keys, shapes, dtypes, a message over
`--max-message-bytes`, act before reset, another instruction within an episode) gets
{"type": "error", "error": one line} and the session goes on as it was. A message over 4x the limit is
refused by the WebSocket layer itself: it closes that connection (code 1009, "message too big").

The camera image goes through the model's image preprocessing (`rt1.data.images.training_frame`, the
JPEG quality from config.json or --jpeg-quality) and then `RT1Policy.step`: the same calls as in-process
closed-loop evaluation (`rt1.evaluation.closed_loop.RT1EnvPolicy`), so the actions are the same.
Inference runs in a worker thread pool (`--workers`, default 1: every step of every session in one
thread, in arrival order) so the event loop keeps serving other connections; a session's steps are
sequential and its result does not depend on other sessions. A client that disconnects frees its
session. SIGTERM or SIGINT stops the server: connections are closed (1001), it exits 0.

The client (`PolicyClient`, `ServedEnvPolicy`) needs numpy, msgpack and websockets only (no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from rt1.actions import ACTION_KEYS, NUM_ACTION_TOKENS
from rt1.rlds_spec import ACTION_SPEC, EMBEDDING_DIM, OBSERVATION_VECTORS
from rt1.errors import RT1Error, one_line, run_cli

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8000
DEFAULT_MAX_MESSAGE_BYTES = 8 * 2**20   # a 1280x1024 RGB frame and change
HARD_LIMIT_FACTOR = 4                   # frames up to this x the limit are read and answered with an error
MAX_IMAGE_SIDE = 4096
# numpy dtype strings accepted on the wire (explicit byte order; nothing that needs pickle)
WIRE_DTYPES = ("|u1", "|i1", "<u2", "<i2", "<i4", "<i8", "<f4", "<f8", "|b1")
REQUEST_KEYS = {
    "info": (set(), set()),
    "reset": (set(), {"instruction_embedding", "instruction", "cond_scale"}),
    "act": ({"observation"}, set()),
    "close": (set(), set()),
}
OBSERVATION_TEXT_KEYS = ("natural_language_instruction",)


class ServeError(RT1Error, ValueError):
    """Bad server settings or model (the message names the value or file)."""


class ProtocolError(RT1Error, ValueError):
    """A message the server cannot act on; its text is the error reply."""


class ServerError(RT1Error, RuntimeError):
    """Client side: the server answered a request with an error, or the connection failed."""


# ---- wire encoding ----------------------------------------------------------------------------------


def pack_array(value) -> dict:
    a = np.ascontiguousarray(value)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(value, what: str) -> np.ndarray:
    """An array map -> numpy array (a read-only view of the message bytes); raises ProtocolError."""
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{what} must be an array map {{dtype, shape, data}}, got {_kind(value)}")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if dtype not in WIRE_DTYPES:
        raise ProtocolError(f"{what}: dtype {dtype!r} is not one of {', '.join(WIRE_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > 8
            or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in shape)):
        raise ProtocolError(f"{what}: shape must be a list of at most 8 non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what}: data must be binary, got {_kind(data)}")
    dt = np.dtype(dtype)
    if len(data) != math.prod(shape) * dt.itemsize:
        raise ProtocolError(f"{what}: {len(data)} data bytes do not make a {dtype} array of shape {shape}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _kind(value) -> str:
    return {dict: "a map", list: "a list", bytes: "binary", str: "text"}.get(type(value), type(value).__name__)


def encode(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(data) -> dict:
    """Bytes of one frame -> the request map; raises ProtocolError."""
    if isinstance(data, str):
        raise ProtocolError("text frames are not accepted: send one msgpack map per binary frame")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises ExtraData, FormatError, StackError, ValueError, ...
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a msgpack map, got {_kind(message)}")
    return message


def check_request(message: dict) -> str:
    """The request's type, after checking its keys; raises ProtocolError."""
    kind = message.get("type")
    if kind not in REQUEST_KEYS:
        raise ProtocolError(f"unknown request type {kind!r}; expected one of {', '.join(REQUEST_KEYS)}")
    required, optional = REQUEST_KEYS[kind]
    keys = set(message) - {"type"}
    missing, unknown = sorted(required - keys), sorted(keys - required - optional)
    if missing:
        raise ProtocolError(f"{kind}: missing key(s) {missing}")
    if unknown:
        raise ProtocolError(f"{kind}: unknown key(s) {unknown}; allowed: {sorted(required | optional)}")
    return kind


def check_observation(observation, embedding_dim: int) -> dict[str, Any]:
    """An RLDS observation map -> {key: numpy array or str}, every key checked against the fractal spec."""
    if not isinstance(observation, dict):
        raise ProtocolError(f"act: observation must be a map, got {_kind(observation)}")
    shapes = {k: (s.shape, np.dtype(s.dtype)) for k, s in OBSERVATION_VECTORS.items()}
    shapes["natural_language_embedding"] = ((embedding_dim,), np.dtype(np.float32))
    known = {"image", *shapes, *OBSERVATION_TEXT_KEYS}
    unknown = sorted(set(map(str, observation)) - known)
    if unknown:
        raise ProtocolError(f"act: unknown observation key(s) {unknown}; RLDS fractal keys are {sorted(known)}")
    if "image" not in observation:
        raise ProtocolError("act: the observation has no image")
    out: dict[str, Any] = {}
    for key, value in observation.items():
        if key in OBSERVATION_TEXT_KEYS:
            if not isinstance(value, str):
                raise ProtocolError(f"act: observation/{key} must be text, got {_kind(value)}")
            out[key] = value
            continue
        a = unpack_array(value, f"observation/{key}")
        if key == "image":
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or not (
                    1 <= a.shape[0] <= MAX_IMAGE_SIDE and 1 <= a.shape[1] <= MAX_IMAGE_SIDE):
                raise ProtocolError(f"act: observation/image must be uint8 (H, W, 3) RGB with sides up to "
                                    f"{MAX_IMAGE_SIDE}, got {a.dtype} {tuple(a.shape)}")
        else:
            shape, dtype = shapes[key]
            if a.dtype != dtype or a.shape != shape:
                raise ProtocolError(f"act: observation/{key} must be {dtype} {shape}, got {a.dtype} {tuple(a.shape)}")
        out[key] = a
    return out


def action_of_reply(reply: dict) -> dict[str, np.ndarray]:
    """The RLDS action dict of an "action" reply, checked against the action spec (client side)."""
    action = reply.get("action")
    if not isinstance(action, dict) or set(action) != set(ACTION_SPEC):
        raise ServerError(f"the server's action has keys {sorted(action) if isinstance(action, dict) else action!r}, "
                          f"expected {sorted(ACTION_SPEC)}")
    out = {}
    for key, spec in ACTION_SPEC.items():
        try:
            a = unpack_array(action[key], f"action/{key}")
        except ProtocolError as e:
            raise ServerError(str(e)) from None
        if a.dtype != np.dtype(spec.dtype) or a.shape != spec.shape:
            raise ServerError(f"the server's action/{key} is {a.dtype} {a.shape}, expected {spec.dtype} {spec.shape}")
        out[key] = a.copy()
    return out


# ---- the server -------------------------------------------------------------------------------------


class Session:
    """One connection's episode: its own RT1Policy over the server's shared (folded) model."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.policy = None
        self.embedding: np.ndarray | None = None

    def reset(self, message: dict) -> dict:
        server = self.server
        has_embedding, has_text = "instruction_embedding" in message, "instruction" in message
        if has_embedding == has_text:
            raise ProtocolError("reset: give exactly one of instruction_embedding and instruction")
        if has_text:
            text = message["instruction"]
            if not isinstance(text, str) or not text.strip():
                raise ProtocolError(f"reset: instruction must be non-empty text, got {_kind(text)}")
            if server.embed_text is None:
                raise ProtocolError(f"reset: this model's instruction embeddings come from {server.embedding_source}, "
                                    "which the server cannot compute: send instruction_embedding")
            embedding = server.embed_text(text)
        else:
            embedding = unpack_array(message["instruction_embedding"], "reset: instruction_embedding")
            dim = server.config.text_embed_dim
            if embedding.dtype != np.float32 or embedding.shape != (dim,):
                raise ProtocolError(f"reset: instruction_embedding must be float32 ({dim},), "
                                    f"got {embedding.dtype} {tuple(embedding.shape)}")
            if not np.isfinite(embedding).all():
                raise ProtocolError("reset: instruction_embedding has non-finite values")
        cond_scale = message.get("cond_scale", 1.0)
        if not isinstance(cond_scale, (int, float)) or isinstance(cond_scale, bool) or not math.isfinite(cond_scale):
            raise ProtocolError(f"reset: cond_scale must be a finite number, got {cond_scale!r}")
        if self.policy is None or self.policy.cond_scale != float(cond_scale):
            self.policy = server.new_policy(float(cond_scale))
        self.policy.reset()
        self.embedding = np.array(embedding, dtype=np.float32)
        return {"type": "reset", "step": 0}

    def act(self, observation: dict) -> dict:
        """Runs in a worker thread."""
        from rt1.data.images import training_frame

        if self.policy is None or self.embedding is None:
            raise ProtocolError("act before reset: send reset with the episode's instruction first")
        given = observation.get("natural_language_embedding")
        if given is not None and not np.array_equal(given, self.embedding):
            raise ProtocolError("act: observation/natural_language_embedding is not the episode's instruction; "
                                "send reset for a new instruction")
        start = time.perf_counter()
        frame = training_frame(observation["image"], self.server.config.image_size, self.server.jpeg_quality)
        action, tokens = self.policy.step(frame, self.embedding, return_tokens=True)
        return {"type": "action", "action": {k: pack_array(np.asarray(action[k], ACTION_SPEC[k].dtype)) for k in ACTION_KEYS},
                "tokens": [int(t) for t in tokens], "step": self.policy.t,
                "compute_ms": (time.perf_counter() - start) * 1e3}  # preprocessing + inference, for latency budgets

    def free(self) -> None:
        self.policy = self.embedding = None


class PolicyServer:
    """The model and settings behind every session; `serve()` runs the WebSocket server until SIGTERM/SIGINT."""

    def __init__(self, model_path: Path, device: str = "cpu", jpeg_quality: int | None = None,
                 embedding_source: str | None = None, workers: int = 1,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from rt1.data.images import JPEG_QUALITY
        from rt1.model import check_model_path, load_model
        from rt1.model.inference import inference_model
        from rt1.model.pretrained import EMBEDDING_SOURCES, read_pretrained_config

        if workers < 1 or max_message_bytes < 1024:
            raise ServeError(f"--workers must be >= 1 and --max-message-bytes >= 1024, got {workers}, "
                             f"{max_message_bytes}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ServeError(f"--device {device}: CUDA is not available on this machine")
        model_path = Path(model_path)
        check_model_path(model_path)
        exported = read_pretrained_config(model_path) if model_path.is_dir() else {}
        model, self.config, _ = load_model(model_path, device)
        # One folded copy for every session (RT1Policy would fold one per session): same actions.
        self.model = inference_model(model)
        self.device = device
        self.jpeg_quality = int(jpeg_quality or exported.get("image_preprocessing", {}).get("jpeg_quality")
                                or JPEG_QUALITY)
        if not 1 <= self.jpeg_quality <= 100:
            raise ServeError(f"--jpeg-quality must be 1..100, got {self.jpeg_quality}")
        self.embedding_source = (embedding_source or exported.get("instruction_embedding", {}).get("source")
                                 or EMBEDDING_SOURCES[0])
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ServeError(f"--embedding-source must be one of {', '.join(EMBEDDING_SOURCES)}, "
                             f"got {self.embedding_source!r}")
        self.embed_text = None
        if self.embedding_source == "mini-fractal" and self.config.text_embed_dim == EMBEDDING_DIM:
            from rt1.sim.scene import instruction_embedding

            self.embed_text = instruction_embedding
        self.model_path = model_path
        self.max_message_bytes = int(max_message_bytes)
        # The intra-op thread count is per OS thread (OpenMP): set it in each worker, not only in main.
        threads = threads or torch.get_num_threads()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rt1-inference",
                                           initializer=torch.set_num_threads, initargs=(threads,))
        self.sessions: set[Session] = set()

    def new_policy(self, cond_scale: float):
        from rt1.policy import RT1Policy

        return RT1Policy(self.model, cond_scale=cond_scale, device=self.device, fold_batch_norms=False)

    def info(self) -> dict:
        c = self.config
        return {"type": "info", "protocol": PROTOCOL_VERSION, "sessions": len(self.sessions),
                "max_message_bytes": self.max_message_bytes,
                "model": {"path": str(self.model_path), "image_size": c.image_size, "num_frames": c.num_frames,
                          "text_embed_dim": c.text_embed_dim, "embedding_source": self.embedding_source,
                          "accepts_instruction_text": self.embed_text is not None,
                          "jpeg_quality": self.jpeg_quality}}

    async def answer(self, session: Session, data) -> tuple[dict, bool]:
        """One frame -> (reply, close the connection after it)."""
        import asyncio

        kind = None
        try:
            if len(data) > self.max_message_bytes:
                raise ProtocolError(f"message of {len(data)} bytes is over the limit of {self.max_message_bytes}")
            message = decode(data)
            kind = check_request(message)
            if kind == "info":
                return self.info(), False
            if kind == "close":
                return {"type": "closed"}, True
            if kind == "reset":
                return session.reset(message), False
            observation = check_observation(message["observation"], self.config.text_embed_dim)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, session.act, observation), False
        except ProtocolError as e:
            return {"type": "error", "error": one_line(e), "request": kind}, False
        except Exception as e:  # noqa: BLE001 - a failed step must not take the server down
            import logging

            logging.getLogger("rt1.serve").exception("request %s failed", kind)
            return {"type": "error", "error": f"{kind} failed: {type(e).__name__}: {one_line(e)}",
                    "request": kind}, False

    async def handler(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        session = Session(self)
        self.sessions.add(session)
        try:
            async for data in websocket:
                reply, close = await self.answer(session, data)
                await websocket.send(encode(reply))
                if close:
                    break
        except ConnectionClosed:
            pass  # the client went away mid-episode: its session is freed below
        finally:
            self.sessions.discard(session)
            session.free()

    async def serve(self, host: str, port: int, ready=None, stop=None) -> int:
        """Serve until SIGTERM/SIGINT (or until the future `stop` is done: then no signal handlers are
        installed); `ready(port)` is called once listening. Returns the signal number (stop's result)."""
        import asyncio
        import signal

        from websockets.asyncio.server import serve

        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
        stop = loop.create_future() if stop is None else stop
        for signum in signals:
            loop.add_signal_handler(signum, lambda s=signum: stop.done() or stop.set_result(s))
        try:
            # No per-message deflate: camera frames do not compress and it would cost milliseconds a step.
            async with serve(self.handler, host, port, max_size=self.max_message_bytes * HARD_LIMIT_FACTOR,
                             compression=None) as server:
                bound = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(bound)
                received = await stop
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            self.executor.shutdown(wait=True)
        return received


# ---- the client -------------------------------------------------------------------------------------


class PolicyClient:
    """A blocking client of one server session (one episode at a time).

        with PolicyClient("ws://127.0.0.1:8000") as client:
            client.reset(instruction_embedding=obs["natural_language_embedding"])
            action = client.act(obs)                 # RLDS action dict of numpy arrays
    """

    def __init__(self, uri: str, timeout: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        from websockets.sync.client import connect

        self.uri, self.timeout = uri, timeout
        self.last_tokens: np.ndarray | None = None
        self.last_compute_ms = math.nan  # the server's preprocessing + inference time of the last act
        try:
            self._ws = connect(uri, open_timeout=timeout, close_timeout=min(timeout, 10.0), compression=None,
                               max_size=max_message_bytes * HARD_LIMIT_FACTOR, proxy=None,
                               legacy=True)  # the client owns the connection (closed by close())
        except Exception as e:  # noqa: BLE001 - OSError (refused), InvalidURI, InvalidHandshake, TimeoutError
            raise ServerError(f"cannot connect to policy server {uri} ({type(e).__name__}: {one_line(e)})") from None

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

    def reset(self, instruction_embedding=None, instruction: str | None = None, cond_scale: float = 1.0) -> None:
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
            self.client.reset(instruction_embedding=obs["natural_language_embedding"], cond_scale=self.cond_scale)
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

    cmd = [sys.executable, "-m", "rt1.serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", *args]
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.serve",
        description="Serve a trained RT-1 policy over WebSocket (msgpack binary frames): one episode session "
                    "per connection, RLDS observation in, RLDS action out.")
    parser.add_argument("--model", type=Path, required=True,
                        help="checkpoint-{epoch}.pt or a model directory from python -m rt1.export")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="inference threads (default 1: steps of all sessions run one at a time, in order)")
    parser.add_argument("--jpeg-quality", type=int, default=None,
                        help="stage 2's --jpeg-quality of the training data (default: the exported config's, else 90)")
    parser.add_argument("--embedding-source", default=None, choices=("universal-sentence-encoder", "mini-fractal"),
                        help="instruction embeddings of the training data (default: the exported config's, else "
                             "universal-sentence-encoder); mini-fractal lets clients send instruction text")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help=f"larger requests get an error reply (default {DEFAULT_MAX_MESSAGE_BYTES})")
    args = parser.parse_args(argv)

    def run(_) -> int:
        import asyncio
        import logging

        import torch

        if not 0 <= args.port <= 65535 or args.threads < 1:
            raise ServeError(f"--port must be 0..65535 and --threads >= 1, got {args.port}, {args.threads}")
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        torch.set_num_threads(args.threads)
        server = PolicyServer(args.model, args.device, args.jpeg_quality, args.embedding_source, args.workers,
                              args.max_message_bytes, args.threads)

        def ready(port: int) -> None:
            print(f"serving {args.model} on ws://{args.host}:{port} (SIGTERM or Ctrl-C stops)", flush=True)

        try:
            signum = asyncio.run(server.serve(args.host, args.port, ready))
        except OSError as e:
            raise ServeError(f"cannot listen on {args.host}:{args.port} ({one_line(e)})") from None
        print(f"stopped on signal {signum}", flush=True)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
