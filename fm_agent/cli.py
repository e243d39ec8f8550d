"""The ``fm-agent`` command: one sub-command per job of :data:`fm_agent.jobs.JOBS`.

Flags come from each job's config dataclass (tyro), so a flag is defined once, beside its default
and its help. A config is checked before anything starts; a bad one exits 2 with one line naming
the problem, never a traceback and never an error per episode.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import tyro

from .jobs import JOBS, ConfigError

PROG = "fm-agent"


def shown_prog(prog: str, name: str) -> str:
    """How a job is named in help and errors: ``fm-agent NAME``, or a shim's own name."""
    return f"{prog} {name}" if prog == PROG else prog


def parse(argv: Sequence[str], prog: str = PROG) -> tuple[str, object]:
    """(job name, config) for ``argv`` = [sub-command, flags...]; exits on ``--help`` or bad flags."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        names = ", ".join(JOBS)
        lines = [f"usage: {prog} {{{names}}} [FLAGS]", "", "Future-aware VLA policy tools.", ""]
        lines += [f"  {name:12s} {job.help}" for name, job in JOBS.items()]
        lines += ["", f"'{prog} SUB-COMMAND --help' lists the flags of one job."]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{prog}: unknown sub-command {argv[0]!r}\n", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)
            raise SystemExit(2)
        print("\n".join(lines))
        raise SystemExit(0 if argv else 2)
    name = argv[0]
    config_class = JOBS[name].config_class()
    config: object = tyro.cli(config_class, args=list(argv[1:]), prog=shown_prog(prog, name))
    return name, config


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Runs one job. ``prog`` is the name a shim is known by (``launch/libero_eval.py``): it appears in
    help and in the command recorded with results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, config = parse(argv, prog)
    except SystemExit as done:  # --help (0), or flags tyro refused with its own message (2)
        return done.code if isinstance(done.code, int) else 2
    except (ValueError, TypeError) as error:  # a config dataclass refused its values while being built
        print(f"{prog} {argv[0]}: {error}", file=sys.stderr)
        return 2
    shown = [prog] + (argv if prog == PROG else argv[1:])
    try:
        return JOBS[name].run(config, " ".join(shlex.quote(a) for a in shown))
    except ConfigError as error:
        print(f"{shown_prog(prog, name)}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
