#!/usr/bin/env python
"""Success rate and per-step latency on LIBERO through the policy server (standard protocol).

Each episode restores one of the task's 50 official initial states, waits 10 no-op steps and runs
for at most the suite's step budget (220 spatial, 280 object, 300 goal, 520 libero_10, 400 libero_90).

Examples:
  python launch/libero_eval.py --episodes 5                  # embedded checkpoint, libero_spatial, all tasks
  python launch/libero_eval.py --suite libero_spatial --tasks 0 1 --init-states 0 1 2 3 4 \
      --masks causal Mf+merge --out runs/libero_sweep
  python launch/libero_eval.py --suite libero_spatial_swap --episodes 10   # a LIBERO-PRO variant
Re-running the same command resumes (finished episodes in episodes.jsonl are skipped).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fm_agent.evaluation.harness import EpisodeJob, add_common_arguments, evaluate, print_summary  # noqa: E402

DEFAULT_CHECKPOINT = "checkpoints/libero_spatial"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, DEFAULT_CHECKPOINT)
    parser.add_argument("--suite", default="libero_spatial", help="any bundled suite, LIBERO-PRO variants included")
    parser.add_argument("--tasks", type=int, nargs="+", help="task indices (default: all)")
    parser.add_argument("--init-states", type=int, nargs="+", help="initial-state indices (default: 0..episodes-1)")
    parser.add_argument("--episodes", type=int, default=50, help="initial states per task when --init-states is not given")
    parser.add_argument("--image-size", type=int, help="camera size (default: the checkpoint's)")
    parser.add_argument("--render", choices=["full", "none"], default="full",
                        help="'none' = no cameras, for smoke tests of the loop only (never for reported numbers)")
    args = parser.parse_args(argv)
    command = " ".join([f"python launch/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs.libero_env import list_suites

    suites = list_suites()
    if args.suite not in suites:
        parser.error(f"unknown suite {args.suite!r}; bundled: {', '.join(sorted(suites))}")
    tasks = args.tasks if args.tasks is not None else list(range(suites[args.suite]))
    states = args.init_states if args.init_states is not None else list(range(args.episodes))
    image_size = args.image_size
    if image_size is None and not args.server:
        from fm_agent.model.configuration_vla import VLAConfig

        image_size = VLAConfig.load(Path(args.checkpoint)).image_size
    # episode-major, masks innermost: an interrupted sweep still compares every mask on the same episodes
    jobs = [EpisodeJob(mask, f"libero:{args.suite}/{t}", i, args.seed + i, s)
            for i, s in enumerate(states) for t in tasks for mask in args.masks]
    env_kwargs = {"image_size": image_size or 128, "render": args.render}
    summary = evaluate(jobs, args, env_kwargs, "agentview", ("init_state",),
                       {"suite": args.suite, "tasks": tasks, "init_states": states, "command": command})
    print_summary(summary)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'summary.png'} and {args.out / 'episodes.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
