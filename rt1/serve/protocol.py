"""The policy server's wire format: msgpack maps in binary frames, arrays as {dtype, shape, data},
and the checks every request goes through (see `rt1.serve`)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from rt1.errors import RT1Error, one_line
from rt1.rlds_spec import ACTION_SPEC, OBSERVATION_VECTORS

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8000
DEFAULT_MAX_MESSAGE_BYTES = 8 * 2**20  # a 1280x1024 RGB frame and change
HARD_LIMIT_FACTOR = 4  # frames up to this x the limit are read and answered with an error
MAX_IMAGE_SIDE = 4096
MAX_DIMENSION = 2**31 - 1  # per array dimension: larger ones (even of a zero-size array) are refused
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
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or any(not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_DIMENSION for n in shape)
    ):
        raise ProtocolError(
            f"{what}: shape must be a list of at most 8 ints 0..{MAX_DIMENSION}, got {str(shape)[:80]}"
        )
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what}: data must be binary, got {_kind(data)}")
    dt = np.dtype(dtype)
    if len(data) != math.prod(shape) * dt.itemsize:
        raise ProtocolError(f"{what}: {len(data)} data bytes do not make a {dtype} array of shape {shape}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _kind(value) -> str:
    return {dict: "a map", list: "a list", bytes: "binary", str: "text"}.get(
        type(value), type(value).__name__
    )


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


def _size(shape) -> str:
    return "x".join(map(str, shape))


def check_image(a: np.ndarray, image_sizes: tuple[tuple[int, int], ...] | None = None) -> None:
    """uint8 (H, W, 3) with (H, W) one of `image_sizes` (None: sides up to MAX_IMAGE_SIDE); raises ProtocolError."""
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ProtocolError(
            f"act: observation/image must be uint8 (H, W, 3) RGB, got {a.dtype} {tuple(a.shape)}"
        )
    if image_sizes is None and not (1 <= a.shape[0] <= MAX_IMAGE_SIDE and 1 <= a.shape[1] <= MAX_IMAGE_SIDE):
        raise ProtocolError(
            f"act: observation/image sides must be 1..{MAX_IMAGE_SIDE}, got {_size(a.shape[:2])}"
        )
    if image_sizes is not None and tuple(a.shape[:2]) not in image_sizes:
        camera, *model = image_sizes
        frame = (
            f" or {_size(model[0])} (the model's frame size: a frame already preprocessed)" if model else ""
        )
        raise ProtocolError(
            f"act: observation/image is {_size(a.shape[:2])}; this model takes {_size(camera)} (the camera's)"
            f"{frame}: it was trained on no other size"
        )


def check_observation(
    observation, embedding_dim: int, image_sizes: tuple[tuple[int, int], ...] | None = None
) -> dict[str, Any]:
    """An RLDS observation map -> {key: numpy array or str}, every key checked against the fractal spec
    (state vectors finite; the image one of `image_sizes` (H, W), camera's first, when given)."""
    if not isinstance(observation, dict):
        raise ProtocolError(f"act: observation must be a map, got {_kind(observation)}")
    shapes = {k: (s.shape, np.dtype(s.dtype)) for k, s in OBSERVATION_VECTORS.items()}
    shapes["natural_language_embedding"] = ((embedding_dim,), np.dtype(np.float32))
    known = {"image", *shapes, *OBSERVATION_TEXT_KEYS}
    unknown = sorted(set(map(str, observation)) - known)
    if unknown:
        raise ProtocolError(
            f"act: unknown observation key(s) {unknown}; RLDS fractal keys are {sorted(known)}"
        )
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
            check_image(a, image_sizes)
        else:
            shape, dtype = shapes[key]
            if a.dtype != dtype or a.shape != shape:
                raise ProtocolError(
                    f"act: observation/{key} must be {dtype} {shape}, got {a.dtype} {tuple(a.shape)}"
                )
            if not np.isfinite(a).all():
                raise ProtocolError(f"act: observation/{key} has non-finite values (NaN or inf)")
        out[key] = a
    return out


def action_of_reply(reply: dict) -> dict[str, np.ndarray]:
    """The RLDS action dict of an "action" reply, checked against the action spec (client side)."""
    action = reply.get("action")
    if not isinstance(action, dict) or set(action) != set(ACTION_SPEC):
        raise ServerError(
            f"the server's action has keys {sorted(action) if isinstance(action, dict) else action!r}, "
            f"expected {sorted(ACTION_SPEC)}"
        )
    out = {}
    for key, spec in ACTION_SPEC.items():
        try:
            a = unpack_array(action[key], f"action/{key}")
        except ProtocolError as e:
            raise ServerError(str(e)) from None
        if a.dtype != np.dtype(spec.dtype) or a.shape != spec.shape:
            raise ServerError(
                f"the server's action/{key} is {a.dtype} {a.shape}, expected {spec.dtype} {spec.shape}"
            )
        out[key] = a.copy()
    return out
