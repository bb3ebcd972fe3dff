"""The table-top world of the simulator: objects, drawers, a gripper, its camera image and its tasks.

Coordinates are workspace units: x grows down the image (toward the camera), y grows to the right,
z is height above the table. The table spans x, y in [0, 1]; the cabinet with three drawers stands
to the right of it (its handles are at y ~ 1.275); the counter is a spot on the table at `COUNTER`.

`sample_scene(rng, family)` draws a scene and its task with the distribution of the bundled dataset
(7 task families, 2-3 objects of which the extra ones are distractors, one named drawer), and
`render(scene)` draws the camera image (256, 320, 3) uint8. Everything here is numpy only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from rt1.errors import RT1Error
from rt1.rlds_spec import EMBEDDING_DIM, IMAGE_SHAPE

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
TASK_FAMILIES = (
    "pick",
    "pick_from_drawer",
    "move_near",
    "open_drawer",
    "close_drawer",
    "place_upright",
    "knock_over",
)
DRAWER_FAMILIES = ("open_drawer", "close_drawer")

STEP_SIZE = 0.06  # workspace units moved per step at |world_vector| = 1
WORKSPACE_LOW = np.array([0.0, 0.0, 0.0])
WORKSPACE_HIGH = np.array([1.4, 1.4, 1.0])  # reaches past the table to the cabinet's handles
DRAWER_TRAVEL = 0.3  # workspace x a drawer slides from closed (0) to open (1)
TABLE_ROWS, TABLE_COLS = (30, 230), (30, 230)  # image region of workspace x and y in [0, 1]
CABINET_COL = 250  # the cabinet occupies columns 250..320
DRAWER_ROWS = {"top": 40, "middle": 110, "bottom": 180}
COUNTER = np.array([0.15, 0.2, 0.0])


class SimError(RT1Error, ValueError):
    """A bad action, reset option or env argument; the message names the key or value (one line)."""


# ----------------------------------------------------------------------------------------------
# Instructions and embeddings


def instruction_text(family: str, target: str | None, other: str | None, drawer: str) -> str:
    """The instruction of a task, in real fractal phrasing."""
    return {
        "pick": f"pick {target}",
        "pick_from_drawer": f"pick {target} from {drawer} drawer and place on counter",
        "move_near": f"move {target} near {other}",
        "open_drawer": f"open {drawer} drawer",
        "close_drawer": f"close {drawer} drawer",
        "place_upright": f"place {target} upright",
        "knock_over": f"knock {target} over",
    }[family]


def instruction_embedding(instruction: str) -> np.ndarray:
    """Deterministic unit-norm float32 (512,) embedding: normalised sum of per-word and per-bigram random vectors.

    The bigrams make it order-sensitive: with words alone, "move coke can near pepsi can" and "move pepsi can
    near coke can" had the same embedding (cosine 1.0), so no policy could tell which object to move.
    """
    words = instruction.split()
    total = np.zeros(EMBEDDING_DIM, np.float64)
    for term in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
        seed = int.from_bytes(hashlib.sha256(term.encode()).digest()[:8], "little")
        total += np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    return (total / np.linalg.norm(total)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Scene state


@dataclass
class SceneObject:
    """One object; `position` is the workspace (x, y, z) of its centre, float (3,)."""

    name: str
    position: np.ndarray
    upright: bool = True
    in_drawer: str | None = None


@dataclass
class Scene:
    """The world state: gripper pose and opening, objects, drawer openings, and render-only looks."""

    gripper: np.ndarray  # (3,) tool point (x, y, z)
    objects: list[SceneObject]
    drawer_open: dict[str, float] = field(
        default_factory=lambda: {d: 0.0 for d in DRAWERS}
    )  # 0 closed .. 1 open
    gripper_closed: bool = False
    held: SceneObject | None = None
    held_drawer: str | None = None
    orientation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) roll, pitch, yaw
    tint: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) table colour offset
    texture_seed: int = 0


@dataclass(frozen=True)
class Task:
    """What the instruction asks: `target` / `other` index `Scene.objects` (None when not used)."""

    family: str
    drawer: str
    target: int | None
    other: int | None
    instruction: str


def drawer_handle(drawer: str, opened: float) -> np.ndarray:
    """Workspace (3,) position of a drawer's handle when the drawer is `opened` (0..1) open."""
    row = DRAWER_ROWS[drawer] + 43 + opened * 60
    x = (row - TABLE_ROWS[0]) / (TABLE_ROWS[1] - TABLE_ROWS[0])
    y = ((CABINET_COL + 35) - TABLE_COLS[0]) / (TABLE_COLS[1] - TABLE_COLS[0])
    return np.array([x, y, 0.0])


def quaternion(rpy: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w) of roll-pitch-yaw angles (3,)."""
    cr, cp, cy = np.cos(rpy / 2)
    sr, sp, sy = np.sin(rpy / 2)
    return np.array(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
    )


def _place_objects(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """`count` table positions (3,), at least 0.3 apart when 100 tries allow it."""
    positions: list[np.ndarray] = []
    for _ in range(count):
        for _attempt in range(100):
            p = np.array([rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.85), 0.0])
            if all(np.linalg.norm(p[:2] - q[:2]) > 0.3 for q in positions):
                break
        positions.append(p)
    return positions


def sample_scene(rng: np.random.Generator, family: str | None = None) -> tuple[Scene, Task]:
    """A scene and its task, drawn as the bundled dataset draws them.

    `family=None` draws the family too. The family draw is always made, so for a given rng state the
    rest of the scene does not depend on whether the family was forced.
    """
    drawn = TASK_FAMILIES[rng.integers(len(TASK_FAMILIES))]
    family = drawn if family is None else family
    if family not in TASK_FAMILIES:
        raise SimError(f"unknown task family {family!r}; expected one of {TASK_FAMILIES}")
    names = list(rng.choice(list(OBJECTS), size=3, replace=False))
    if family in ("place_upright", "knock_over"):
        names[0] = UPRIGHT_OBJECTS[rng.integers(len(UPRIGHT_OBJECTS))]
        names[1:] = [n for n in names[1:] if n != names[0]] or [n for n in OBJECTS if n != names[0]][:1]
    drawer = DRAWERS[rng.integers(len(DRAWERS))]
    gripper = np.array([rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.3, 0.6)])
    n_objects = 2 if family in DRAWER_FAMILIES else int(rng.integers(2, 4))
    positions = _place_objects(rng, n_objects)
    objects = [SceneObject(str(n), p) for n, p in zip(names[:n_objects], positions)]
    scene = Scene(
        gripper=gripper,
        objects=objects,
        tint=rng.integers(-15, 16, size=3),
        texture_seed=int(rng.integers(2**31)),
    )
    target = None if family in DRAWER_FAMILIES else 0
    other = 1 if family == "move_near" else None
    if family == "close_drawer":
        scene.drawer_open[drawer] = 1.0
    if family == "pick_from_drawer":
        scene.drawer_open[drawer] = 1.0
        objects[0].in_drawer = drawer
        objects[0].position = drawer_handle(drawer, 1.0) - np.array([0.12, 0.0, 0.0])
    if family == "place_upright":
        objects[0].upright = False
    instruction = instruction_text(
        family,
        objects[0].name if target is not None else None,
        objects[1].name if other is not None else None,
        drawer,
    )
    return scene, Task(family, drawer, target, other, instruction)


# ----------------------------------------------------------------------------------------------
# Rendering


def _to_pixel(position: np.ndarray) -> tuple[float, float]:
    row = TABLE_ROWS[0] + position[0] * (TABLE_ROWS[1] - TABLE_ROWS[0])
    col = TABLE_COLS[0] + position[1] * (TABLE_COLS[1] - TABLE_COLS[0])
    return row, col


def _draw_shape(
    image: np.ndarray, row: float, col: float, color, shape: str, size: float, upright: bool
) -> None:
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
    """The camera image (256, 320, 3) uint8 of a scene, seen from above."""
    h, w, _ = IMAGE_SHAPE
    texture = np.random.default_rng(scene.texture_seed).integers(-12, 13, size=(h // 8, w // 8, 1))
    texture = np.kron(texture, np.ones((8, 8, 1)))
    base = np.array([186, 160, 128]) + scene.tint
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    # Cabinet with three drawers; an open drawer slides toward the camera (down the image).
    image[:, CABINET_COL:] = (96, 84, 72)
    for drawer, top in DRAWER_ROWS.items():
        shift = int(scene.drawer_open[drawer] * 60)
        image[top + shift : top + 50 + shift, CABINET_COL + 4 : w - 4] = (140, 120, 100)
        image[top + 40 + shift : top + 46 + shift, CABINET_COL + 20 : w - 20] = (40, 40, 40)  # handle
    for obj in scene.objects:
        row, col = _to_pixel(obj.position)
        color, shape = OBJECTS[obj.name]
        if obj.position[2] > 0.02:  # shadow under a lifted object
            _draw_shape(image, row, col, (110, 95, 80), shape, 15, obj.upright)
        _draw_shape(
            image, row - obj.position[2] * 40, col, color, shape, 16 + obj.position[2] * 8, obj.upright
        )
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
