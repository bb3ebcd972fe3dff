"""A WebSocket policy server for a robot, and its client.

    python -m rt1.serve --model PATH [--host 127.0.0.1] [--port 8000] [--device cpu] [--threads 1]

PATH is a checkpoint file or a directory of `python -m rt1.export`. Each connection is one episode
session with its own `RT1Policy` (its own token cache); the sessions share one copy of the weights.

Wire format: every message is one binary WebSocket frame holding one msgpack map. A numpy array is the
map {"dtype": numpy dtype string ("|u1", "<f4", "<i4", ...), "shape": [...], "data": raw C-order bytes}.

    request                                                    reply
    {"type": "info"}                                           {"type": "info", "protocol", "model": {name, ...},
                                                                "sessions", "max_message_bytes"}
    {"type": "reset", "instruction_embedding": array (E,)      {"type": "reset", "step": 0}
       | "instruction": text (models whose config names
       the mini-fractal embedding), ["cond_scale": float]}
    {"type": "act", "observation": RLDS observation map}       {"type": "action", "action": {RLDS key: array},
       (`image` uint8 (256, 320, 3), or at the model's         "tokens": [11 ints], "step": t,
       frame size: already preprocessed; any other key of      "compute_ms": server time of the step}
       the fractal observation spec checked if present:
       state vectors finite, the instruction the episode's)
    {"type": "close"}                                          {"type": "closed"}, then the server closes

Any bad message (not msgpack, a text frame, wrong or missing keys, shapes, dtypes, a message over
`--max-message-bytes`, act before reset, an image of another size, a non-finite state vector, another
instruction (embedding or text) within an episode) gets
{"type": "error", "error": one line} and the session goes on as it was. A message over 4x the limit is
refused by the WebSocket layer itself: it closes that connection (code 1009, "message too big").

A frame at the model's frame size is taken as `training_frame`'s output and goes to the model as it is;
the camera image goes through the model's image preprocessing (`rt1.data.images.training_frame`, the
JPEG quality from config.json or --jpeg-quality) and then `RT1Policy.step`: the same calls as in-process
closed-loop evaluation (`rt1.evaluation.closed_loop.RT1EnvPolicy`), so the actions are the same.
Inference runs in a worker thread pool (`--workers`, default 1: every step of every session in one
thread, in arrival order) and all other per-message work (decoding, checks, resets) in message threads, so
the event loop keeps serving other connections; instruction text is at most 1000 characters; a session's steps are
sequential and its result does not depend on other sessions. A client that disconnects frees its
session. SIGTERM or SIGINT stops the server: connections are closed (1001), it exits 0.

Protection (docs/serving.md, "What the server protects"): 127.0.0.1 by default; handshakes with a browser Origin are
refused unless --allow-origin lists it; an optional shared token (--token / $RT1_SERVE_TOKEN, sent as
`Authorization: Bearer TOKEN`, compared in constant time); at most --max-connections at once. No encryption.

The client (`PolicyClient`, `ServedEnvPolicy`) needs numpy, msgpack and websockets only (no torch).
"""

from rt1.serve.cli import main
from rt1.serve.client import PolicyClient, ServedEnvPolicy, local_server
from rt1.serve.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    PROTOCOL_VERSION,
    ProtocolError,
    ServeError,
    ServerError,
    action_of_reply,
    check_observation,
    check_request,
    decode,
    encode,
    pack_array,
    unpack_array,
)
from rt1.serve.server import PolicyServer, Session

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "PROTOCOL_VERSION",
    "PolicyClient",
    "PolicyServer",
    "ProtocolError",
    "ServeError",
    "ServedEnvPolicy",
    "ServerError",
    "Session",
    "action_of_reply",
    "check_observation",
    "check_request",
    "decode",
    "encode",
    "local_server",
    "main",
    "pack_array",
    "unpack_array",
]
