"""Environments by name: ``libero:<suite>/<task>`` and ``babyai:<level>``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"^(?P<family>[a-z]+):(?P<rest>.+)$")


class EnvNameError(ValueError):
    """An environment name that does not parse or names nothing that exists."""


@dataclass(frozen=True)
class EnvName:
    family: str
    suite: str
    task_id: int | None = None

    def __str__(self) -> str:
        return f"{self.family}:{self.suite}" + (f"/{self.task_id}" if self.task_id is not None else "")


def parse_env_name(name: str) -> EnvName:
    match = NAME.match(name.strip())
    if not match:
        raise EnvNameError(f"bad environment name {name!r}: expected 'libero:<suite>/<task>' or 'babyai:<level>'")
    family, rest = match["family"], match["rest"]
    if family == "libero":
        suite, _, task = rest.partition("/")
        if not task.isdigit():
            raise EnvNameError(
                f"bad LIBERO name {name!r}: expected 'libero:<suite>/<task index>', e.g. 'libero:libero_spatial/3'"
            )
        return EnvName("libero", suite, int(task))
    if family == "babyai":
        return EnvName("babyai", rest)
    raise EnvNameError(f"unknown environment family {family!r} in {name!r}: known families are 'libero', 'babyai'")


def check_babyai_level(level: str) -> None:
    """Raises EnvNameError unless ``level`` is a registered BabyAI level."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the BabyAI levels)

    if level not in gym.registry or not level.startswith("BabyAI-"):
        known = sorted(k for k in gym.registry if k.startswith("BabyAI-"))
        raise EnvNameError(f"unknown BabyAI level {level!r}; e.g. {', '.join(known[:6])} ...")


def check_env(name: str) -> str | None:
    """Checks that ``name`` can be built, without building it; returns its instruction when it is
    fixed (a LIBERO task), else None. Raises EnvNameError or LiberoError with the reason."""
    parsed = parse_env_name(name)
    if parsed.family == "libero":
        from .libero_env import check_tasks

        return check_tasks(parsed.suite, [parsed.task_id or 0])[parsed.task_id or 0]
    check_babyai_level(parsed.suite)
    return None


def make_env(name: str, **kwargs: Any):
    """Build the environment ``name``; keyword arguments go to the wrapper (image_size, render, ...)."""
    parsed = parse_env_name(name)
    if parsed.family == "libero":
        from .libero_env import LiberoEnv

        return LiberoEnv(parsed.suite, parsed.task_id or 0, **kwargs)
    from .babyai_env import BabyAIEnv

    check_babyai_level(parsed.suite)
    return BabyAIEnv(parsed.suite, **kwargs)


def make_expert(env, **options):
    """The scripted expert for an environment built by :func:`make_env`; ``options`` go to its class."""
    from .babyai_env import BabyAIEnv
    from .libero_env import LiberoEnv

    if isinstance(env, BabyAIEnv):
        from .experts.babyai_expert import BabyAIExpert

        return BabyAIExpert(env, **options)
    if isinstance(env, LiberoEnv):
        from .experts.libero_expert import LiberoExpert

        return LiberoExpert(env)
    raise TypeError(f"no expert for {type(env).__name__}")


def list_envs() -> list[str]:
    """Every name :func:`make_env` accepts (LIBERO tasks of bundled suites, BabyAI levels)."""
    import gymnasium as gym
    import minigrid  # noqa: F401

    from .libero_env import list_suites

    names = [f"libero:{suite}/{t}" for suite, n in list_suites().items() for t in range(n)]
    return names + [f"babyai:{k}" for k in sorted(gym.registry) if k.startswith("BabyAI-")]
