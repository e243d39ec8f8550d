#!/usr/bin/env python
"""Train a VLA by behaviour cloning on recorded expert demonstrations.

Examples:
  python launch/train_bc.py --preset babyai --data data/demos/babyai --out checkpoints/babyai --max-minutes 12
  python launch/train_bc.py --preset libero --data data/demos/libero_spatial_64 --out checkpoints/libero_spatial
  python launch/train_bc.py --preset babyai --data ... --train-mask causal Mf Mv2t+merge   # one mask drawn per batch
  python launch/train_bc.py --preset babyai --data data/demos/babyai_opendoors --init checkpoints/babyai_opendoors \
      --out runs/finetuned --steps 1500      # start from a policy's weights (e.g. after launch/dagger.py)
Re-running with the same --out resumes from its training_state.pt (use --fresh to start over).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PRESETS = {
    "babyai": dict(cameras=["image"], image_size=56, history=4, chunk=1, patch=8, proprio=False),
    "libero": dict(cameras=["agentview", "wrist"], image_size=64, history=2, chunk=4, patch=16, proprio=True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True, help="prompt/action conventions")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="folder(s) of recorded episodes, e.g. clean and DART demonstrations")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--history", type=int, help="frames per camera in the prompt (K)")
    parser.add_argument("--chunk", type=int, help="actions predicted per call")
    parser.add_argument("--history-stride", type=int, help="steps between the history frames of a training "
                        "sample (default: the chunk, as a client executing whole chunks calls once per chunk)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--bins", type=int, default=256, help="bins per continuous action dimension")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--prompt-order", choices=["frames_first", "instruction_first"], default="frames_first",
                        help="where the instruction goes: after the frames (LLaVA's order; the future-aware masks "
                        "let image tokens see it) or before them (image tokens see it under the causal mask too)")
    parser.add_argument("--action-head", choices=["autoregressive", "parallel"], default="autoregressive",
                        help="decode the chunk's action tokens one by one, or read them all off placeholders in "
                             "the prompt's forward (one forward per control step)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-mask", nargs="+", default=["causal"], help="training-time mask label(s)")
    parser.add_argument("--image-shift", type=int, default=0, metavar="PIXELS",
                        help="random-shift augmentation: move each camera view by up to this many pixels per "
                             "training sample (DrQ; 4 for 64x64 LIBERO views); 0 = off")
    parser.add_argument("--max-episodes", type=int, help="use at most this many episodes")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--validate-every", type=int, default=250)
    parser.add_argument("--max-minutes", type=float, help="stop after this much training time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="ignore an existing training state in --out")
    parser.add_argument("--init", type=Path, help="start from this policy (weights, tokenizers, prompt layout); "
                        "the shape options are then ignored; optimiser and schedule start afresh")
    parser.add_argument("--temperature", type=float, help="the checkpoint's default action sampling temperature "
                        "(0 = greedy; default: 0, or the --init policy's)")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy
    from fm_agent.model.data import load_episodes
    from fm_agent.model.training import TrainSettings, plot_losses, save_log, train

    preset = PRESETS[args.preset]
    cameras = preset["cameras"]
    episodes = [e for folder in args.data
                for e in load_episodes(folder, cameras, args.max_episodes)][:args.max_episodes]
    order = list(range(len(episodes)))
    random.Random(args.seed).shuffle(order)
    n_val = max(1, int(len(order) * args.val_fraction))
    val_eps = [episodes[i] for i in order[:n_val]]
    train_eps = [episodes[i] for i in order[n_val:]]
    chunk = args.chunk or preset["chunk"]
    actions = np.concatenate([e.actions for e in train_eps])
    if args.init is not None:
        policy = VLAPolicy.from_pretrained(args.init)
        if policy.config.env_family != args.preset:
            parser.error(f"--init {args.init} is a {policy.config.env_family} policy, not {args.preset}")
    elif args.preset == "babyai":
        action_tokenizer = ActionTokenizer.discrete(7, chunk=chunk)
    else:
        action_tokenizer = ActionTokenizer.fit(actions, bins=args.bins, chunk=chunk)
    proprio_low = proprio_high = []
    proprio_dim = 0
    if preset["proprio"]:
        proprio = np.concatenate([e.proprio for e in train_eps])
        proprio_dim = proprio.shape[1]
        proprio_low, proprio_high = np.quantile(proprio, 0.01, 0).tolist(), np.quantile(proprio, 0.99, 0).tolist()
    if args.init is None:
        config = VLAConfig(
            env_family=args.preset, cameras=cameras, image_size=args.image_size or preset["image_size"],
            history=args.history or preset["history"], action_tokenizer=action_tokenizer.to_dict(),
            history_stride=args.history_stride or chunk,
            prompt_order=args.prompt_order, action_head=args.action_head,
            proprio_dim=proprio_dim, proprio_low=proprio_low, proprio_high=proprio_high,
            backbone=BackboneShape(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                                   intermediate=int(args.hidden * 8 / 3) // 16 * 16, patch_size=preset["patch"]),
        )
        policy = VLAPolicy.create(config, [e.instruction for e in episodes], seed=args.seed)
    if args.temperature is not None:
        policy.config.temperature = args.temperature
    earlier = dict(policy.config.training) if args.init is not None else None  # the --init policy's own record
    params = sum(p.numel() for p in policy.model.parameters())
    print(f"{len(train_eps)} training / {len(val_eps)} validation episodes, "
          f"{sum(len(e.actions) for e in train_eps)} samples; model {params / 1e6:.2f}M parameters; "
          f"prompt {len(policy.prompt_ids(train_eps[0].instruction, train_eps[0].proprio[0] if policy.config.proprio_dim else None))} tokens")
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             train_masks=tuple(args.train_mask), validate_every=args.validate_every,
                             checkpoint_every=args.validate_every, seed=args.seed, threads=args.threads,
                             max_minutes=args.max_minutes, image_shift=args.image_shift)
    log = train(policy, train_eps, val_eps, settings, args.out, progress=lambda **kw: tqdm(desc="training", **kw),
                resume=not args.fresh)
    policy.config.training = {
        "command": " ".join(sys.argv), "data": " ".join(map(str, args.data)), "episodes": len(episodes),
        "envs": sorted({env for folder in args.data for env in recorded_envs(folder)}),
        "init": str(args.init) if args.init else None,
        **({"init_training": earlier} if earlier else {}),
        "train_masks": list(args.train_mask), "steps": log.steps[-1] if log.steps else 0,
        "image_shift": args.image_shift,
        "minutes": round(log.seconds / 60, 2), "parameters": params,
        "val_loss": log.val_loss[-1] if log.val_loss else None,
        "val_action_accuracy": log.val_accuracy[-1] if log.val_accuracy else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "torch_threads": args.threads,
    }
    policy.save_pretrained(args.out)
    plot_losses(log, args.out / "loss.png")
    save_log(log, args.out / "train_log.json")
    print(json.dumps(policy.config.training, indent=2))
    return 0


def recorded_envs(data: Path) -> list[str]:
    """The environments the demonstrations came from, so evaluation can default to them."""
    manifest = Path(data) / "manifest.jsonl"
    if not manifest.exists():
        return []
    return sorted({json.loads(line)["env"] for line in manifest.read_text().splitlines() if line.strip()})


if __name__ == "__main__":
    sys.exit(main())
