"""BabyAI's own planner (``BabyAIBot``) as the expert."""

from __future__ import annotations

from typing import Any

from ..babyai_env import BabyAIEnv
from . import ExpertGaveUp


class BabyAIExpert:
    """Call :meth:`reset` after each ``env.reset``, then :meth:`act` once per step.

    ``keep_opened_doors``: when a learner opens a door the mission does not need, BabyAI's bot plans
    to close it again ("bring it back in the original state"). On levels where an open door harms
    nothing (OpenDoorsOrder is not strict) that repair is a wasted step, and as a DAgger label it
    teaches the learner to close doors right after opening them, the right one included, which
    erases the only record of progress a short frame history has. With this flag the bot replans
    from the new state instead (a door the learner *closed* is still reopened).
    """

    def __init__(self, env: BabyAIEnv, keep_opened_doors: bool = False) -> None:
        self.env = env
        self.keep_opened_doors = keep_opened_doors
        self._bot: Any = None  # minigrid's BabyAIBot, built per episode

    def reset(self) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._bot = BabyAIBot(self.env.unwrapped_env)

    def act(self, observation=None, taken: int | None = None) -> int:
        """The bot's next action. ``taken``: the action actually executed last step, when it was not the
        bot's own suggestion (a learner acting while the bot labels, as in DAgger)."""
        if self._bot is None:
            raise RuntimeError("call reset() after env.reset() before act()")
        if self.keep_opened_doors and taken is not None and self._opened_a_door(taken):
            taken = None  # replan from the state as it is: no undo subgoal
        try:
            return int(self._bot.replan(taken))
        except (AssertionError, RecursionError, KeyError, IndexError) as error:  # the bot's own planner failures
            raise ExpertGaveUp(f"BabyAI's bot cannot plan from this state ({type(error).__name__}: {error})") from error

    def _opened_a_door(self, taken: int) -> bool:
        world = self.env.unwrapped_env
        front = world.grid.get(*world.front_pos)
        return taken == world.actions.toggle and front is not None and front.type == "door" and front.is_open
