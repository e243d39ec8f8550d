"""How far each checkpoint's greedy action chunks land from the expert's, on episodes it was not trained on.

Validation loss and exact-chunk accuracy are measured in tokens, so they cannot compare policies whose
actions are tokens of different kinds (256 bins per dimension, or FAST's BPE over a DCT). This
decodes every policy's chunk the way it is served (``predict``, greedy, one mask) on the same recorded
observations and measures the error in action units: the mean absolute error of the six arm
dimensions, and how often the gripper's command has the wrong sign. A few seconds per checkpoint, so
it can rank candidates before a simulator evaluation of many minutes (it is no substitute for one:
a closed loop compounds errors that single steps do not show).

The observations are those of the validation episodes of the first checkpoint's training (the split
``fm-agent train`` made with the ``val_fraction`` and ``seed`` its record holds, over the same
``--data``), at every step its samples come from; ``--all-episodes`` uses every episode instead.

    python launch/action_error.py runs/libero_head_autoregressive runs/libero_head_fast --data runs/heads_demos
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fm_agent.attention import FutureMaskSpec
from fm_agent.data.episodes import action_chunk, all_samples, load_episodes
from fm_agent.model import VLAPolicy
from fm_agent.training.jobs import validation_split
from fm_agent.training.loop import recorded_observation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="LIBERO policy folders trained on --data")
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="the recorded episodes they were trained on"
    )
    parser.add_argument("--all-episodes", action="store_true", help="every episode, not the validation split")
    parser.add_argument(
        "--split",
        type=float,
        nargs=2,
        metavar=("VAL_FRACTION", "SEED"),
        default=None,
        help="the training split, for records from before it was written down (train's --val-fraction, --seed)",
    )
    parser.add_argument("--mask", default="causal", help="mask label the chunks are decoded under")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policies = [VLAPolicy.from_pretrained(folder) for folder in args.checkpoints]
    first = policies[0].config
    if first.action_tokenizer.get("kind") != "continuous":
        parser.error("action error is measured on continuous actions (LIBERO policies)")
    episodes = [e for folder in args.data for e in load_episodes(folder, first.cameras)]
    if not args.all_episodes:
        split = first.training.get("validation")
        if args.split is not None:
            split = {"val_fraction": args.split[0], "seed": int(args.split[1])}
        if split is None:
            parser.error(f"{args.checkpoints[0]} records no validation split: give --split or --all-episodes")
        held_out, _ = validation_split(len(episodes), split["val_fraction"], split["seed"])
        episodes = [episodes[i] for i in held_out]
    spec = FutureMaskSpec.parse(args.mask)
    rows = []
    for folder, policy in zip(args.checkpoints, policies, strict=True):
        config = policy.config
        arm, gripper, tokens = [], [], []
        samples = all_samples(episodes, config.history_stride)
        for sample in tqdm(samples, desc=folder.name, leave=False):
            e = episodes[sample.episode]
            result = policy.predict([recorded_observation(config, e, sample.step)], spec)[0]
            target = action_chunk(e, sample.step, policy.actions.chunk)
            arm.append(float(np.abs(result.actions[:, :6] - target[:, :6]).mean()))
            gripper.append(float(np.mean(np.sign(result.actions[:, 6]) != np.sign(target[:, 6]))))
            tokens.append(len(result.tokens))
        rows.append(
            {
                "checkpoint": str(folder),
                "action_head": config.action_head,
                "action_encoding": policy.actions.encoding,
                "chunks": len(samples),
                "arm_mean_abs_error": float(np.mean(arm)),
                "gripper_sign_wrong": float(np.mean(gripper)),
                "tokens_mean": float(np.mean(tokens)),
            }
        )
    print(f"{len(episodes)} episodes, mask {args.mask}")
    print(
        f"{'checkpoint':44} {'head':15} {'enc':>4} {'chunks':>6} {'arm |err|':>9} {'gripper wrong':>13} {'tokens':>6}"
    )
    for r in rows:
        print(
            f"{r['checkpoint']:44} {r['action_head']:15} {r['action_encoding']:>4} {r['chunks']:6} "
            f"{r['arm_mean_abs_error']:9.4f} {r['gripper_sign_wrong']:13.3f} {r['tokens_mean']:6.1f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"data": [str(d) for d in args.data], "mask": args.mask, "episodes": len(episodes)}
        settings["split"] = "all" if args.all_episodes else f"validation of {args.checkpoints[0]}"
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
