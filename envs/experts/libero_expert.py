"""A scripted pick-and-place expert for LIBERO that reads object poses from the simulator.

It handles the goal predicates of libero_spatial and libero_object, ``(On obj target)`` and
``(In obj target_region)``: reach above the object, descend, close, lift, carry above the target,
lower, open, retreat. Motions are proportional end-effector commands in OSC_POSE delta units; the
hand keeps a fixed yaw per object (turned from its start orientation), held by a proportional
rotation command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from robosuite.utils import transform_utils as T

from ..libero_env import LiberoEnv

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
    """Where to take an object from, relative to its reported position (metres), and the hand's yaw
    (radians about the world z axis, from its start orientation) while it does."""

    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lift: float = 0.15
    yaw: float = 0.0


GRASP_PROFILES = {
    # A parallel gripper cannot close on a bowl's body: it straddles the rim wall instead, on the
    # bowl's +y side with the fingers closing along y.
    "bowl": GraspProfile(offset=(0.0, 0.05, 0.02)),
}
# A bowl that starts inside a region (a drawer) or on another movable object is crowded: in
# libero_spatial task 4 it is in the open top drawer, whose wall is where the outer finger of a +y
# rim grasp goes; in task 5 it lies tilted on the ramekin. There the hand takes the rim on the +x
# side (away from the robot, clear of the drawer walls) with the fingers closing along x, lifts high
# enough to clear the drawer's front wall, and re-aims the place at where the bowl hangs in the hand
# (a tilted bowl is often nudged by the fingers on the way in).
CROWDED_PROFILES = {
    "bowl": GraspProfile(offset=(0.05, 0.0, 0.02), lift=0.17, yaw=np.pi / 2),
}


def _profile(name: str, crowded: bool = False) -> GraspProfile:
    profiles = CROWDED_PROFILES if crowded and any(key in name for key in CROWDED_PROFILES) else GRASP_PROFILES
    return next((p for key, p in profiles.items() if key in name), GraspProfile())


def starts_crowded(env: LiberoEnv, obj: str) -> bool:
    """True when ``obj`` starts inside a region or on another movable object (the BDDL's start predicates)."""
    for predicate, *args in env.initial_state:
        if len(args) == 2 and args[0] == obj:
            if predicate.lower() == "in" or (predicate.lower() == "on" and args[1] in env.object_names):
                return True
    return False


HELD_DISTANCE = 0.09  # metres between hand and object centre while the object is in the hand
GRIPPER_OPEN_QPOS = 0.035  # a finger joint above this is (nearly) open: nothing is held


class LiberoExpert:
    """Call :meth:`reset` after ``env.reset``; :meth:`act` returns a (7,) action each step.

    Followed from the start, the expert runs its plan phase by phase. As a DAgger labeller (``act``
    with ``taken``: someone else executed the last action) it reads the phase off the state instead:
    whether the object is in the hand, where the hand is against the plan's waypoints, and where the
    object now lies (a learner may have pushed or dropped it), so each label is the expert's answer
    to the state the learner reached."""

    def __init__(self, env: LiberoEnv, gain: float = 1.0) -> None:
        self.env = env
        self.gain = gain
        self.plan: list[Waypoint] = []
        self._phase = 0
        self._phase_steps = 0
        self._holding = 0
        self._target_quat = np.array([0.0, 0.0, 0.0, 1.0])
        self._profile, self._crowded = GraspProfile(), False

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
        crowded = starts_crowded(self.env, obj)
        profile = _profile(obj, crowded)
        # tall objects hang far below the hand: carry high enough to clear a container's wall
        lift = max(profile.lift, 0.25) if predicate.lower() == "in" else profile.lift
        start = self.env.raw_observation["robot0_eef_pos"].copy()
        offset = np.array(profile.offset)
        grasp = self._position(obj) + offset
        place = self._position(target) + offset  # keep the object, not the hand, centred on the target
        self._object, self._place_centre, self._place_hand = obj, self._position(target), place.copy()
        self._profile, self._crowded = profile, crowded
        above = lambda p, h: np.array([p[0], p[1], max(p[2] + h, start[2] - 0.05)])
        # "in" a container: let go above its rim rather than pushing the object into the wall
        release = place + np.array([0, 0, 0.15 if predicate.lower() == "in" else 0.04])
        carry = above(place, lift + 0.05)
        carry[2] = max(carry[2], grasp[2] + lift)  # carry level: never lower again before the target
        self.plan = [
            Waypoint("approach", above(grasp, 0.10), OPEN, tolerance=0.015, max_steps=80),
            Waypoint("descend", grasp, OPEN, tolerance=0.008, max_steps=60),
            Waypoint("grasp", grasp, CLOSE, tolerance=1.0, max_steps=1, hold=12),
            Waypoint("lift", grasp + np.array([0, 0, lift]), CLOSE, tolerance=0.02, max_steps=60),
            Waypoint("carry", carry, CLOSE, tolerance=0.015, max_steps=100),
            Waypoint("lower", release, CLOSE, tolerance=0.015, max_steps=60),
            Waypoint("release", release, OPEN, tolerance=1.0, max_steps=1, hold=10),
            Waypoint("retreat", place + np.array([0, 0, 0.2]), OPEN, tolerance=0.02, max_steps=60),
        ]
        self._phase, self._phase_steps, self._holding = 0, 0, 0
        turn = T.axisangle2quat(np.array([0.0, 0.0, profile.yaw]))
        self._target_quat = T.quat_multiply(turn, np.asarray(self.env.raw_observation["robot0_eef_quat"]))

    def _recentre_place(self) -> None:
        """Aim the rest of the plan so the object, as it actually sits in the hand after the lift, ends
        up centred on the target: a grasp that slid or nudged the object moves the hand's target too."""
        eef = self.env.raw_observation["robot0_eef_pos"]
        held = self._position(self._object) - eef  # where the object hangs relative to the hand
        shift = np.zeros(3)
        shift[:2] = (self._place_centre - held)[:2] - self._place_hand[:2]
        for waypoint in self.plan[self._phase :]:
            waypoint.position = waypoint.position + shift
        self._place_hand = self._place_hand + shift

    @property
    def phase(self) -> str:
        return self.plan[min(self._phase, len(self.plan) - 1)].name if self.plan else "idle"

    # -- acting -----------------------------------------------------------------------------------
    def _holds_object(self) -> bool:
        raw = self.env.raw_observation
        closed = float(raw["robot0_gripper_qpos"][0]) < GRIPPER_OPEN_QPOS
        near = np.linalg.norm(self._position(self._object) - raw["robot0_eef_pos"]) < HELD_DISTANCE
        return bool(closed and near)

    def _index(self, name: str) -> int:
        return next(i for i, w in enumerate(self.plan) if w.name == name)

    def _sync_phase(self) -> None:
        """Choose the phase for the state as it is (DAgger), keeping counters while it does not change."""
        current = self.plan[min(self._phase, len(self.plan) - 1)]
        if current.hold and self._phase_steps and self._holding < current.hold:
            return  # closing or opening the gripper: let it finish
        eef = self.env.raw_observation["robot0_eef_pos"]
        if self._holds_object():
            carry, release = self.plan[self._index("carry")].position, self.plan[self._index("release")].position
            if np.linalg.norm((eef - carry)[:2]) > 0.02:
                lift = self._index("lift")
                rising = self._phase < lift or (self._phase == lift and self._phase_steps < self.plan[lift].max_steps)
                phase = "lift" if rising and eef[2] < carry[2] - 0.03 else "carry"  # a lift that tops out carries on
                if phase == "lift" and self._phase != lift:
                    self.plan[lift].position = np.array([eef[0], eef[1], carry[2]])  # straight up from here
            elif eef[2] - release[2] > 0.015:
                phase = "lower"
            else:
                phase = "release"
        else:  # re-aim the grasp at the object where it lies now
            grasp = self._position(self._object) + np.array(self._profile.offset)
            approach = self.plan[self._index("approach")]
            approach.position = np.array([grasp[0], grasp[1], max(grasp[2] + 0.10, approach.position[2])])
            self.plan[self._index("descend")].position = grasp
            self.plan[self._index("grasp")].position = grasp
            descending = self._phase in (self._index("descend"), self._index("grasp"))
            if np.linalg.norm((eef - grasp)[:2]) > (0.03 if descending else 0.015):  # hysteresis: no dithering
                phase = "approach"
            elif np.linalg.norm(eef - grasp) > 0.008:
                phase = "descend"
            else:
                phase = "grasp"
        index = self._index(phase)
        if index != self._phase:
            self._phase, self._phase_steps, self._holding = index, 0, 0

    def act(self, observation=None, taken: np.ndarray | None = None) -> np.ndarray:
        """The next action. ``taken``: the action actually executed last step, when it was not this
        expert's (a learner acting while the expert labels, as in DAgger): the phase is then re-read
        from the state."""
        if not self.plan:
            raise RuntimeError("call reset() after env.reset() before act()")
        if taken is not None:
            self._sync_phase()
        eef = self.env.raw_observation["robot0_eef_pos"]
        if self._phase >= len(self.plan):
            return np.array([0, 0, 0, 0, 0, 0, OPEN], dtype=np.float32)
        waypoint = self.plan[self._phase]
        error = waypoint.position - eef
        reached = np.linalg.norm(error) < waypoint.tolerance or self._phase_steps >= waypoint.max_steps
        if reached and self._holding >= waypoint.hold:
            self._phase, self._phase_steps, self._holding = self._phase + 1, 0, 0
            if waypoint.name == "lift" and self._crowded:
                self._recentre_place()
            return self.act(observation)  # the next phase, without re-reading the state
        if reached:
            self._holding += 1
            error = np.zeros(3)
        self._phase_steps += 1
        move = np.clip(self.gain * error / POSITION_SCALE, -1.0, 1.0)
        current = np.asarray(self.env.raw_observation["robot0_eef_quat"])
        difference = T.quat_multiply(self._target_quat, T.quat_inverse(current))
        difference = difference if difference[3] >= 0 else -difference  # the short way round
        rotation_error = T.quat2axisangle(difference)
        # a profile without a turn leaves the hand's yaw alone, as the expert always did
        turn = np.clip(rotation_error / ROTATION_SCALE, -1.0, 1.0) if self._profile.yaw else np.zeros(3)
        return np.concatenate([move, turn, [waypoint.gripper]]).astype(np.float32)
