"""A scripted pick-and-place expert for LIBERO that reads object poses from the simulator.

It handles the goal predicates of libero_spatial and libero_object, ``(On obj target)`` and
``(In obj target_region)``: reach above the object, descend, close, lift, carry above the target,
lower, open, retreat. Motions are proportional end-effector commands in OSC_POSE delta units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..libero_env import LiberoEnv, quat_to_axis_angle

POSITION_SCALE = 0.05  # metres per unit of the xyz action
ROTATION_SCALE = 0.5  # radians per unit of the rotation action
OPEN, CLOSE = -1.0, 1.0


@dataclass
class Waypoint:
    """Move the end effector to ``position`` with the gripper at ``gripper``; done within ``tolerance``
    metres or after ``max_steps``; ``hold`` steps are spent in place afterwards (gripper motion)."""

    name: str
    position: np.ndarray
    gripper: float
    tolerance: float = 0.01
    max_steps: int = 60
    hold: int = 0


@dataclass(frozen=True)
class GraspProfile:
    """Where to take an object from, relative to its reported position (metres)."""

    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lift: float = 0.15


GRASP_PROFILES = {
    # a parallel gripper cannot close on a bowl's body: straddle the rim wall instead
    "bowl": GraspProfile(offset=(0.0, 0.05, 0.02)),
}


def _profile(name: str) -> GraspProfile:
    return next((p for key, p in GRASP_PROFILES.items() if key in name), GraspProfile())


class LiberoExpert:
    """Call :meth:`reset` after ``env.reset``; :meth:`act` returns a (7,) action each step."""

    def __init__(self, env: LiberoEnv, gain: float = 1.0) -> None:
        self.env = env
        self.gain = gain
        self.plan: list[Waypoint] = []
        self._phase = 0
        self._phase_steps = 0
        self._holding = 0
        self._home_rotation = np.zeros(3)

    # -- planning ---------------------------------------------------------------------------------
    def _position(self, name: str) -> np.ndarray:
        raw = self.env.raw_observation
        key = f"{name}_pos"
        if key in raw:
            return np.asarray(raw[key], dtype=np.float64)
        sim = self.env._sim.env.sim  # regions and fixtures are sites/bodies, not observables
        for lookup in (sim.model.site_name2id, sim.model.body_name2id):
            try:
                index = lookup(name)
            except (ValueError, KeyError):
                continue
            data = sim.data.site_xpos if lookup == sim.model.site_name2id else sim.data.body_xpos
            return np.array(data[index], dtype=np.float64)
        raise KeyError(f"no pose for {name!r} in the simulator")

    def _target_name(self, name: str) -> str:
        for suffix in ("_contain_region", "_region"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    def reset(self) -> None:
        if len(self.env.goal_state) != 1 or self.env.goal_state[0][0].lower() not in ("on", "in"):
            raise NotImplementedError(f"the scripted expert handles one On/In goal, not {self.env.goal_state}")
        predicate, obj, target = self.env.goal_state[0]
        target = self._target_name(target)
        profile = _profile(obj)
        # tall objects hang far below the hand: carry high enough to clear a container's wall
        lift = max(profile.lift, 0.25) if predicate.lower() == "in" else profile.lift
        start = self.env.raw_observation["robot0_eef_pos"].copy()
        offset = np.array(profile.offset)
        grasp = self._position(obj) + offset
        place = self._position(target) + offset  # keep the object, not the hand, centred on the target
        above = lambda p, h: np.array([p[0], p[1], max(p[2] + h, start[2] - 0.05)])
        # "in" a container: let go above its rim rather than pushing the object into the wall
        release = place + np.array([0, 0, 0.15 if predicate.lower() == "in" else 0.04])
        self.plan = [
            Waypoint("approach", above(grasp, 0.10), OPEN, tolerance=0.015, max_steps=80),
            Waypoint("descend", grasp, OPEN, tolerance=0.008, max_steps=60),
            Waypoint("grasp", grasp, CLOSE, tolerance=1.0, max_steps=1, hold=12),
            Waypoint("lift", grasp + np.array([0, 0, lift]), CLOSE, tolerance=0.02, max_steps=60),
            Waypoint("carry", above(place, lift + 0.05), CLOSE, tolerance=0.015, max_steps=100),
            Waypoint("lower", release, CLOSE, tolerance=0.015, max_steps=60),
            Waypoint("release", release, OPEN, tolerance=1.0, max_steps=1, hold=10),
            Waypoint("retreat", place + np.array([0, 0, 0.2]), OPEN, tolerance=0.02, max_steps=60),
        ]
        self._phase, self._phase_steps, self._holding = 0, 0, 0
        self._home_rotation = quat_to_axis_angle(self.env.raw_observation["robot0_eef_quat"])

    @property
    def phase(self) -> str:
        return self.plan[min(self._phase, len(self.plan) - 1)].name if self.plan else "idle"

    # -- acting -----------------------------------------------------------------------------------
    def act(self, observation=None) -> np.ndarray:
        if not self.plan:
            raise RuntimeError("call reset() after env.reset() before act()")
        eef = self.env.raw_observation["robot0_eef_pos"]
        if self._phase >= len(self.plan):
            return np.array([0, 0, 0, 0, 0, 0, OPEN], dtype=np.float32)
        waypoint = self.plan[self._phase]
        error = waypoint.position - eef
        reached = np.linalg.norm(error) < waypoint.tolerance or self._phase_steps >= waypoint.max_steps
        if reached and self._holding >= waypoint.hold:
            self._phase, self._phase_steps, self._holding = self._phase + 1, 0, 0
            return self.act(observation)
        if reached:
            self._holding += 1
            error = np.zeros(3)
        self._phase_steps += 1
        move = np.clip(self.gain * error / POSITION_SCALE, -1.0, 1.0)
        rotation = quat_to_axis_angle(self.env.raw_observation["robot0_eef_quat"])
        turn = np.clip((self._home_rotation - rotation) / ROTATION_SCALE, -1.0, 1.0) * 0.0
        return np.concatenate([move, turn, [waypoint.gripper]]).astype(np.float32)
