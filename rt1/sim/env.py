"""`FractalSimEnv`: the bundled table-top scene as a gymnasium environment with RLDS observations/actions.

    env = FractalSimEnv()
    obs, info = env.reset(seed=3, options={"task_family": "open_drawer"})
    obs, reward, terminated, truncated, info = env.step(action)   # action: an RLDS action dict

Observations are in the RLDS observation layout of `fractal20220817_data` (`rt1.rlds_spec`):
`image` uint8 (256, 320, 3), `natural_language_instruction` str, `natural_language_embedding`
float32 (512,) and the float32 state vectors of `OBSERVATION_VECTORS`. Actions are RLDS action dicts
(`ACTION_SPEC` keys and shapes). A policy is any callable `obs -> action dict`.

World rules (one step):
  1. `gripper_closedness_action` < 0 opens the gripper and releases what it holds: a released object
     falls to the table (the counter is a spot on the table, so "on the counter" = over it).
  2. The gripper moves by `world_vector * STEP_SIZE` (clipped to the workspace) and turns by
     `rotation_delta`. A held object moves with it; a held lying object turned by `UPRIGHT_PITCH` of
     pitch in total becomes upright. A held drawer handle slides the drawer along its axis (x) and
     the gripper stays on the handle. An open gripper moving sideways at object height out of an
     upright object's footprint knocks that object over.
  3. `gripper_closedness_action` > 0 closes an open gripper and grasps the nearest object, else the
     nearest drawer handle, within `GRASP_RADIUS` of the tool point.
  4. The episode terminates on success (reward 1) or when `terminate_episode` has argmax 0
     ([1, 0, 0]); it is truncated after `max_steps` steps.

Operator-side state fields, the same in the env and in the recorded dataset (`rt1.sim.record` stores
the env's observations as they are): `gripper_closedness_commanded` is the last
`gripper_closedness_action` applied (-1, open, after reset); `vector_to_go` and
`rotation_delta_to_go` are zeros (the sim has no operator goal; a policy must not rely on them).
"""

from __future__ import annotations

import math
import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rt1.rlds_spec import ACTION_SPEC, EMBEDDING_DIM, IMAGE_SHAPE, OBSERVATION_VECTORS
from rt1.sim.scene import (
    COUNTER,
    DRAWER_TRAVEL,
    STEP_SIZE,
    TASK_FAMILIES,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    Scene,
    SceneObject,
    SimError,
    Task,
    drawer_handle,
    instruction_embedding,
    quaternion,
    render,
    sample_scene,
)

MAX_EPISODE_STEPS = 80
GRASP_RADIUS = 0.08  # tool point to object centre / handle, workspace units
PICK_HEIGHT = 0.25  # pick: the held target is lifted at least this high
COUNTER_RADIUS = 0.12  # pick_from_drawer: target within this xy distance of COUNTER ...
COUNTER_HEIGHT = 0.05  # ... and at most this high (table height)
NEAR_DISTANCE = 0.22  # move_near: released target within this xy distance of the other object
DRAWER_OPEN_SUCCESS = 0.75  # open_drawer: open fraction above this
DRAWER_CLOSED_SUCCESS = 0.25  # close_drawer: open fraction below this
UPRIGHT_PITCH = 1.2  # radians of pitch that turn a held lying object upright
KNOCK_RADIUS = 0.07  # xy footprint of an object the gripper can knock over
KNOCK_HEIGHT = 0.12  # the gripper knocks objects only below this height
KNOCK_MIN_MOVE = 0.5 * STEP_SIZE  # sideways motion that counts as a push

# Bounds of the continuous action keys: RT-1's tokenizer bounds (rt1.actions); values are clipped to them.
ACTION_BOUNDS: dict[str, tuple[float, float]] = {
    "world_vector": (-1.0, 1.0),
    "rotation_delta": (-math.pi / 2, math.pi / 2),
    "gripper_closedness_action": (-1.0, 1.0),
    "base_displacement_vector": (-1.0, 1.0),
    "base_displacement_vertical_rotation": (-math.pi, math.pi),
}
# Value ranges of the state vectors (workspace coordinates, quaternions, flags), for the Box spaces.
OBSERVATION_BOUNDS: dict[str, tuple[float, float]] = {
    "base_pose_tool_reached": (-1.5, 1.5),  # position in the workspace, then a unit quaternion
    "gripper_closed": (0.0, 1.0),
    "gripper_closedness_commanded": (-1.0, 1.0),
    "height_to_bottom": (0.0, 1.0),
    "orientation_box": (-1.0, 1.0),
    "orientation_start": (-1.0, 1.0),
    "robot_orientation_positions_box": (0.0, 1.0),
    "rotation_delta_to_go": (-2 * math.pi, 2 * math.pi),
    "src_rotation": (-1.0, 1.0),
    "vector_to_go": (-1.5, 1.5),
    "workspace_bounds": (0.0, 1.0),
}
ENV_ID = "rt1/FractalSim-v0"
INSTRUCTION_CHARSET = string.ascii_lowercase + string.digits + " "
INSTRUCTION_MAX_LENGTH = 128


def observation_space() -> spaces.Dict:
    """The RLDS observation layout as a gymnasium Dict space."""
    vectors = {
        key: spaces.Box(*OBSERVATION_BOUNDS[key], spec.shape, np.float32)
        for key, spec in OBSERVATION_VECTORS.items()
    }
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
            "natural_language_embedding": spaces.Box(-1.0, 1.0, (EMBEDDING_DIM,), np.float32),
            "natural_language_instruction": spaces.Text(INSTRUCTION_MAX_LENGTH, charset=INSTRUCTION_CHARSET),
            **vectors,
        }
    )


def action_space() -> spaces.Dict:
    """The RLDS action layout as a gymnasium Dict space (terminate_episode: int32 one-hot (3,))."""
    boxes: dict[str, spaces.Space] = {
        key: spaces.Box(low, high, ACTION_SPEC[key].shape, np.float32)
        for key, (low, high) in ACTION_BOUNDS.items()
    }
    boxes["terminate_episode"] = spaces.Box(0, 1, ACTION_SPEC["terminate_episode"].shape, np.int32)
    return spaces.Dict(boxes)


def register_env() -> str:
    """Register FractalSimEnv with gymnasium (idempotent) and return its id, for `gymnasium.make(id)`."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=FractalSimEnv)
    return ENV_ID


def validate_action(action: Any) -> dict[str, np.ndarray]:
    """The action as float64 arrays keyed like ACTION_SPEC; raises SimError naming the bad key."""
    if not isinstance(action, dict):
        raise SimError(f"action must be a dict with keys {sorted(ACTION_SPEC)}, got {type(action).__name__}")
    missing = sorted(set(ACTION_SPEC) - set(action))
    extra = sorted(set(action) - set(ACTION_SPEC), key=str)
    if missing:
        raise SimError(f"action is missing key(s) {missing}; expected {sorted(ACTION_SPEC)}")
    if extra:
        raise SimError(f"action has unknown key(s) {extra}; expected {sorted(ACTION_SPEC)}")
    out = {}
    for key, spec in ACTION_SPEC.items():
        try:
            value = np.asarray(action[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise SimError(f"action[{key!r}] is not numeric: {action[key]!r}") from None
        if value.shape != spec.shape:
            raise SimError(f"action[{key!r}] has shape {value.shape}, expected {spec.shape}")
        if not np.all(np.isfinite(value)):
            raise SimError(f"action[{key!r}] has non-finite values {value.tolist()}")
        out[key] = value
    return out


class FractalSimEnv(gym.Env):
    """The mini-fractal table-top world: a gripper, 2-3 objects, a 3-drawer cabinet, one instructed task.

    Args:
        max_steps: steps after which the episode is truncated.
        render_images: False leaves `obs["image"]` black (zeros), for fast state-only rollouts.
        render_mode: None or "rgb_array" (`render()` returns the camera image (256, 320, 3) uint8).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self, max_steps: int = MAX_EPISODE_STEPS, render_images: bool = True, render_mode: str | None = None
    ) -> None:
        if max_steps < 1:
            raise SimError(f"max_steps must be at least 1, got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise SimError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_steps = max_steps
        self.render_images = render_images
        self.render_mode = render_mode
        self.observation_space = observation_space()
        self.action_space = action_space()
        self.scene: Scene | None = None
        self.task: Task | None = None
        self.steps = 0
        self.success = False
        self._done = False
        self._embedding = np.zeros(EMBEDDING_DIM, np.float32)
        self._commanded = -1.0  # last gripper_closedness_action; the gripper starts open
        self._pitch_held = 0.0  # pitch turned since the current object was grasped
        self._target_grasped = False  # move_near needs the target moved, not just lying near

    # ------------------------------------------------------------------------------------------
    # gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """New scene; `options={"task_family": F}` forces the family (else it is drawn)."""
        super().reset(seed=seed)
        options = dict(options or {})
        family = options.pop("task_family", None)
        if options:
            raise SimError(f"unknown reset option(s) {sorted(options)}; only 'task_family' is accepted")
        if family is not None and family not in TASK_FAMILIES:
            raise SimError(f"unknown task_family {family!r}; expected one of {TASK_FAMILIES}")
        self.scene, self.task = sample_scene(self.np_random, family)
        self._embedding = instruction_embedding(self.task.instruction)
        self.steps, self.success, self._done = 0, False, False
        self._commanded, self._pitch_held, self._target_grasped = -1.0, 0.0, False
        return self._observation(), self._info()

    def step(self, action: dict) -> tuple[dict, float, bool, bool, dict]:
        """Apply one RLDS action dict; returns (obs, reward, terminated, truncated, info)."""
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over (terminated or truncated); call reset()")
        a = validate_action(action)
        for key, (low, high) in ACTION_BOUNDS.items():
            a[key] = np.clip(a[key], low, high)
        gripper_command = float(a["gripper_closedness_action"][0])
        self._commanded = gripper_command
        if gripper_command < 0:
            self._release()
        self._move(a["world_vector"] * STEP_SIZE, a["rotation_delta"])
        if gripper_command > 0 and not self.scene.gripper_closed:
            self._grasp()
        self.steps += 1
        self.success = self._succeeded()
        stop = int(np.argmax(a["terminate_episode"])) == 0
        terminated = self.success or stop
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        return self._observation(), float(self.success), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        """The camera image (256, 320, 3) uint8 when render_mode is "rgb_array"."""
        if self.render_mode != "rgb_array" or self.scene is None:
            return None
        return render(self.scene)

    # ------------------------------------------------------------------------------------------
    # World rules

    def _release(self) -> None:
        scene = self.scene
        if scene.held is not None:
            scene.held.position[2] = 0.0  # falls to the table (the counter is part of it)
        scene.gripper_closed, scene.held, scene.held_drawer = False, None, None

    def _move(self, move: np.ndarray, rotation: np.ndarray) -> None:
        scene = self.scene
        start = scene.gripper.copy()
        scene.gripper = np.clip(scene.gripper + move, WORKSPACE_LOW, WORKSPACE_HIGH)
        scene.orientation = scene.orientation + rotation
        if scene.held_drawer is not None:
            # Holding a handle, the gripper can only slide the drawer along x.
            drawer = scene.held_drawer
            before = scene.drawer_open[drawer]
            after = float(np.clip(before + (scene.gripper[0] - start[0]) / DRAWER_TRAVEL, 0.0, 1.0))
            scene.drawer_open[drawer] = after
            for obj in scene.objects:
                if obj.in_drawer == drawer:
                    obj.position = obj.position + np.array([(after - before) * DRAWER_TRAVEL, 0.0, 0.0])
            scene.gripper = drawer_handle(drawer, after)
        if scene.held is not None:
            scene.held.position = scene.gripper.copy()
            if not scene.held.upright:
                self._pitch_held += abs(float(rotation[1]))
                if self._pitch_held >= UPRIGHT_PITCH:
                    scene.held.upright = True
        elif not scene.gripper_closed:
            self._knock(start)

    def _knock(self, start: np.ndarray) -> None:
        """An open gripper pushed sideways out of an upright object's footprint, low, tips it over."""
        end = self.scene.gripper
        if max(start[2], end[2]) >= KNOCK_HEIGHT or np.linalg.norm(end[:2] - start[:2]) < KNOCK_MIN_MOVE:
            return
        for obj in self.scene.objects:
            inside = np.linalg.norm(start[:2] - obj.position[:2]) < KNOCK_RADIUS
            if obj.upright and obj.position[2] < KNOCK_HEIGHT and inside:
                obj.upright = False

    def _grasp(self) -> None:
        scene = self.scene
        scene.gripper_closed = True
        tool = scene.gripper
        reach = [(float(np.linalg.norm(o.position - tool)), o) for o in scene.objects]
        reach = [(d, o) for d, o in reach if d <= GRASP_RADIUS]
        if reach:
            obj = min(reach, key=lambda pair: pair[0])[1]
            scene.held, obj.in_drawer = obj, None
            self._pitch_held = 0.0
            if self.task.target is not None and obj is scene.objects[self.task.target]:
                self._target_grasped = True
            return
        handles = [
            (float(np.linalg.norm(drawer_handle(d, f) - tool)), d) for d, f in scene.drawer_open.items()
        ]
        handles = [(dist, d) for dist, d in handles if dist <= GRASP_RADIUS]
        if handles:
            scene.held_drawer = min(handles)[1]

    # ------------------------------------------------------------------------------------------
    # Success, observation, info

    def target_object(self) -> SceneObject | None:
        """The object the instruction names (None for drawer tasks)."""
        return None if self.task.target is None else self.scene.objects[self.task.target]

    def _succeeded(self) -> bool:
        scene, task = self.scene, self.task
        family, target = task.family, self.target_object()
        if family == "pick":
            return scene.held is target and target.position[2] >= PICK_HEIGHT
        if family == "pick_from_drawer":
            return (
                target.in_drawer is None
                and target.position[2] <= COUNTER_HEIGHT
                and float(np.linalg.norm(target.position[:2] - COUNTER[:2])) <= COUNTER_RADIUS
            )
        if family == "move_near":
            other = scene.objects[task.other]
            return (
                self._target_grasped
                and scene.held is not target
                and float(np.linalg.norm(target.position[:2] - other.position[:2])) <= NEAR_DISTANCE
            )
        if family == "open_drawer":
            return scene.drawer_open[task.drawer] > DRAWER_OPEN_SUCCESS
        if family == "close_drawer":
            return scene.drawer_open[task.drawer] < DRAWER_CLOSED_SUCCESS
        if family == "place_upright":
            return target.upright and scene.held is not target and target.position[2] <= COUNTER_HEIGHT
        if family == "knock_over":
            return not target.upright
        raise AssertionError(family)

    def _observation(self) -> dict[str, Any]:
        scene = self.scene
        pose = quaternion(scene.orientation)
        image = render(scene) if self.render_images else np.zeros(IMAGE_SHAPE, np.uint8)
        return {
            "image": image,
            "natural_language_instruction": self.task.instruction,
            "natural_language_embedding": self._embedding.copy(),
            "base_pose_tool_reached": np.concatenate([scene.gripper, pose]).astype(np.float32),
            "gripper_closed": np.array([float(scene.gripper_closed)], np.float32),
            "gripper_closedness_commanded": np.array([self._commanded], np.float32),
            "height_to_bottom": np.array([scene.gripper[2]], np.float32),
            "orientation_box": np.array([[-1, -1, -1], [1, 1, 1]], np.float32),
            "orientation_start": quaternion(np.zeros(3)).astype(np.float32),
            "robot_orientation_positions_box": np.eye(3, dtype=np.float32),
            # No operator goal exists in the sim: zeros, in the env and in the recorded data alike.
            "rotation_delta_to_go": np.zeros(3, np.float32),
            "src_rotation": pose.astype(np.float32),
            "vector_to_go": np.zeros(3, np.float32),
            "workspace_bounds": np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.float32),
        }

    def _info(self) -> dict[str, Any]:
        return {"success": self.success, "task_family": self.task.family, "steps": self.steps}
