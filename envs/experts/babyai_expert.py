"""BabyAI's own planner (``BabyAIBot``) as the expert."""

from __future__ import annotations

from ..babyai_env import BabyAIEnv
from . import ExpertGaveUp


class BabyAIExpert:
    """Call :meth:`reset` after each ``env.reset``, then :meth:`act` once per step."""

    def __init__(self, env: BabyAIEnv) -> None:
        self.env = env
        self._bot = None

    def reset(self) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._bot = BabyAIBot(self.env.unwrapped_env)

    def act(self, observation=None, taken: int | None = None) -> int:
        """The bot's next action. ``taken``: the action actually executed last step, when it was not the
        bot's own suggestion (a learner acting while the bot labels, as in DAgger)."""
        if self._bot is None:
            raise RuntimeError("call reset() after env.reset() before act()")
        try:
            return int(self._bot.replan(taken))
        except (AssertionError, RecursionError, KeyError, IndexError) as error:  # the bot's own planner failures
            raise ExpertGaveUp(f"BabyAI's bot cannot plan from this state ({type(error).__name__}: {error})") from error
