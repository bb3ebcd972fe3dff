"""A small, learnable dataset in exactly the on-disk format of `fractal20220817_data` 0.1.0.

    python -m rt1.data.mini_fractal --out DIR --episodes N [--seed S] [--overwrite]

writes `DIR/fractal20220817_data/0.1.0/` (dataset_info.json, features.json, TFRecord shards of the
`train` split) with the real dataset's feature spec (`rt1.data.rlds_spec`), so that
`tfds.builder_from_directory(DIR/fractal20220817_data/0.1.0)` reads it as it reads the real one.

The scenes are drawn so that a policy can learn them: a table, a cabinet with three drawers and
two or three coloured objects (each object name has its own colour and shape); a gripper seen from
above moves by `world_vector` toward the object the instruction names, closes on it
(`gripper_closedness_action` +1), and carries out the task (lift, carry, pull a drawer, rotate,
push). Every action follows from what the image shows and what the instruction asks.
`terminate_episode` is [0,1,0] on every step and [1,0,0] on the last. Instructions use real fractal
phrasings, and each has a deterministic unit-norm 512-d embedding (a normalised sum of per-word
random vectors, so instructions that share words have related embeddings). Some episodes are cut
short (fewer than 6 steps), as aborted real episodes are. Output is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rt1.data.rlds_spec import (
    ACTION_SPEC, ASPECT_KEYS, ATTRIBUTE_KEYS, DATASET_NAME, DATASET_VERSION, EMBEDDING_DIM, IMAGE_SHAPE,
    OBSERVATION_VECTORS,
)

# name -> (RGB colour, shape); names are real fractal objects.
OBJECTS: dict[str, tuple[tuple[int, int, int], str]] = {
    "coke can": ((200, 20, 30), "disc"),
    "pepsi can": ((20, 40, 160), "disc"),
    "7up can": ((30, 170, 60), "disc"),
    "blue chip bag": ((40, 110, 230), "box"),
    "brown chip bag": ((120, 70, 30), "box"),
    "green jalapeno chip bag": ((90, 200, 40), "box"),
    "orange": ((250, 140, 0), "disc"),
    "apple": ((230, 60, 90), "disc"),
    "sponge": ((240, 220, 40), "box"),
    "water bottle": ((170, 220, 250), "bar"),
    "blue plastic bottle": ((0, 60, 220), "bar"),
    "redbull can": ((150, 150, 170), "disc"),
}
UPRIGHT_OBJECTS = ("coke can", "pepsi can", "7up can", "redbull can", "water bottle", "blue plastic bottle")
DRAWERS = ("top", "middle", "bottom")
TASK_FAMILIES = ("pick", "pick_from_drawer", "move_near", "open_drawer", "close_drawer", "place_upright", "knock_over")

STEP_SIZE = 0.06  # workspace units moved per step at |world_vector| = 1
MAX_STEPS = 60
TRUNCATE_PROBABILITY = 0.08  # fraction of episodes cut to 2..5 steps
TABLE_ROWS, TABLE_COLS = (30, 230), (30, 230)  # image region of workspace x and y in [0, 1]
CABINET_COL = 250  # the cabinet occupies columns 250..320
DRAWER_ROWS = {"top": 40, "middle": 110, "bottom": 180}
COUNTER = np.array([0.15, 0.2, 0.0])


# ----------------------------------------------------------------------------------------------
# Instructions and embeddings


def instruction_embedding(instruction: str) -> np.ndarray:
    """Deterministic unit-norm float32 (512,) embedding: normalised sum of per-word random vectors."""
    total = np.zeros(EMBEDDING_DIM, np.float64)
    for word in instruction.split():
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        total += np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    return (total / np.linalg.norm(total)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Scene state and rendering


@dataclass
class SceneObject:
    name: str
    position: np.ndarray  # workspace (x, y, z)
    upright: bool = True
    in_drawer: str | None = None


@dataclass
class Scene:
    gripper: np.ndarray  # (x, y, z)
    objects: list[SceneObject]
    drawer_open: dict[str, float] = field(default_factory=lambda: {d: 0.0 for d in DRAWERS})
    gripper_closed: bool = False
    held: SceneObject | None = None
    held_drawer: str | None = None
    orientation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # roll, pitch, yaw
    tint: np.ndarray = field(default_factory=lambda: np.zeros(3))
    texture_seed: int = 0


def _to_pixel(position: np.ndarray) -> tuple[float, float]:
    row = TABLE_ROWS[0] + position[0] * (TABLE_ROWS[1] - TABLE_ROWS[0])
    col = TABLE_COLS[0] + position[1] * (TABLE_COLS[1] - TABLE_COLS[0])
    return row, col


def _fill(image, rr, cc, mask, color):
    image[rr[mask], cc[mask]] = color


def _draw_shape(image, row, col, color, shape, size, upright):
    h, w = image.shape[:2]
    r0, r1 = int(max(0, row - size * 1.6)), int(min(h, row + size * 1.6 + 1))
    c0, c1 = int(max(0, col - size * 1.6)), int(min(w, col + size * 1.6 + 1))
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    dr, dc = rr - row, cc - col
    if shape == "disc":
        ry, rx = (size, size) if upright else (size * 0.6, size * 1.5)
        mask = (dr / ry) ** 2 + (dc / rx) ** 2 <= 1
    elif shape == "box":
        mask = (np.abs(dr) <= size * 0.8) & (np.abs(dc) <= size * 1.1)
    else:  # bar: a bottle, tall when upright, lying otherwise
        ry, rx = (size * 1.5, size * 0.55) if upright else (size * 0.55, size * 1.5)
        mask = (np.abs(dr) <= ry) & (np.abs(dc) <= rx)
    image[r0:r1, c0:c1][mask] = color


def render(scene: Scene) -> np.ndarray:
    """The camera image (256, 320, 3) uint8 of a scene."""
    h, w, _ = IMAGE_SHAPE
    texture = np.random.default_rng(scene.texture_seed).integers(-12, 13, size=(h // 8, w // 8, 1))
    texture = np.kron(texture, np.ones((8, 8, 1)))
    base = np.array([186, 160, 128]) + scene.tint
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    # Cabinet with three drawers; an open drawer slides toward the camera (down the image).
    image[:, CABINET_COL:] = (96, 84, 72)
    for drawer, top in DRAWER_ROWS.items():
        shift = int(scene.drawer_open[drawer] * 60)
        image[top + shift: top + 50 + shift, CABINET_COL + 4: w - 4] = (140, 120, 100)
        image[top + 40 + shift: top + 46 + shift, CABINET_COL + 20: w - 20] = (40, 40, 40)  # handle
    for obj in scene.objects:
        row, col = _to_pixel(obj.position)
        color, shape = OBJECTS[obj.name]
        if obj.position[2] > 0.02:  # shadow under a lifted object
            _draw_shape(image, row, col, (110, 95, 80), shape, 15, obj.upright)
        _draw_shape(image, row - obj.position[2] * 40, col, color, shape, 16 + obj.position[2] * 8, obj.upright)
    # Gripper: two fingers around the tool point, nearer together when closed, larger when higher.
    row, col = _to_pixel(scene.gripper)
    row -= scene.gripper[2] * 40
    size = 12 + scene.gripper[2] * 12
    gap = size * (0.5 if scene.gripper_closed else 1.4)
    for side in (-1, 1):
        c = col + side * gap
        r0, r1 = int(max(0, row - size * 1.5)), int(min(h, row + size * 0.5))
        c0, c1 = int(max(0, c - 4)), int(min(w, c + 4))
        image[r0:r1, c0:c1] = (30, 30, 30)
    r0, r1 = int(max(0, row - size * 1.5 - 6)), int(max(0, row - size * 1.5))
    c0, c1 = int(max(0, col - gap - 4)), int(min(w, col + gap + 4))
    image[r0:r1, c0:c1] = (30, 30, 30)
    return image


# ----------------------------------------------------------------------------------------------
# Task plans: a list of phases, each moving the gripper to a target with a gripper command.


@dataclass
class Phase:
    target: np.ndarray | None  # where the tool goes; None = stay
    gripper: float  # commanded closedness action: +1 close, -1 open
    steps: int = 0  # for fixed-length phases (grasp, release, rotate); 0 = until target reached
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotation_delta per step
    grasp: bool = False  # close on the object (or drawer handle) at the end
    release: bool = False


def _drawer_handle(drawer: str, opened: float) -> np.ndarray:
    row = DRAWER_ROWS[drawer] + 43 + opened * 60
    x = (row - TABLE_ROWS[0]) / (TABLE_ROWS[1] - TABLE_ROWS[0])
    y = ((CABINET_COL + 35) - TABLE_COLS[0]) / (TABLE_COLS[1] - TABLE_COLS[0])
    return np.array([x, y, 0.0])


def _plan(family: str, scene: Scene, target: SceneObject | None, other: SceneObject | None, drawer: str):
    up = np.array([0.0, 0.0, 0.5])
    if family == "pick":
        return [Phase(target.position.copy(), -1), Phase(None, 1, steps=2, grasp=True),
                Phase(target.position + up, 1)]
    if family == "pick_from_drawer":
        return [Phase(target.position.copy(), -1), Phase(None, 1, steps=2, grasp=True),
                Phase(target.position + np.array([0, 0, 0.3]), 1), Phase(COUNTER + np.array([0, 0, 0.3]), 1),
                Phase(COUNTER.copy(), 1), Phase(None, -1, steps=2, release=True)]
    if family == "move_near":
        near = other.position + np.array([0.0, -0.16 if other.position[1] > 0.5 else 0.16, 0.0])
        return [Phase(target.position.copy(), -1), Phase(None, 1, steps=2, grasp=True),
                Phase(target.position + np.array([0, 0, 0.2]), 1), Phase(near + np.array([0, 0, 0.2]), 1),
                Phase(near, 1), Phase(None, -1, steps=2, release=True)]
    if family in ("open_drawer", "close_drawer"):
        start = scene.drawer_open[drawer]
        end = 1.0 if family == "open_drawer" else 0.0
        return [Phase(_drawer_handle(drawer, start), -1), Phase(None, 1, steps=2, grasp=True),
                Phase(_drawer_handle(drawer, end), 1), Phase(None, -1, steps=2, release=True)]
    if family == "place_upright":
        return [Phase(target.position.copy(), -1), Phase(None, 1, steps=2, grasp=True),
                Phase(target.position + np.array([0, 0, 0.3]), 1),
                Phase(None, 1, steps=4, rotation=(0.0, 0.4, 0.0)),
                Phase(target.position.copy(), 1), Phase(None, -1, steps=2, release=True)]
    if family == "knock_over":
        side = -1.0 if target.position[1] > 0.5 else 1.0
        start = target.position + np.array([0.0, 0.12 * -side, 0.0])
        return [Phase(start, -1), Phase(target.position + np.array([0.0, 0.12 * side, 0.0]), -1,
                                         rotation=(0.3 * side, 0.0, 0.0))]
    raise ValueError(f"unknown task family {family}")


def _instruction(family: str, target: str | None, other: str | None, drawer: str) -> str:
    return {
        "pick": f"pick {target}",
        "pick_from_drawer": f"pick {target} from {drawer} drawer and place on counter",
        "move_near": f"move {target} near {other}",
        "open_drawer": f"open {drawer} drawer",
        "close_drawer": f"close {drawer} drawer",
        "place_upright": f"place {target} upright",
        "knock_over": f"knock {target} over",
    }[family]


# ----------------------------------------------------------------------------------------------
# Episode generation


def _quaternion(rpy: np.ndarray) -> np.ndarray:
    cr, cp, cy = np.cos(rpy / 2)
    sr, sp, sy = np.sin(rpy / 2)
    return np.array([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy])


def _place_objects(rng, names, avoid):
    positions = []
    for _ in names:
        for _attempt in range(100):
            p = np.array([rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.85), 0.0])
            if all(np.linalg.norm(p[:2] - q[:2]) > 0.3 for q in positions + avoid):
                break
        positions.append(p)
    return positions


def make_episode(index: int, seed: int) -> dict:
    """Episode `index` of the dataset for `seed`, as a TFDS example dict (RLDS layout)."""
    rng = np.random.default_rng([seed, index])
    family = TASK_FAMILIES[rng.integers(len(TASK_FAMILIES))]
    names = list(rng.choice(list(OBJECTS), size=3, replace=False))
    if family in ("place_upright", "knock_over"):
        names[0] = UPRIGHT_OBJECTS[rng.integers(len(UPRIGHT_OBJECTS))]
        names[1:] = [n for n in names[1:] if n != names[0]] or [n for n in OBJECTS if n != names[0]][:1]
    drawer = DRAWERS[rng.integers(len(DRAWERS))]
    gripper = np.array([rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.3, 0.6)])
    n_objects = 2 if family in ("open_drawer", "close_drawer") else rng.integers(2, 4)
    positions = _place_objects(rng, names[:n_objects], avoid=[])
    objects = [SceneObject(n, p) for n, p in zip(names[:n_objects], positions)]
    scene = Scene(gripper=gripper, objects=objects, tint=rng.integers(-15, 16, size=3),
                  texture_seed=int(rng.integers(2**31)))
    if family == "close_drawer":
        scene.drawer_open[drawer] = 1.0
    target = objects[0] if family not in ("open_drawer", "close_drawer") else None
    if family == "pick_from_drawer":
        scene.drawer_open[drawer] = 1.0
        target.in_drawer = drawer
        target.position = _drawer_handle(drawer, 1.0) - np.array([0.12, 0.0, 0.0])
    if family == "place_upright":
        target.upright = False
    other = objects[1] if family == "move_near" else None
    instruction = _instruction(family, target.name if target else None, other.name if other else None, drawer)
    embedding = instruction_embedding(instruction)
    phases = _plan(family, scene, target, other, drawer)

    steps = []
    phase_index, phase_step = 0, 0
    while phase_index < len(phases) and len(steps) < MAX_STEPS - 1:
        phase = phases[phase_index]
        if phase.target is not None:
            # Constant speed along the straight line to the target: the direction is the action.
            delta = phase.target - scene.gripper
            world_vector = delta / max(np.linalg.norm(delta), STEP_SIZE)
            done = np.linalg.norm(delta) <= STEP_SIZE
        else:
            world_vector = np.zeros(3)
            done = phase_step + 1 >= phase.steps
        world_vector = np.clip(world_vector + rng.normal(0, 0.03, size=3), -1, 1)
        steps.append(_step(scene, world_vector, phase, instruction, embedding))
        _advance(scene, world_vector, phase)
        phase_step += 1
        if done:
            if phase.grasp:
                scene.gripper_closed = True
                if family in ("open_drawer", "close_drawer"):
                    scene.held_drawer = drawer
                else:
                    scene.held = target
            if phase.release:
                scene.gripper_closed, scene.held, scene.held_drawer = False, None, None
            phase_index, phase_step = phase_index + 1, 0
    # Final step: stop and terminate.
    steps.append(_step(scene, np.zeros(3), Phase(None, 1.0 if scene.gripper_closed else -1.0), instruction, embedding))
    truncated = rng.random() < TRUNCATE_PROBABILITY
    if truncated:
        steps = steps[: rng.integers(2, 6)]
    for i, step in enumerate(steps):
        step["is_first"] = i == 0
        step["is_last"] = step["is_terminal"] = i == len(steps) - 1
        step["reward"] = np.float32(1.0 if (i == len(steps) - 1 and not truncated) else 0.0)
        step["action"]["terminate_episode"] = np.array([1, 0, 0] if i == len(steps) - 1 else [0, 1, 0], np.int32)
    family_id = TASK_FAMILIES.index(family)
    return {
        "aspects": {"already_success": False, "feasible": True, "has_aspects": True, "success": not truncated,
                    "undesirable": False},
        "attributes": {
            "collection_mode": 1, "collection_mode_name": "teleop",
            "data_type": 0, "data_type_name": "synthetic",
            "env": 0, "env_name": "mini_fractal",
            "location": 0, "location_name": "simulated table",
            "objects_family": 0, "objects_family_name": "fractal objects",
            "task_family": family_id, "task_family_name": family,
        },
        "steps": steps,
    }


def _step(scene: Scene, world_vector, phase: Phase, instruction: str, embedding: np.ndarray) -> dict:
    rotation = np.asarray(phase.rotation, np.float32)
    target = phase.target if phase.target is not None else scene.gripper
    observation = {
        "image": render(scene),
        "natural_language_instruction": instruction,
        "natural_language_embedding": embedding,
        "base_pose_tool_reached": np.concatenate([scene.gripper, _quaternion(scene.orientation)]).astype(np.float32),
        "gripper_closed": np.array([float(scene.gripper_closed)], np.float32),
        "gripper_closedness_commanded": np.array([phase.gripper], np.float32),
        "height_to_bottom": np.array([scene.gripper[2]], np.float32),
        "orientation_box": np.array([[-1, -1, -1], [1, 1, 1]], np.float32),
        "orientation_start": _quaternion(np.zeros(3)).astype(np.float32),
        "robot_orientation_positions_box": np.eye(3, dtype=np.float32),
        "rotation_delta_to_go": (rotation * max(phase.steps, 1)).astype(np.float32),
        "src_rotation": _quaternion(scene.orientation).astype(np.float32),
        "vector_to_go": (target - scene.gripper).astype(np.float32),
        "workspace_bounds": np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.float32),
    }
    action = {
        "world_vector": np.asarray(world_vector, np.float32),
        "rotation_delta": rotation,
        "gripper_closedness_action": np.array([phase.gripper], np.float32),
        "base_displacement_vector": np.zeros(2, np.float32),
        "base_displacement_vertical_rotation": np.zeros(1, np.float32),
    }
    assert set(observation) == set(OBSERVATION_VECTORS) | {"image", "natural_language_instruction",
                                                           "natural_language_embedding"}
    assert set(action) | {"terminate_episode"} == set(ACTION_SPEC)
    return {"observation": observation, "action": action}


def _advance(scene: Scene, world_vector: np.ndarray, phase: Phase) -> None:
    move = world_vector * STEP_SIZE
    scene.gripper = np.clip(scene.gripper + move, [0.0, 0.0, 0.0], [1.4, 1.4, 1.0])
    scene.orientation = scene.orientation + np.asarray(phase.rotation)
    if scene.held is not None:
        scene.held.position = scene.gripper.copy()
        if phase.rotation[1] != 0:
            scene.held.upright = True
    if scene.held_drawer is not None:
        scene.drawer_open[scene.held_drawer] = float(np.clip(scene.drawer_open[scene.held_drawer] + move[0] / 0.3, 0, 1))
    if phase.rotation[0] != 0:  # knocking over: the object falls once the gripper reaches it
        for obj in scene.objects:
            if np.linalg.norm(obj.position[:2] - scene.gripper[:2]) < 0.08:
                obj.upright = False


# ----------------------------------------------------------------------------------------------
# Writing the TFDS dataset directory


def _builder_class():
    import tensorflow_datasets as tfds

    from rt1.data.rlds_spec import tfds_features

    class MiniFractal(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = DATASET_NAME
        VERSION = tfds.core.Version(DATASET_VERSION)

        def __init__(self, *, episodes: int, seed: int, **kwargs):
            self._episodes, self._seed = episodes, seed
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Synthetic table-top episodes in the format of fractal20220817_data (rt1.data.mini_fractal).",
                features=tfds_features(),
                disable_shuffling=True,  # write in generation order: episode i of the split is make_episode(i, seed)
                homepage="https://ai.googleblog.com/2022/12/rt-1-robotics-transformer-for-real.html",
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(self._episodes):
                yield i, make_episode(i, self._seed)

    return MiniFractal


EPISODES_PER_SHARD = 50  # the real dataset has ~85 per shard; above 16, TFDS's default interleave reorders


def default_shards(episodes: int) -> int:
    """About EPISODES_PER_SHARD episodes per shard; TFDS splits unevenly when the count does not divide."""
    return max(1, round(episodes / EPISODES_PER_SHARD))


def _read_like_the_real_dataset(version_dir: Path) -> None:
    """Drop the 'ordered dataset' flag from dataset_info.json once the records are written in order.

    The real dataset does not carry it, so TFDS reads it with its default shard interleave (cycle 16,
    block 16); with the flag TFDS would read this one in order and hide that difference from tests.
    """
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info.pop("disableShuffling", None)
    info_path.write_text(json.dumps(info, indent=2))


def write_dataset(out: Path, episodes: int, seed: int = 0, overwrite: bool = False, shards: int | None = None) -> Path:
    """Write the dataset under `out`; returns the version directory to pass to builder_from_directory."""
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
    import tensorflow_datasets as tfds

    out.mkdir(parents=True, exist_ok=True)
    shards = shards or default_shards(episodes)
    with tempfile.TemporaryDirectory(dir=out, prefix=".mini_fractal-") as tmp:
        builder = _builder_class()(episodes=episodes, seed=seed, data_dir=tmp)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            num_shards=shards, try_download_gcs=False))
        _read_like_the_real_dataset(Path(tmp) / DATASET_NAME / DATASET_VERSION)
        final = out / DATASET_NAME
        if final.exists():
            shutil.rmtree(final)
        (Path(tmp) / DATASET_NAME).rename(final)
    return out / DATASET_NAME / DATASET_VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.data.mini_fractal",
        description="Write a small learnable dataset in the exact TFDS/RLDS format of fractal20220817_data 0.1.0.")
    parser.add_argument("--out", type=Path, required=True, help="directory to create; the dataset goes to OUT/fractal20220817_data/0.1.0")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset (default 0)")
    parser.add_argument("--shards", type=int, default=None, help=f"TFRecord shards (default: about {EPISODES_PER_SHARD} episodes per shard)")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    args = parser.parse_args(argv)
    try:
        path = write_dataset(args.out, args.episodes, args.seed, args.overwrite, args.shards)
    except (ValueError, FileExistsError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.episodes} episodes to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
