"""Environments fm-agent evaluates and trains on, as gymnasium envs, plus scripted experts.

Ask for one by name through :func:`envs.registry.make_env`::

    make_env("libero:libero_spatial/3")          # LIBERO suite / task index
    make_env("babyai:BabyAI-GoToSeqS5R2-v0")     # BabyAI level (the ALFRED-style world)

Heavy simulators are imported lazily, so importing this package is cheap.
"""

from .registry import EnvNameError, check_env, list_envs, make_env, make_expert, parse_env_name

__all__ = ["EnvNameError", "check_env", "list_envs", "make_env", "make_expert", "parse_env_name"]
