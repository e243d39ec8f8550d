"""BabyAI (minigrid) as the ALFRED-style world: language missions, egocentric partial RGB views.

The real ALFRED needs AI2-THOR, whose binary cannot be fetched here; BabyAI keeps what matters for
fm-agent: instructions with several sub-goals, partial observability, and a frame history that
carries information the current frame lacks (location phrases fixed at the initial pose, which
sub-goals are already done).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .spaces import clean_instruction, image_space, instruction_space

LOCATION_PHRASE = re.compile(r"\b(in front of you|behind you|on your left|on your right)\b")
SUBGOAL_VERB = re.compile(r"\b(go to|pick up|open|put)\b")
# "after you" reverses the spoken order of two sub-goals, so it is the hardest phrasing to follow.
SEQUENCE_WORDS = (("after you", "after"), ("then", "then"), ("and", "and"))
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")


@dataclass(frozen=True)
class MissionInfo:
    """What a result table splits on."""

    has_location_phrase: bool
    num_subgoals: int
    sequence: str = "single"  # the strongest connective: "after" (reversed order) > "then" > "and" > "single"

    @classmethod
    def from_mission(cls, mission: str) -> MissionInfo:
        sequence = next((label for words, label in SEQUENCE_WORDS if re.search(rf"\b{words}\b", mission)), "single")
        return cls(bool(LOCATION_PHRASE.search(mission)), max(1, len(SUBGOAL_VERB.findall(mission))), sequence)


def doors_needed_next(instrs) -> list:
    """The door(s) a door-opening mission (BabyAI's ``OpenInstr``, or two of them joined by "then" /
    "after you") needs opened next: the first sub-goal's until it is done, then the second's."""
    from minigrid.envs.babyai.core.verifier import AfterInstr, BeforeInstr, OpenInstr

    if isinstance(instrs, OpenInstr):
        return list(instrs.desc.obj_set)
    if isinstance(instrs, (BeforeInstr, AfterInstr)):
        before = isinstance(instrs, BeforeInstr)
        first, second = (instrs.instr_a, instrs.instr_b) if before else (instrs.instr_b, instrs.instr_a)
        done = (instrs.a_done if before else instrs.b_done) == "success"
        return doors_needed_next(second if done else first)
    raise ValueError(f"not a door-opening mission: {type(instrs).__name__} (use an Open* level)")


class BabyAIEnv(gym.Env):
    """One BabyAI level. Observations: ``image`` (egocentric partial RGB view, ``image_size`` square),
    ``direction`` (0-3), ``instruction``. Actions: Discrete(7), minigrid's action ids.

    Success (``info["success"]``) is the level's own test: a positive reward on termination.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        level: str = "BabyAI-GoToSeqS5R2-v0",
        image_size: int = 56,
        max_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if not level.startswith("BabyAI-"):
            raise ValueError(f"not a BabyAI level: {level!r}")
        import minigrid  # noqa: F401  (registers the BabyAI levels)

        self.level = level
        self.image_size = image_size
        self.render_mode = render_mode
        with contextlib.redirect_stdout(io.StringIO()):
            self._env = gym.make(level, max_steps=max_steps) if max_steps else gym.make(level)
        self.unwrapped_env: Any = self._env.unwrapped  # minigrid's MiniGridEnv (untyped)
        self.observation_space = spaces.Dict(
            {
                "image": image_space(image_size),
                "direction": spaces.Discrete(4),
                "instruction": instruction_space(),
            }
        )
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self.mission = ""
        self.mission_info = MissionInfo(False, 1)

    @property
    def max_steps(self) -> int:
        """The level's step budget; BabyAI sets it per mission, so it is only meaningful after reset."""
        return int(self.unwrapped_env.max_steps)

    def _pov(self) -> np.ndarray:
        view = self.unwrapped_env.agent_view_size
        tile = max(1, -(-self.image_size // view))  # ceil: render at least image_size pixels, then crop
        frame = self.unwrapped_env.get_frame(highlight=False, tile_size=tile, agent_pov=True)
        if frame.shape[0] != self.image_size:
            frame = _resize(frame, self.image_size)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _observation(self) -> dict[str, Any]:
        return {
            "image": self._pov(),
            "direction": int(self.unwrapped_env.agent_dir),
            "instruction": clean_instruction(self.mission),
        }

    def _info(self, success: bool = False) -> dict[str, Any]:
        return {"success": success, "instruction": self.mission, **asdict(self.mission_info)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        with contextlib.redirect_stdout(io.StringIO()):  # level generation prints rejection-sampling noise
            obs, _ = self._env.reset(seed=seed)
        self.mission = obs["mission"]
        self.mission_info = MissionInfo.from_mission(self.mission)
        return self._observation(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        _, reward, terminated, truncated, _ = self._env.step(int(action))
        success = bool(terminated and reward > 0)
        return self._observation(), float(reward), bool(terminated), bool(truncated), self._info(success)

    def render(self) -> np.ndarray:
        return self.unwrapped_env.get_frame(highlight=True, tile_size=16)

    def close(self) -> None:
        self._env.close()


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize (H, W, 3) -> (size, size, 3); grid tiles stay crisp."""
    rows = (np.arange(size) * frame.shape[0] / size).astype(int)
    cols = (np.arange(size) * frame.shape[1] / size).astype(int)
    return frame[rows][:, cols]
