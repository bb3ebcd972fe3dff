"""The policy server: one `Session` (its own RT1Policy) per connection, and `PolicyServer`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from rt1.actions import ACTION_KEYS
from rt1.errors import one_line
from rt1.rlds_spec import ACTION_SPEC, EMBEDDING_DIM, IMAGE_SHAPE
from rt1.serve.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HARD_LIMIT_FACTOR,
    PROTOCOL_VERSION,
    ProtocolError,
    ServeError,
    _kind,
    check_observation,
    check_request,
    decode,
    encode,
    pack_array,
    unpack_array,
)

DEFAULT_MAX_CONNECTIONS = 8
TOKEN_ENV = "RT1_SERVE_TOKEN"
MAX_COND_SCALE = 100.0  # classifier-free guidance scales in use are single digits
MESSAGE_THREADS = 4  # threads that decode and check messages and run resets, for all connections
MAX_INSTRUCTION_CHARS = 1000  # fractal20220817_data's instructions are under 100 characters


def error_reply(error: Exception, kind: str | None) -> dict:
    """The error reply of a request; a failure that is not a refused message is logged with its traceback."""
    if isinstance(error, ProtocolError):
        return {"type": "error", "error": one_line(error), "request": kind}
    import logging

    logging.getLogger("rt1.serve").error("request %s failed", kind, exc_info=error)
    return {
        "type": "error",
        "error": f"{kind} failed: {type(error).__name__}: {one_line(error)}",
        "request": kind,
    }


# ---- the server -------------------------------------------------------------------------------------


class Session:
    """One connection's episode: its own RT1Policy over the server's shared (folded) model."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.policy = None
        self.embedding: np.ndarray | None = None
        self.instruction: str | None = None  # the episode's text: the reset's, else its first step's

    def reset(self, message: dict) -> dict:
        if ("instruction_embedding" in message) == ("instruction" in message):
            raise ProtocolError("reset: give exactly one of instruction_embedding and instruction")
        text = message["instruction"] if "instruction" in message else None
        embedding = (
            self._embed(text)
            if "instruction" in message
            else self._embedding(message["instruction_embedding"])
        )
        cond_scale = check_cond_scale(message.get("cond_scale", 1.0))
        if self.policy is None or self.policy.cond_scale != cond_scale:
            try:
                self.policy = self.server.new_policy(cond_scale)
            except ValueError as e:  # a model without guidance: cond_scale must be 1
                raise ProtocolError(f"reset: {one_line(e)}") from None
        self.policy.reset()
        self.embedding, self.instruction = np.array(embedding, dtype=np.float32), text
        return {"type": "reset", "step": 0}

    def _embed(self, text) -> np.ndarray:
        """The embedding of a reset's instruction text (models whose embeddings the server can compute)."""
        if not isinstance(text, str) or not text.strip():
            got = "empty text" if isinstance(text, str) else _kind(text)
            raise ProtocolError(f"reset: instruction must be non-empty text, got {got}")
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise ProtocolError(
                f"reset: instruction is {len(text)} characters, over the limit of {MAX_INSTRUCTION_CHARS}"
            )
        if self.server.embed_text is None:
            raise ProtocolError(
                f"reset: this model's instruction embeddings come from {self.server.embedding_source}, "
                "which the server cannot compute: send instruction_embedding"
            )
        return self.server.embed_text(text)

    def _embedding(self, value) -> np.ndarray:
        embedding = unpack_array(value, "reset: instruction_embedding")
        dim = self.server.config.text_embed_dim
        if embedding.dtype != np.float32 or embedding.shape != (dim,):
            raise ProtocolError(
                f"reset: instruction_embedding must be float32 ({dim},), "
                f"got {embedding.dtype} {tuple(embedding.shape)}"
            )
        if not np.isfinite(embedding).all():
            raise ProtocolError("reset: instruction_embedding has non-finite values")
        return embedding

    def check_instruction(self, observation: dict) -> None:
        """An act's instruction (embedding or text, if sent) must be the episode's: a new one needs a reset."""
        given = observation.get("natural_language_embedding")
        if given is not None and not np.array_equal(given, self.embedding):
            raise ProtocolError(
                "act: observation/natural_language_embedding is not the episode's instruction; "
                "send reset for a new instruction"
            )
        text = observation.get("natural_language_instruction")
        if text is not None and self.instruction is None:
            self.instruction = text
        elif text is not None and text != self.instruction:
            raise ProtocolError(
                f"act: observation/natural_language_instruction {text[:100]!r} is not the episode's "
                f"instruction {self.instruction[:100]!r}; send reset for a new instruction"
            )

    def frame(self, image: np.ndarray) -> np.ndarray:
        """The model's input frame: a camera-size image goes through the training preprocessing, an image
        of the model's frame size is taken as already preprocessed (what `training_frame` returns)."""
        from rt1.data.images import training_frame

        config = self.server.config
        if tuple(image.shape[:2]) == IMAGE_SHAPE[:2]:
            return training_frame(image, config.frame_size, self.server.jpeg_quality)
        return np.array(image)  # a writable copy of the message bytes

    def act(self, observation: dict) -> dict:
        """Runs in a worker thread."""
        if self.policy is None or self.embedding is None:
            raise ProtocolError("act before reset: send reset with the episode's instruction first")
        self.check_instruction(observation)
        start = time.perf_counter()
        action, tokens = self.policy.step(
            self.frame(observation["image"]), self.embedding, return_tokens=True
        )
        if not bool(self.policy.last_logits.isfinite().all()):
            raise ProtocolError(
                "act: the model's logits are not finite (NaN or inf) for this observation: no action sent"
            )
        return {
            "type": "action",
            "action": {k: pack_array(np.asarray(action[k], ACTION_SPEC[k].dtype)) for k in ACTION_KEYS},
            "tokens": [int(t) for t in tokens],
            "step": self.policy.t,
            "compute_ms": (time.perf_counter() - start) * 1e3,
        }  # preprocessing + inference, for latency budgets

    def free(self) -> None:
        self.policy = self.embedding = self.instruction = None


def check_cond_scale(cond_scale) -> float:
    if (
        not isinstance(cond_scale, (int, float))
        or isinstance(cond_scale, bool)
        or not math.isfinite(cond_scale)
    ):
        raise ProtocolError(f"reset: cond_scale must be a finite number, got {cond_scale!r}")
    if abs(cond_scale) > MAX_COND_SCALE:
        raise ProtocolError(f"reset: cond_scale must be within +-{MAX_COND_SCALE:g}, got {cond_scale!r}")
    return float(cond_scale)


class PolicyServer:
    """The model and settings behind every session; `serve()` runs the WebSocket server until SIGTERM/SIGINT."""

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        jpeg_quality: int | None = None,
        embedding_source: str | None = None,
        workers: int = 1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        threads: int | None = None,
        allow_origins: tuple[str, ...] = (),
        token: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from rt1.model import check_model_path, load_model
        from rt1.model.pretrained import EMBEDDING_SOURCES, read_pretrained_config
        from rt1.policy import check_device, model_jpeg_quality

        if workers < 1 or max_message_bytes < 1024 or max_connections < 1:
            raise ServeError(
                "--workers and --max-connections must be >= 1 and --max-message-bytes >= 1024, got "
                f"{workers}, {max_connections}, {max_message_bytes}"
            )
        if token is not None and not token.strip():
            raise ServeError("--token (or RT1_SERVE_TOKEN) must not be empty")
        self.allow_origins, self.token, self.max_connections = tuple(allow_origins), token, max_connections
        device = str(check_device(device))
        model_path = Path(model_path)
        check_model_path(model_path)
        exported = read_pretrained_config(model_path) if model_path.is_dir() else {}
        self.jpeg_quality = model_jpeg_quality(model_path, jpeg_quality)  # rt1.policy: as in-process runs
        model, self.config, _ = load_model(model_path, device)
        # One inference form for every session (RT1Policy would make one per session): same actions.
        self.model = model.for_inference()
        self.device = device
        # The camera's size (preprocessed here), else the model's frame size (a frame already preprocessed).
        self.image_sizes = tuple(dict.fromkeys([IMAGE_SHAPE[:2], tuple(self.config.frame_size)]))
        self.set_embedding_source(
            embedding_source
            or exported.get("instruction_embedding", {}).get("source")
            or EMBEDDING_SOURCES[0]
        )
        self.model_path = model_path
        self.max_message_bytes = int(max_message_bytes)
        # The intra-op thread count is per OS thread (OpenMP): set it in each worker, not only in main.
        self.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="rt1-inference",
            initializer=torch.set_num_threads,
            initargs=(threads or torch.get_num_threads(),),
        )
        # Decoding, checks and resets of all connections, off the event loop and off the inference queue.
        self.messages = ThreadPoolExecutor(max_workers=MESSAGE_THREADS, thread_name_prefix="rt1-messages")
        self.sessions: set[Session] = set()

    def set_embedding_source(self, source: str) -> None:
        """Where the model's instruction embeddings come from; mini-fractal ones the server computes from text."""
        from rt1.model.pretrained import EMBEDDING_SOURCES

        if source not in EMBEDDING_SOURCES:
            raise ServeError(
                f"--embedding-source must be one of {', '.join(EMBEDDING_SOURCES)}, got {source!r}"
            )
        self.embedding_source, self.embed_text = source, None
        if source == "mini-fractal" and self.config.text_embed_dim == EMBEDDING_DIM:
            from rt1.sim.scene import instruction_embedding

            self.embed_text = instruction_embedding

    def new_policy(self, cond_scale: float):
        from rt1.policy import RT1Policy

        return RT1Policy(self.model, cond_scale=cond_scale, device=self.device, fold_batch_norms=False)

    def info(self) -> dict:
        c = self.config
        return {
            "type": "info",
            "protocol": PROTOCOL_VERSION,
            "sessions": len(self.sessions),
            "max_message_bytes": self.max_message_bytes,
            "model": {
                "name": self.model_path.name,  # never the server's filesystem path
                "image_size": list(c.frame_size),
                "image_sizes": [list(size) for size in self.image_sizes],  # what act takes: camera's first
                "num_frames": c.num_frames,
                "text_embed_dim": c.text_embed_dim,
                "embedding_source": self.embedding_source,
                "accepts_instruction_text": self.embed_text is not None,
                "jpeg_quality": self.jpeg_quality,
            },
        }

    def read(self, session: Session, data) -> tuple[dict | None, bool, dict | None]:
        """One frame, in a message thread (never the event loop: decoding, checks and a reset take time)
        -> (reply, close after it, None) or, for an act that passed its checks, (None, False, observation)."""
        kind = None
        try:
            message = decode(data)
            kind = check_request(message)
            if kind == "info":
                return self.info(), False, None
            if kind == "close":
                return {"type": "closed"}, True, None
            if kind == "reset":
                return session.reset(message), False, None
            return (
                None,
                False,
                check_observation(message["observation"], self.config.text_embed_dim, self.image_sizes),
            )
        except Exception as e:  # noqa: BLE001 - a bad message or a failed reset must not take the server down
            return error_reply(e, kind), False, None

    async def answer(self, session: Session, data) -> tuple[dict, bool]:
        """One frame -> (reply, close the connection after it)."""
        import asyncio

        loop = asyncio.get_running_loop()
        kind = None
        try:
            if len(data) > self.max_message_bytes:
                raise ProtocolError(
                    f"message of {len(data)} bytes is over the limit of {self.max_message_bytes}"
                )
            reply, close, observation = await loop.run_in_executor(self.messages, self.read, session, data)
            if reply is not None:
                return reply, close
            kind = "act"
            return await loop.run_in_executor(self.executor, session.act, observation), False
        except Exception as e:  # noqa: BLE001 - a failed step must not take the server down
            return error_reply(e, kind), False

    def check_token(self, connection, request):
        """The handshake's shared-token check (`Authorization: Bearer TOKEN`), in constant time."""
        if self.token is None:
            return None
        import hashlib
        import hmac
        from http import HTTPStatus

        given = request.headers.get("Authorization", "").encode()
        expected = f"Bearer {self.token}".encode()
        if hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "this policy server needs its token\n")

    async def handler(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        if len(self.sessions) >= self.max_connections:
            await websocket.close(1013, f"the server is at its limit of {self.max_connections} connections")
            return
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
            async with serve(
                self.handler,
                host,
                port,
                max_size=self.max_message_bytes * HARD_LIMIT_FACTOR,
                compression=None,
                # A browser always sends Origin, a robot's client does not: only listed origins may connect.
                origins=None if "*" in self.allow_origins else [None, *self.allow_origins],
                process_request=self.check_token,
            ) as server:
                bound = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(bound)
                received = await stop
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            self.executor.shutdown(wait=True)
            self.messages.shutdown(wait=True)
        return received
