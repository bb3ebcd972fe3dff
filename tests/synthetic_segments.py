"""Real stage-1 segment files from synthetic episodes, for the stage 2/3 tests and the loader benchmark.

Each frame is a real 256x320 JPEG made with Pillow. By default a frame is one flat colour that
encodes its episode and step (`step_colour`), so a test can check that a loaded window shows the
right frames: flat colours survive JPEG and resizing within a few levels. `textured=True` draws
photo-like frames instead (1/f noise plus fine grain) whose JPEG size, ~29 KB at quality 95, is the
real dataset's mean, for honest size and speed figures.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from rt1.data.segment_schema import Episode, segment_file_name, write_segment
from rt1.rlds_spec import EMBEDDING_DIM, IMAGE_SHAPE, OBSERVATION_VECTORS

PICK = ("pick coke can", "pick brown chip bag", "pick blue plastic bottle")
NOT_PICK = (
    "open middle drawer",
    "move blue chip bag near pepsi can",
    "pick coke can from top drawer and place on counter",
    "place 7up can upright",
)


def step_colour(source_index: int, step: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame `step` of source episode `source_index` (steps < 30 stay distinct)."""
    return (10 + 8 * step) % 256, (40 + 23 * source_index) % 256, 128


def embedding_of(instruction: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(instruction.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def textured_frame(
    rng: np.random.Generator, height: int = IMAGE_SHAPE[0], width: int = IMAGE_SHAPE[1]
) -> np.ndarray:
    """A photo-like frame: 1/f^1.6 coloured noise plus sensor grain (~29 KB as a quality-95 JPEG)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**1.6
        spectrum[0, 0] = 0
        plane = np.fft.irfft2(spectrum, s=(height, width))
        channels.append((plane - plane.mean()) / plane.std())
    image = np.stack(channels, -1) * 40 + 128 + rng.standard_normal((height, width, 3)) * 2
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_actions(source_index: int, num_steps: int) -> dict[str, np.ndarray]:
    """Deterministic actions; some values fall outside the RT-1 bounds (the tokenizer clips them)."""
    t = np.arange(num_steps, dtype=np.float64)[:, None] + 0.37 * source_index
    terminate = np.tile(np.array([0, 1, 0], np.int32), (num_steps, 1))
    terminate[-1] = [1, 0, 0]
    return {
        "world_vector": (1.2 * np.sin(t * [0.7, 1.1, 1.3])).astype(np.float32),
        "rotation_delta": (1.8 * np.cos(t * [0.5, 0.9, 1.7])).astype(np.float32),
        "gripper_closedness_action": np.sin(t * 0.45).astype(np.float32),
        "base_displacement_vector": (0.5 * np.sin(t * [0.3, 0.2])).astype(np.float32),
        "base_displacement_vertical_rotation": (3.5 * np.sin(t * 0.25)).astype(np.float32),
        "terminate_episode": terminate,
    }


def make_episode(
    source_index: int,
    num_steps: int,
    instruction: str,
    *,
    textured: bool = False,
    rng: np.random.Generator | None = None,
    frame_pool: list[bytes] | None = None,
) -> Episode:
    if frame_pool is not None:
        images = [frame_pool[(source_index * 7 + s) % len(frame_pool)] for s in range(num_steps)]
    elif textured:
        rng = rng or np.random.default_rng(source_index)
        images = [jpeg_bytes(textured_frame(rng)) for _ in range(num_steps)]
    else:
        images = [
            jpeg_bytes(np.full(IMAGE_SHAPE, step_colour(source_index, s), np.uint8)) for s in range(num_steps)
        ]
    flags = np.zeros(num_steps, bool)
    is_first, is_last = flags.copy(), flags.copy()
    is_first[0] = is_last[-1] = True
    reward = np.zeros(num_steps, np.float32)
    reward[-1] = 1.0
    return Episode(
        source_index=source_index,
        instruction=instruction,
        language_embedding=embedding_of(instruction),
        images=images,
        actions=synthetic_actions(source_index, num_steps),
        observations={
            k: np.zeros((num_steps, *spec.shape), np.float32) for k, spec in OBSERVATION_VECTORS.items()
        },
        is_first=is_first,
        is_last=is_last,
        is_terminal=is_last.copy(),
        reward=reward,
    )


def write_synthetic_segments(
    directory: Path,
    layout: list[list[tuple[int, str]]],
    *,
    first_index: int = 0,
    textured: bool = False,
    frame_pool: list[bytes] | None = None,
) -> list[Path]:
    """One segment file per entry of `layout`, a list of (num_steps, instruction) per episode.

    Source episode indices run on from `first_index`; file i is named for its index range.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, index = [], first_index
    for episodes in layout:
        eps = [
            make_episode(index + k, n, instruction, textured=textured, frame_pool=frame_pool)
            for k, (n, instruction) in enumerate(episodes)
        ]
        path = directory / segment_file_name(index, index + len(episodes))
        write_segment(path, eps, (index, index + len(episodes)), "all")
        paths.append(path)
        index += len(episodes)
    return paths


# The default test layout: 3 files, 11 episodes, lengths 2..25 (three shorter than 6 steps, one of exactly 6),
# pick and non-pick instructions (one that says "pick ... from", which the pick filter leaves out).
DEFAULT_LAYOUT: list[list[tuple[int, str]]] = [
    [(12, PICK[0]), (3, NOT_PICK[0]), (8, NOT_PICK[1]), (6, PICK[1])],
    [(25, NOT_PICK[2]), (5, PICK[2]), (9, PICK[0])],
    [(2, PICK[1]), (14, NOT_PICK[3]), (7, PICK[2]), (10, NOT_PICK[0])],
]


def expected_is_pick(instruction: str) -> bool:
    """The pick rule written out independently of rt1.data.filters: these are the pick instructions."""
    return instruction in PICK
