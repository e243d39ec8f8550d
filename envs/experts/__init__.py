"""Scripted experts that act from privileged simulator state, to record demonstrations."""


class ExpertGaveUp(RuntimeError):
    """The expert has no answer for this state (BabyAI's bot, for one, asserts when a learner has led
    it somewhere its planner cannot path from). A labelled rollout ends there and keeps what it has."""
