"""On-disk schema of stage 2: preprocessed HDF5 files, the training loader's input.

One output file per stage-1 segment file, with the same name (`{a}-{b}_episode.h5`), written by
`DataPreprocess_batch_all.py` / `DataPreprocess_batch_pick.py` (`rt1.data.preprocess`). Every step
is stored once: a 6-step training window is cut out at load time, never stored.

File layout (format_version 2):

    attrs:
        format               "rt1-preprocessed"
        format_version       2 (1 had no fingerprints)
        source_dataset       copied from the segment ("fractal20220817_data/0.1.0")
        source_file          name of the segment file this was made from
        source_format_version  the segment's format_version
        source_num_episodes, source_num_steps  what the segment held (before this run's filter)
        source_size          the segment file's size in bytes (a rerun redoes an output whose input changed)
        episode_range        int64 [a, b): the source episodes the segment covers
        segment_task_filter  the filter stage 1 used
        task_filter          the filter this run used ("all", "pick", ...): kept episodes pass both
        image_size           int64 [H, W] of every stored frame (224, 224 by default; `--image-size N`,
                             `HxW` or `native`: 256, 320)
        image_encoding       "jpeg"
        jpeg_quality         90 by default (`--jpeg-quality`); 0 with `--image-size native`: not re-encoded
        resize               how frames were resized (see "Images" below): `images.RESIZE_DESCRIPTION`,
                             or `images.NATIVE_DESCRIPTION` for `--image-size native`
        num_episodes, num_steps
        content_digest       sha256 (hex) of the content (`content_digest()`); an index records it so
                             a loader can tell that a file changed after the index was built
    episodes/                                  one row per kept episode, E rows
        source_index         int64 (E,)        position of the episode in the RLDS `train` split
                                               (canonical read order, `rt1.data.rlds_reader`)
        fingerprint          ascii (E,)        the segment's content fingerprint of the episode
                                               (`segment_schema.episode_fingerprint`); stage 3 refuses
                                               a directory in which one appears twice
        step_start           int64 (E,)        first step row of the episode
        num_steps            int64 (E,)        episodes are contiguous: step_start[i+1] = step_start[i] + num_steps[i]
        instruction          utf-8 string (E,)
        language_embedding   float32 (E, 512)  the instruction's Universal Sentence Encoder embedding
    steps/                                     one row per step, T rows in all
        action_tokens        uint8 (T, 11)     `rt1.actions.tokenize` of the step's action (fixed RT-1 bounds)
        actions              float32 (T, 11)   `rt1.actions.flatten_actions`: continuous values in token
                                               order, terminate as its class index (plots and metrics)
        action/<key>         float32 (T, dims); terminate_episode int32 (T, 3): the raw RLDS action
    images/
        jpeg                 uint8 (B,)        the JPEG bytes of all T frames, concatenated in step order
        offset               int64 (T + 1,)    frame t is jpeg[offset[t]:offset[t+1]]; offset[T] = B

Images: every frame is resized from 256x320 to image_size by a plain squash (the whole frame resized
to HxW with Pillow's antialiased bilinear filter, aspect ratio not kept), as the original PyTorch
pipeline does and as RT-1's released policies do (`tf.image.resize(image, (300, 300))`). A centre
crop would cut off the sides of the scene (drawers and cabinet sit at the frame's edge). Frames are
then re-encoded as JPEG at quality 90 (4:2:0) and decoded by the loader. `--image-size HxW` squashes
to H rows and W columns the same way (256x320 keeps the size and only re-encodes).

`--image-size native` (for networks that take the camera's frames and resize them themselves, e.g.
Google's RT-1): the segment's JPEG bytes, i.e. the RLDS dataset's own (quality 95 in the bundled
dataset), are stored byte for byte: no resize, no second JPEG generation, so a decoded frame equals the
decoded source frame exactly. Every frame is decoded once to check it is a 256x320 RGB JPEG (a frame of
another size is refused: resize with `HxW`). The layout is the same as for resized frames (one JPEG per
step in `images/jpeg`), so format_version stays 2; such a file says image_size [256, 320],
jpeg_quality 0 and resize `NATIVE_DESCRIPTION`, and a rerun into the same directory with another
`--image-size` (`256x320` included: re-encoded, not the same bytes) is refused.

Why JPEG, and why quality 90, measured on this project's 2-core machine with textured 256x320 frames
calibrated to the real dataset's mean JPEG size (~29 KB per frame: 111 GiB of TFRecords for 3.79 M
steps, less ~2.3 KB of embedding and vectors per step), at 224x224:
    format                                          bytes/step  vs original  PSNR     read+decode 6 frames
    original (6-frame uint8 windows, torch.save)    ~800 KB     1            -        whole file per item
    raw uint8, HDF5 chunk per frame, uncompressed    151 KB     1/5          exact    0.1 ms
    raw uint8, gzip 1 or 4 (lzf does not shrink)     137 KB     1/6          exact    3.5 ms
    JPEG quality 95                                  17 KB      1/47         40.1 dB  1.2 ms
    JPEG quality 90 (chosen)                         12 KB      1/66         38.1 dB  1.0 ms
    JPEG quality 85                                  9.4 KB     1/85         37.1 dB  1.0 ms
(PSNR against the resized frame before encoding; decode CPU time with simplejpeg, Pillow ~1.5x.)
Only JPEG meets the size target of 1/40 of the original; quality 90 leaves a margin for frames more
detailed than the calibration and decodes faster than 95, and 85 gains little speed for more loss.
With it one DataLoader worker delivers ~400 windows per CPU-second (`benchmarks/bench_loader.py`).
The frames are one contiguous byte array with offsets rather than an HDF5 variable-length dataset:
reading one window's 6 frames is one slice (~11 us instead of ~110 us).

Reading: `rt1.data.preprocessed_file` (`PreprocessedFile`, `read_episodes`).

A file may hold zero episodes (a segment with no episode passing the filter): it is still written,
so that a rerun knows the segment is done.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rt1.actions import NUM_ACTION_TOKENS
from rt1.data.images import ImageDecodeError, decode_jpeg
from rt1.errors import RT1Error, one_line
from rt1.io import atomic_output
from rt1.rlds_spec import ACTION_SPEC, EMBEDDING_DIM

FORMAT = "rt1-preprocessed"
FORMAT_VERSION = 2
IMAGE_ENCODING = "jpeg"

# The datasets every file must have, with their dtype (shape checks are done in `_check_layout`).
REQUIRED_DATASETS = {
    "episodes/source_index": np.int64,
    "episodes/fingerprint": np.bytes_,
    "episodes/step_start": np.int64,
    "episodes/num_steps": np.int64,
    "episodes/instruction": object,
    "episodes/language_embedding": np.float32,
    "steps/action_tokens": np.uint8,
    "steps/actions": np.float32,
    "images/jpeg": np.uint8,
    "images/offset": np.int64,
}


class PreprocessedFormatError(RT1Error, ValueError):
    """A file is not a readable preprocessed file of the version this code reads (or is corrupt)."""


@dataclass
class PreprocessedEpisode:
    """One episode of a preprocessed file; step arrays have T rows.

    Written from `jpeg_frames`; read back with `images` decoded to uint8 (T, H, W, 3) when asked for.
    """

    source_index: int
    fingerprint: str  # 32 hex digits, from the segment
    instruction: str
    language_embedding: np.ndarray  # float32 (512,)
    action_tokens: np.ndarray  # uint8 (T, 11)
    actions: np.ndarray  # float32 (T, 11), flatten_actions order
    raw_actions: dict[str, np.ndarray]  # RLDS key -> (T, dims)
    jpeg_frames: list[bytes] = field(default_factory=list)  # T JPEGs at the target size
    images: np.ndarray | None = None  # uint8 (T, H, W, 3) when decoded

    @property
    def num_steps(self) -> int:
        return len(self.action_tokens)


def content_digest(f_or_arrays) -> str:
    """sha256 over a file's content (an open h5py.File or the dict `_content_arrays` builds)."""
    arrays = f_or_arrays if isinstance(f_or_arrays, dict) else _read_content_arrays(f_or_arrays)
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        digest.update(name.encode())
        if isinstance(value, list):  # instructions
            for text in value:
                digest.update(text.encode("utf-8") + b"\0")
        else:
            value = np.ascontiguousarray(value)
            digest.update(str(value.dtype).encode() + str(value.shape).encode())
            digest.update(value.data)
    return digest.hexdigest()


def _content_arrays(episodes: list[PreprocessedEpisode]) -> dict:
    counts = np.array([e.num_steps for e in episodes], dtype=np.int64)
    frames = [jpeg for e in episodes for jpeg in e.jpeg_frames]
    if len(frames) != int(counts.sum()):
        raise ValueError("every episode needs one JPEG frame per step")
    lengths = np.array([len(jpeg) for jpeg in frames], dtype=np.int64)

    def cat(parts, shape, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *shape), dtype)

    arrays = {
        "episodes/source_index": np.array([e.source_index for e in episodes], dtype=np.int64),
        "episodes/fingerprint": np.array([e.fingerprint for e in episodes], dtype="S32"),
        "episodes/step_start": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        if episodes
        else np.zeros(0, np.int64),
        "episodes/num_steps": counts,
        "episodes/instruction": [e.instruction for e in episodes],
        "episodes/language_embedding": np.stack([e.language_embedding for e in episodes]).astype(np.float32)
        if episodes
        else np.zeros((0, EMBEDDING_DIM), np.float32),
        "steps/action_tokens": cat([e.action_tokens for e in episodes], (NUM_ACTION_TOKENS,), np.uint8),
        "steps/actions": cat([e.actions for e in episodes], (NUM_ACTION_TOKENS,), np.float32),
        "images/jpeg": np.frombuffer(b"".join(frames), dtype=np.uint8),
        "images/offset": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }
    for key, spec in ACTION_SPEC.items():
        arrays[f"steps/action/{key}"] = cat([e.raw_actions[key] for e in episodes], spec.shape, spec.dtype)
    return arrays


def _read_content_arrays(f: h5py.File) -> dict:
    arrays = {}
    for name in REQUIRED_DATASETS:
        arrays[name] = list(f[name].asstr()[:]) if name == "episodes/instruction" else f[name][:]
    for key in ACTION_SPEC:
        arrays[f"steps/action/{key}"] = f[f"steps/action/{key}"][:]
    return arrays


def write_preprocessed(
    path: Path,
    episodes: list[PreprocessedEpisode],
    *,
    image_size: tuple[int, int],
    jpeg_quality: int,
    resize: str,
    task_filter: str,
    source: dict,
) -> tuple[int, str]:
    """Write `episodes` to `path` atomically; returns (bytes written, content digest).

    `source` holds the segment's facts: source_dataset, source_file, source_format_version,
    source_num_episodes, source_num_steps, source_size, episode_range, segment_task_filter.
    """
    path = Path(path)
    arrays = _content_arrays(episodes)
    digest = content_digest(arrays)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            for key in ("source_dataset", "source_file", "segment_task_filter"):
                f.attrs[key] = str(source[key])
            for key in ("source_format_version", "source_num_episodes", "source_num_steps", "source_size"):
                f.attrs[key] = int(source[key])
            f.attrs["episode_range"] = np.asarray(source["episode_range"], dtype=np.int64)
            f.attrs["task_filter"] = task_filter
            f.attrs["image_size"] = np.asarray(image_size, dtype=np.int64)
            f.attrs["image_encoding"] = IMAGE_ENCODING
            f.attrs["jpeg_quality"] = int(jpeg_quality)
            f.attrs["resize"] = resize
            f.attrs["num_episodes"] = len(episodes)
            f.attrs["num_steps"] = int(arrays["episodes/num_steps"].sum())
            f.attrs["content_digest"] = digest
            for name, value in arrays.items():
                if name == "episodes/instruction":
                    text = f.create_dataset(name, shape=(len(value),), dtype=h5py.string_dtype("utf-8"))
                    if value:
                        text[:] = value
                else:
                    f.create_dataset(name, data=value)
    return path.stat().st_size, digest


def open_preprocessed(path: Path) -> h5py.File:
    """Open a preprocessed file read-only after checking its format, version and layout."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such preprocessed file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PreprocessedFormatError(f"{path}: not a readable HDF5 file ({one_line(e)})") from None
    try:
        fmt, version = f.attrs.get("format"), f.attrs.get("format_version")
        if fmt != FORMAT:
            hint = (
                " (a stage-1 segment file: run DataPreprocess_batch_*.py on it first)"
                if fmt == "rt1-segment"
                else ""
            )
            raise PreprocessedFormatError(
                f"{path}: not an rt1 preprocessed file (format attribute {fmt!r}){hint}"
            )
        if version != FORMAT_VERSION:
            raise PreprocessedFormatError(
                f"{path}: preprocessed format_version {version}, this code reads {FORMAT_VERSION}: "
                "preprocess the segments again"
            )
        _check_layout(path, f)
    except PreprocessedFormatError:
        f.close()
        raise
    except Exception as e:  # h5py raises OSError/KeyError/RuntimeError on damaged metadata
        f.close()
        raise PreprocessedFormatError(
            f"{path}: corrupt preprocessed file ({type(e).__name__}: {one_line(e)})"
        ) from None
    return f


def _check_layout(path: Path, f: h5py.File) -> None:
    """Cheap structural checks (shapes and counts, no bulk data), so damage is reported with the file name."""
    for name in REQUIRED_DATASETS:
        if name not in f:
            raise PreprocessedFormatError(f"{path}: corrupt preprocessed file (missing dataset '{name}')")
    num_episodes, num_steps = int(f.attrs["num_episodes"]), int(f.attrs["num_steps"])
    expected = {
        "episodes/source_index": (num_episodes,),
        "episodes/fingerprint": (num_episodes,),
        "episodes/step_start": (num_episodes,),
        "episodes/num_steps": (num_episodes,),
        "episodes/instruction": (num_episodes,),
        "episodes/language_embedding": (num_episodes, EMBEDDING_DIM),
        "steps/action_tokens": (num_steps, NUM_ACTION_TOKENS),
        "steps/actions": (num_steps, NUM_ACTION_TOKENS),
        "images/offset": (num_steps + 1,),
    }
    for name, shape in expected.items():
        if f[name].shape != shape:
            raise PreprocessedFormatError(
                f"{path}: corrupt preprocessed file ('{name}' has shape {f[name].shape}, expected {shape})"
            )
    starts, counts = f["episodes/step_start"][:], f["episodes/num_steps"][:]
    if num_episodes and (
        starts[0] != 0
        or np.any(counts < 1)
        or np.any(starts[1:] != starts[:-1] + counts[:-1])
        or starts[-1] + counts[-1] != num_steps
    ):
        raise PreprocessedFormatError(
            f"{path}: corrupt preprocessed file (episode table does not tile the steps)"
        )
    if f["images/offset"][num_steps] != f["images/jpeg"].shape[0]:
        raise PreprocessedFormatError(
            f"{path}: corrupt preprocessed file (image offsets do not match the image data)"
        )


def verify_preprocessed(path: Path, expected_digest: str | None = None) -> None:
    """Re-open `path` and check it whole: layout, content digest, and that every frame decodes.

    Raises `PreprocessedFormatError` naming the file on any problem.
    """
    path = Path(path)
    with open_preprocessed(path) as f:
        try:
            arrays = _read_content_arrays(f)
        except Exception as e:
            raise PreprocessedFormatError(f"{path}: corrupt preprocessed file ({one_line(e)})") from None
        digest = content_digest(arrays)
        if digest != f.attrs["content_digest"] or (expected_digest is not None and digest != expected_digest):
            raise PreprocessedFormatError(f"{path}: content does not match its digest (file damaged)")
        offsets, blob = arrays["images/offset"], arrays["images/jpeg"]
        if np.any(np.diff(offsets) <= 0):
            raise PreprocessedFormatError(
                f"{path}: corrupt preprocessed file (empty or negative image lengths)"
            )
        shape = (*(int(x) for x in f.attrs["image_size"]), 3)
        for t in range(len(offsets) - 1):
            try:
                decode_jpeg(blob[offsets[t] : offsets[t + 1]], shape)
            except ImageDecodeError as e:
                raise PreprocessedFormatError(f"{path}: frame at step row {t}: {e}") from None
