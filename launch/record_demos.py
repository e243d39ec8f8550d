#!/usr/bin/env python
"""Record expert demonstrations (HDF5, one file per episode) or just measure expert success.

Examples:
  python launch/record_demos.py --envs babyai:BabyAI-GoToSeqS5R2-v0 --episodes 5000 --out data/demos/babyai
  python launch/record_demos.py --suite libero_spatial --episodes 50 --workers 2 --out data/demos/libero_spatial
  python launch/record_demos.py --suite libero_object --episodes 10 --no-save --render none --out runs/experts
  python launch/record_demos.py --suite libero_spatial --init-states 0-9 15-49 --workers 2 --out data/demos/ls
Re-running the same command resumes: finished episodes (see manifest.jsonl) are skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.recording import RecordSettings, parse_index_ranges, record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--envs", nargs="+", help="environment names, e.g. libero:libero_spatial/0 babyai:BabyAI-GoToLocal-v0")
    which.add_argument("--suite", help="every task of a LIBERO suite, e.g. libero_spatial")
    parser.add_argument("--tasks", type=int, nargs="+", help="with --suite: only these task indices")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per environment (LIBERO cycles its 50 initial states)")
    parser.add_argument("--init-states", nargs="+", metavar="I or A-B",
                        help="LIBERO: record these official initial states (e.g. 0-9 15-49) instead of the first "
                             "--episodes; keeps held-out evaluation states out of the data")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--chunk", type=int, default=5, help="episodes per worker job (one env build per job)")
    parser.add_argument("--keep-failures", action="store_true", help="also save episodes the expert failed")
    parser.add_argument("--no-save", action="store_true", help="measure expert success only, write no episodes")
    parser.add_argument("--image-size", type=int, help="camera / view size in pixels (default: the env's)")
    parser.add_argument("--render", choices=["full", "none"], help="LIBERO: 'none' skips cameras (expert checks only)")
    parser.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                        help="LIBERO: execute the expert's xyz action plus N(0, SIGMA) noise, keep the clean "
                             "action as the label (DART: the data shows recoveries from small deviations)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode i uses seed + i")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    names = args.envs
    if args.action_noise < 0 or (args.action_noise and args.envs and
                                 not all(name.startswith("libero:") for name in args.envs)):
        parser.error("--action-noise must be >= 0 and applies to LIBERO (continuous actions) only")
    indices = None
    if args.init_states:
        if args.envs and not all(name.startswith("libero:") for name in args.envs):
            parser.error("--init-states applies to LIBERO environments only")
        try:
            indices = parse_index_ranges(args.init_states, upper=50)
        except ValueError as error:
            parser.error(f"--init-states: {error}")
    if args.suite:
        from envs.libero_env import list_suites

        suites = list_suites()
        if args.suite not in suites:
            parser.error(f"unknown suite {args.suite!r}; bundled: {', '.join(sorted(suites))}")
        names = [f"libero:{args.suite}/{t}" for t in (args.tasks or range(suites[args.suite]))]
    settings = RecordSettings(out=args.out, only_success=not args.keep_failures, save=not args.no_save,
                              image_size=args.image_size, render=args.render, base_seed=args.seed,
                              action_noise=args.action_noise)
    from tqdm import tqdm

    summary = record(names, args.episodes, settings, workers=args.workers, chunk=args.chunk,
                     progress=lambda it, total: tqdm(total=total, desc="episodes", unit="ep"), indices=indices)
    for name, stats in summary["environments"].items():
        print(f"{name:48s} {stats['successes']:4d}/{stats['episodes']:<4d} {100 * stats['success_rate']:5.1f}%"
              + (f"  ({stats['errors']} errors)" if stats["errors"] else ""))
    print(f"overall {100 * summary['success_rate']:.1f}% over {summary['episodes']} episodes; "
          f"summary in {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
