"""JPEG helpers shared by preprocessing (resize + re-encode) and the loader (decode).

Decoding uses `simplejpeg` when it is installed and Pillow otherwise. Both wrap libjpeg-turbo with
the same settings (accurate integer IDCT, fancy upsampling) and give identical pixels (checked by
tests/data/test_dataset.py); simplejpeg is faster and decodes straight into the caller's buffer.
Measured on this project's 2-core machine for 224x224 frames of ~12 KB (quality 90): a 6-frame
window takes ~1.0 ms of CPU with simplejpeg and ~1.5 ms with Pillow. Encoding and resizing use Pillow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rt1.errors import RT1Error

try:
    import simplejpeg as _simplejpeg
except ImportError:  # optional: Pillow decodes the same pixels, more slowly
    _simplejpeg = None

JPEG_QUALITY = 90
# Pillow's bilinear filter is antialiased when shrinking (its support grows with the scale factor).
RESIZE_FILTER = Image.Resampling.BILINEAR
RESIZE_DESCRIPTION = (
    "squash: the whole 256x320 frame resized to HxW with Pillow's antialiased bilinear filter "
    "(aspect ratio not kept, full field of view kept)"
)


# `--image-size native`: the source frames' JPEG bytes are stored as they are (no second JPEG generation).
NATIVE = "native"
NATIVE_DESCRIPTION = (
    "none (--image-size native): the source frames' JPEG bytes stored as they are, at the camera's size"
)
IMAGE_SIZE_RANGE = (16, 4096)


class ImageDecodeError(RT1Error, ValueError):
    """Bytes that are not a decodable RGB JPEG of the expected size."""


class ImageSizeError(RT1Error, ValueError):
    """An `--image-size` value that is not N, HxW or native (or is out of range)."""


def parse_image_size(value) -> tuple[int, int] | str:
    """Stage 2's `--image-size`: N (square N x N), HxW (H rows, W columns) or `native` -> (H, W) or NATIVE.

    Also takes an int or an (H, W) pair. Raises `ImageSizeError` naming the value otherwise.
    """
    text = str(value).strip().lower()
    if text == NATIVE:
        return NATIVE
    parts = (
        [value]
        if isinstance(value, int)
        else list(value)
        if isinstance(value, (tuple, list))
        else text.split("x")
    )
    try:
        size = tuple(int(x) for x in (parts * 2 if len(parts) == 1 else parts))
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or isinstance(value, bool):
        raise ImageSizeError(f"--image-size {value!r} is not N, HxW or native (e.g. 224, 256x320, native)")
    low, high = IMAGE_SIZE_RANGE
    if not all(low <= x <= high for x in size):
        raise ImageSizeError(f"--image-size {value!r} is out of range (each side {low}..{high})")
    return size


def image_size_label(size: tuple[int, int] | str) -> str:
    """ "224x224", or "native" for the source frames kept as they are."""
    return NATIVE if size == NATIVE else f"{size[0]}x{size[1]}"


def decoder_name() -> str:
    return "simplejpeg" if _simplejpeg is not None else "pillow"


def decode_jpeg(
    data,
    expected_shape: tuple[int, int, int] | None = None,
    out: np.ndarray | None = None,
    *,
    use_pillow: bool = False,
) -> np.ndarray:
    """JPEG bytes (bytes or a uint8 array) -> uint8 array (H, W, 3), written into `out` if given.

    Raises `ImageDecodeError` for undecodable or truncated data, or a shape other than
    `expected_shape` (or than `out`'s shape).
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    if out is not None:
        expected_shape = out.shape
    if _simplejpeg is not None and not use_pillow:
        try:
            height, width, _, _ = _simplejpeg.decode_jpeg_header(data)
            if expected_shape is not None and (height, width, 3) != tuple(expected_shape):
                raise ImageDecodeError(
                    f"decoded image has shape {(height, width, 3)}, expected {tuple(expected_shape)}"
                )
            return _simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        except ImageDecodeError:
            raise
        except Exception as e:  # simplejpeg raises ValueError for bad data
            raise ImageDecodeError(f"undecodable JPEG ({type(e).__name__}: {e})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ImageDecodeError(f"not a JPEG image (format {image.format})")
            if image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image)
    except ImageDecodeError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ImageDecodeError(f"undecodable JPEG ({type(e).__name__}: {e})") from None
    if expected_shape is not None and array.shape != tuple(expected_shape):
        raise ImageDecodeError(f"decoded image has shape {array.shape}, expected {tuple(expected_shape)}")
    if out is not None:
        out[...] = array
        return out
    return array


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes (baseline, 4:2:0, deterministic for the same Pillow build)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(
        buffer, format="JPEG", quality=int(quality)
    )
    return buffer.getvalue()


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) by the squash resize of `RESIZE_DESCRIPTION`."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image, "RGB").resize((width, height), RESIZE_FILTER))


def resize_jpeg(data, size: tuple[int, int], quality: int = JPEG_QUALITY) -> bytes:
    """Source JPEG bytes -> JPEG bytes of the frame squash-resized to `size` (H, W)."""
    return encode_jpeg(resize_frame(decode_jpeg(data), size), quality)


def stored_frame(data, size: tuple[int, int], quality: int | None = JPEG_QUALITY) -> bytes:
    """Stage 2's frame: source JPEG bytes -> the bytes stored, decodable to uint8 (H, W, 3) of `size`.

    `quality` None (`--image-size native`): the source bytes themselves, checked to decode at `size`;
    otherwise squash-resized and re-encoded (`resize_jpeg`).
    """
    if quality is None:
        decode_jpeg(data, (*size, 3))
        return bytes(data)
    return resize_jpeg(data, size, quality)


# ---- the frames a policy saw in training, made from a live camera image -------------------------

# The bundled dataset stores camera frames through tfds.features.Image(encoding_format="jpeg"), which
# encodes with tf.image.encode_jpeg's defaults: quality 95, 4:2:0 chroma, JFIF density 300 dpi.
# Pillow's libjpeg-turbo with the same settings writes the same bytes (tests/evaluation/test_closed_loop.py
# compares them with the TFDS feature's encode_example), so the policy side needs no TensorFlow.
DATASET_JPEG_QUALITY = 95
_DATASET_JPEG_DPI = (300, 300)


def dataset_jpeg(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> the JPEG bytes the bundled RLDS dataset stores for this camera frame."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(
        buffer, format="JPEG", quality=DATASET_JPEG_QUALITY, dpi=_DATASET_JPEG_DPI
    )
    return buffer.getvalue()


def training_frame(
    image: np.ndarray, size: int | tuple[int, int], quality: int | None = JPEG_QUALITY
) -> np.ndarray:
    """A live camera frame uint8 (256, 320, 3) -> exactly the uint8 (H, W, 3) a training frame became.

    The training path of a frame: stored as JPEG in the RLDS dataset (`dataset_jpeg`), copied as bytes
    by stage 1, squash-resized and re-encoded at `quality` by stage 2 (`stored_frame`), decoded by the
    loader (`decode_jpeg`). Closed-loop evaluation feeds the policy through this one function;
    `size` (an int N for N x N, or (H, W)) and `quality` are stage 2's `--image-size` and `--jpeg-quality`;
    `quality` None is `--image-size native` (size: the camera's), whose frames are not re-encoded.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return decode_jpeg(stored_frame(dataset_jpeg(image), (height, width), quality), (height, width, 3))
