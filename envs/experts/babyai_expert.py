"""BabyAI's own planner (``BabyAIBot``) as the expert."""

from __future__ import annotations

from ..babyai_env import BabyAIEnv


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
        return int(self._bot.replan(taken))
