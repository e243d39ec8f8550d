#!/usr/bin/env python
"""Success rate and per-step latency on BabyAI levels (the ALFRED-style world), through the policy server.

Examples:
  python launch/alfred_eval.py --episodes 200 --masks causal Mf Mv2v Mv2t Mf+merge Mv2v+merge Mv2t+merge \
      --out runs/alfred_sweep
  python launch/alfred_eval.py --checkpoint checkpoints/babyai_gotoseq --episodes 100 --out runs/gotoseq
  python launch/alfred_eval.py --server 127.0.0.1:50051 --levels BabyAI-PickupLoc-v0 --episodes 50 --out runs/x
Re-running the same command resumes (finished episodes in episodes.jsonl are skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fm_agent.evaluation.harness import EpisodeJob, add_common_arguments, evaluate, print_summary  # noqa: E402

DEFAULT_CHECKPOINT = "checkpoints/babyai_opendoors"
FALLBACK_LEVEL = "BabyAI-OpenDoorsOrderN4-v0"


def trained_levels(checkpoint: Path) -> list[str]:
    """The BabyAI levels a checkpoint was trained on (recorded by train_bc.py), for a default that matches."""
    config = Path(checkpoint) / "fm_agent_policy.json"
    if not config.exists():
        return [FALLBACK_LEVEL]
    envs = json.loads(config.read_text()).get("training", {}).get("envs", [])
    levels = [e.split(":", 1)[1] for e in envs if e.startswith("babyai:")]
    return levels or [FALLBACK_LEVEL]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, DEFAULT_CHECKPOINT)
    parser.add_argument("--levels", nargs="+", help="BabyAI level ids (default: the levels the checkpoint was "
                        "trained on, from its fm_agent_policy.json)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per level and mask")
    parser.add_argument("--image-size", type=int, default=56)
    args = parser.parse_args(argv)
    args.levels = args.levels or trained_levels(args.checkpoint)
    command = " ".join([f"python launch/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    # episode-major, masks innermost: an interrupted sweep still compares every mask on the same episodes
    jobs = [EpisodeJob(mask, f"babyai:{level}", i, args.seed + i, None)
            for i in range(args.episodes) for level in args.levels for mask in args.masks]
    summary = evaluate(jobs, args, {"image_size": args.image_size}, "image",
                       ("has_location_phrase", "num_subgoals", "sequence"), {"levels": args.levels, "episodes": args.episodes, "command": command})
    print_summary(summary)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'summary.png'} and {args.out / 'episodes.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
