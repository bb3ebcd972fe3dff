"""A scripted expert for `FractalSimEnv`, and the no-op baseline; both are `obs -> RLDS action` callables.

The expert reads the environment's state (it is privileged: positions, what the gripper holds) and
follows a per-family plan of phases, each moving the tool at constant speed toward a goal point or
holding still for a few steps with a gripper command and a rotation:

    pick              reach target, close (2 steps), lift 0.5
    pick_from_drawer  reach target in the drawer, close, lift 0.3, carry over the counter, lower, open
    move_near         reach target, close, lift 0.2, carry beside the other object, lower, open
    open/close_drawer reach the handle, close, pull/push the handle to the open/closed position, open
    place_upright     reach target, close, lift 0.3, turn 4 x 0.4 rad of pitch, lower, open
    knock_over        reach a point beside the target, push through it with a roll

A grasp that closed on the wrong thing restarts the plan, and so does a plan that ends without
success (at most `MAX_RESTARTS` times). Once the task succeeds or the plan is given up, the expert
stops: zero motion and `terminate_episode` [1, 0, 0]; every other action has [0, 1, 0]. With
`noise_std` > 0 the commanded `world_vector` gets N(0, noise_std) noise from the expert's own rng, as
the bundled dataset's actions did before DART-style recording (`rt1.sim.record`).

Control law (`control`): "axis" (the default) moves each axis toward the goal at up to full speed,
`world_vector = clip(delta / STEP_SIZE, -1, 1)`, so during an approach every component is -1, 0 or +1
until the last step lands on the goal: actions a 256-bin tokenizer learns as a few classes. "line"
is the earlier law: constant speed 1 along the straight line, components like 0.37 or -0.81.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rt1.sim.env import FractalSimEnv
from rt1.sim.scene import COUNTER, DRAWER_FAMILIES, STEP_SIZE, drawer_handle

Goal = Callable[[FractalSimEnv, np.ndarray], np.ndarray]  # (env, tool position at phase start) -> (3,) point
MAX_RESTARTS = 2
CONTROL_LAWS = ("axis", "line")
TERMINATE = np.array([1, 0, 0], np.int32)
CONTINUE = np.array([0, 1, 0], np.int32)


def make_action(
    world_vector=(0.0, 0.0, 0.0),
    rotation_delta=(0.0, 0.0, 0.0),
    gripper: float = -1.0,
    terminate: bool = False,
) -> dict[str, np.ndarray]:
    """An RLDS action dict: float32 world_vector (3,), rotation_delta (3,), gripper_closedness_action (1,),
    zero base motion (2,) and (1,), and int32 one-hot terminate_episode (3,)."""
    return {
        "world_vector": np.asarray(world_vector, np.float32),
        "rotation_delta": np.asarray(rotation_delta, np.float32),
        "gripper_closedness_action": np.array([gripper], np.float32),
        "base_displacement_vector": np.zeros(2, np.float32),
        "base_displacement_vertical_rotation": np.zeros(1, np.float32),
        "terminate_episode": (TERMINATE if terminate else CONTINUE).copy(),
    }


def noop_policy(obs: dict) -> dict[str, np.ndarray]:
    """The no-op baseline: no motion, gripper open, never terminates."""
    return make_action()


@dataclass(frozen=True)
class Phase:
    """Move toward `goal` (None: stay for `steps` steps) with a gripper command and a per-step rotation."""

    goal: Goal | None
    gripper: float  # +1 close, -1 open
    steps: int = 0  # length of a stay phase
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    grasp: bool = False  # after this phase the gripper must hold the task's object (or drawer)


def _target(env: FractalSimEnv, anchor: np.ndarray) -> np.ndarray:
    return env.target_object().position.copy()


def _offset(dz: float) -> Goal:
    return lambda env, anchor: anchor + np.array([0.0, 0.0, dz])


def _fixed(point: np.ndarray) -> Goal:
    return lambda env, anchor: point.copy()


def _beside_other(dz: float) -> Goal:
    def goal(env: FractalSimEnv, anchor: np.ndarray) -> np.ndarray:
        other = env.scene.objects[env.task.other].position
        # Beside the other object, on the side toward the middle of the table.
        return other + np.array([0.0, -0.16 if other[1] > 0.5 else 0.16, dz])

    return goal


def _knock_point(sign: float) -> Goal:
    def goal(env: FractalSimEnv, anchor: np.ndarray) -> np.ndarray:
        target = env.target_object().position
        side = -1.0 if target[1] > 0.5 else 1.0  # push toward the middle of the table
        return target + np.array([0.0, 0.12 * side * sign, 0.0])

    return goal


def plan(env: FractalSimEnv) -> list[Phase]:
    """The phases that solve the env's current task."""
    family, drawer = env.task.family, env.task.drawer
    reach, grasp, release = Phase(_target, -1), Phase(None, 1, steps=2, grasp=True), Phase(None, -1, steps=2)
    if family == "pick":
        return [reach, grasp, Phase(_offset(0.5), 1)]
    if family == "pick_from_drawer":
        return [
            reach,
            grasp,
            Phase(_offset(0.3), 1),
            Phase(_fixed(COUNTER + np.array([0.0, 0.0, 0.3])), 1),
            Phase(_fixed(COUNTER), 1),
            release,
        ]
    if family == "move_near":
        return [
            reach,
            grasp,
            Phase(_offset(0.2), 1),
            Phase(_beside_other(0.2), 1),
            Phase(_beside_other(0.0), 1),
            release,
        ]
    if family in DRAWER_FAMILIES:
        end = 1.0 if family == "open_drawer" else 0.0
        handle = lambda env, anchor: drawer_handle(drawer, env.scene.drawer_open[drawer])  # noqa: E731
        return [Phase(handle, -1), grasp, Phase(_fixed(drawer_handle(drawer, end)), 1), release]
    if family == "place_upright":
        start = env.target_object().position.copy()
        return [
            reach,
            grasp,
            Phase(_offset(0.3), 1),
            Phase(None, 1, steps=4, rotation=(0.0, 0.4, 0.0)),
            Phase(_fixed(start), 1),
            release,
        ]
    if family == "knock_over":
        side = -1.0 if env.target_object().position[1] > 0.5 else 1.0
        return [Phase(_knock_point(-1.0), -1), Phase(_knock_point(1.0), -1, rotation=(0.3 * side, 0.0, 0.0))]
    raise ValueError(f"unknown task family {family!r}")


class ScriptedExpert:
    """Solves the task of `env` from its state; call `reset()` after every `env.reset()`.

    `expert(obs)` returns the next RLDS action dict.
    """

    def __init__(
        self, env: FractalSimEnv, noise_std: float = 0.03, seed: int | None = None, control: str = "axis"
    ) -> None:
        if control not in CONTROL_LAWS:
            raise ValueError(f"control must be one of {CONTROL_LAWS}, got {control!r}")
        self.env = env
        self.control = control
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)
        self._phases: list[Phase] = []
        self._index = self._phase_step = self._restarts = 0
        self._anchor = np.zeros(3)
        self._check_grasp = self._given_up = False

    def reset(self, seed: int | None = None) -> None:
        """Plan for the env's new episode; `seed` reseeds the action noise."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._phases = plan(self.env)
        self._index = self._phase_step = self._restarts = 0
        self._check_grasp = self._given_up = False

    @property
    def done(self) -> bool:
        """True once the expert only terminates (task solved, or plan given up)."""
        return self.env.success or self._given_up

    def stop_action(self) -> dict[str, np.ndarray]:
        """Zero motion, keep the gripper as it is, terminate [1, 0, 0]."""
        gripper = 1.0 if self.env.scene.gripper_closed else -1.0
        return make_action(gripper=gripper, terminate=True)

    def __call__(self, obs: dict) -> dict[str, np.ndarray]:
        if not self._phases:
            raise RuntimeError("call expert.reset() after env.reset()")
        env = self.env
        if self._check_grasp:
            self._check_grasp = False
            if not self._holds_task_thing():
                self._restart()
        if self._index >= len(self._phases) and not env.success:
            self._restart()
        if self.done:
            return self.stop_action()
        phase = self._phases[self._index]
        if self._phase_step == 0:
            self._anchor = env.scene.gripper.copy()
        if phase.goal is not None:
            delta = phase.goal(env, self._anchor) - env.scene.gripper
            if self.control == "axis":
                # Each axis at up to full speed toward the goal; the last step lands on it.
                world_vector = np.clip(delta / STEP_SIZE, -1.0, 1.0)
                finished = float(np.abs(delta).max()) <= STEP_SIZE
            else:
                distance = float(np.linalg.norm(delta))
                # Constant speed along the straight line to the goal; the last step lands on it.
                world_vector = delta / max(distance, STEP_SIZE)
                finished = distance <= STEP_SIZE
        else:
            world_vector = np.zeros(3)
            finished = self._phase_step + 1 >= phase.steps
        if self.noise_std > 0:
            world_vector = np.clip(world_vector + self.rng.normal(0.0, self.noise_std, size=3), -1.0, 1.0)
        rotation = np.asarray(phase.rotation, np.float64)
        self._phase_step += 1
        if finished:
            self._check_grasp = phase.grasp
            self._index, self._phase_step = self._index + 1, 0
        return make_action(world_vector, rotation, phase.gripper)

    # ------------------------------------------------------------------------------------------

    def _holds_task_thing(self) -> bool:
        scene, task = self.env.scene, self.env.task
        if task.family in DRAWER_FAMILIES:
            return scene.held_drawer == task.drawer
        return scene.held is self.env.target_object()

    def _restart(self) -> None:
        if self._restarts >= MAX_RESTARTS:
            self._given_up = True
            return
        self._restarts += 1
        self._phases = plan(self.env)
        self._index = self._phase_step = 0
