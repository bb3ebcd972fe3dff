"""The GPU check's own small dataset, in the stage-2 (preprocessed) format, without TensorFlow.

Episodes are synthetic: each frame is a flat colour with a bright square whose position moves with the
step, and the action is a function of the episode and step (so the model has something to learn and the
loss falls within a few dozen steps). They go to disk through the project's one stage-2 writer
(`rt1.data.preprocessed_schema.write_preprocessed`) and are indexed by stage 3 (`rt1.data.index.build_index`,
what `data_emerge.py` runs), so training reads exactly the files a real run reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt1.actions import flatten_actions, tokenize
from rt1.data.images import JPEG_QUALITY, RESIZE_DESCRIPTION, encode_jpeg
from rt1.data.index import build_index
from rt1.data.preprocessed_schema import PreprocessedEpisode, write_preprocessed
from rt1.data.segment_schema import segment_file_name
from rt1.rlds_spec import ACTION_SPEC, DATASET_NAME, DATASET_VERSION, EMBEDDING_DIM

INSTRUCTIONS = (
    "pick coke can",
    "open middle drawer",
    "move blue chip bag near pepsi can",
    "knock redbull can over",
)


@dataclass(frozen=True)
class CheckData:
    """Where the check's dataset is: the preprocessed directory and its train/val index CSVs."""

    data_dir: Path
    train_index: Path
    val_index: Path
    train_windows: int


def _embedding(instruction: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(instruction.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _actions(episode: int, num_steps: int) -> dict[str, np.ndarray]:
    """Smooth actions that depend on the instruction and the step (inside the RT-1 bounds)."""
    t = np.arange(num_steps, dtype=np.float64)[:, None] / max(num_steps - 1, 1)
    sign = 1.0 if episode % 2 == 0 else -1.0
    terminate = np.tile(np.array([0, 1, 0], np.int32), (num_steps, 1))
    terminate[-1] = [1, 0, 0]
    out = {
        "world_vector": (sign * 0.8 * np.sin(np.pi * t * [1.0, 0.5, 0.25])).astype(np.float32),
        "rotation_delta": np.zeros((num_steps, 3), np.float32),
        "gripper_closedness_action": np.where(t > 0.5, 1.0, -1.0).astype(np.float32),
        "base_displacement_vector": np.zeros((num_steps, 2), np.float32),
        "base_displacement_vertical_rotation": np.zeros((num_steps, 1), np.float32),
        "terminate_episode": terminate,
    }
    assert set(out) == set(ACTION_SPEC)
    return out


def _frame(episode: int, step: int, num_steps: int, size: int) -> np.ndarray:
    image = np.full((size, size, 3), (40 + 50 * (episode % 4), 90, 140), np.uint8)
    side = max(2, size // 6)
    pos = int((size - side) * step / max(num_steps - 1, 1))
    row = (size - side) // 2 if episode % 2 == 0 else size // 8
    image[row : row + side, pos : pos + side] = 250
    return image


def make_episode(episode: int, num_steps: int, size: int) -> PreprocessedEpisode:
    instruction = INSTRUCTIONS[episode % len(INSTRUCTIONS)]
    actions = _actions(episode, num_steps)
    frames = [encode_jpeg(_frame(episode, s, num_steps, size), JPEG_QUALITY) for s in range(num_steps)]
    fingerprint = hashlib.sha256(f"gpu-check {episode} {num_steps} {size}".encode()).hexdigest()[:32]
    return PreprocessedEpisode(
        source_index=episode,
        fingerprint=fingerprint,
        instruction=instruction,
        language_embedding=_embedding(instruction),
        action_tokens=tokenize(actions),
        actions=flatten_actions(actions),
        raw_actions=actions,
        jpeg_frames=frames,
    )


def write_check_dataset(
    out_dir: Path, *, image_size: int, episodes: int = 16, steps: int = 16, per_file: int = 4, window: int = 6
) -> CheckData:
    """`episodes` episodes of `steps` steps at image_size x image_size in files of `per_file` episodes, and the
    stage-3 index (25% of the episodes in val)."""
    out_dir = Path(out_dir)
    data_dir = out_dir / "preprocessed"
    data_dir.mkdir(parents=True, exist_ok=True)
    for first in range(0, episodes, per_file):
        last = min(first + per_file, episodes)
        eps = [make_episode(e, steps, image_size) for e in range(first, last)]
        name = segment_file_name(first, last)
        source = {
            "source_dataset": f"{DATASET_NAME}/{DATASET_VERSION} (gpu_check synthetic)",
            "source_file": name,
            "source_format_version": 2,
            "source_num_episodes": len(eps),
            "source_num_steps": steps * len(eps),
            "source_size": 0,
            "episode_range": (first, last),
            "segment_task_filter": "all",
        }
        write_preprocessed(
            data_dir / name,
            eps,
            image_size=(image_size, image_size),
            jpeg_quality=JPEG_QUALITY,
            resize=RESIZE_DESCRIPTION,
            task_filter="all",
            source=source,
        )
    result = build_index(data_dir, out_dir / "index", val_fraction=0.25, seed=0, window=window)
    return CheckData(data_dir, result.train_csv, result.val_csv, result.train_windows)
