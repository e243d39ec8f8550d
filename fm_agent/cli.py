"""The ``fm-agent`` command: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys


def _masks(args: argparse.Namespace) -> int:
    from .attention import FutureMaskSpec, allowed_matrix, render_allowed
    from .profiling.layouts import parse_layout

    visual = parse_layout(args.layout)
    spec = FutureMaskSpec.parse(args.mask)
    print(f"{spec.label} over {args.layout!r} (# = may attend; rows are queries)")
    print(render_allowed(allowed_matrix(visual, spec), visual))
    if spec.merge is not None:
        print("merge: the pattern above is pooled into the sink column; the final attention is causal")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fm-agent", description="Future-aware VLA policy tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    from .profiling.report import add_arguments, main as profile_main

    profile = sub.add_parser("profile", help="prefill/decode latency of every mask (writes JSON + PNG)")
    add_arguments(profile)
    profile.set_defaults(func=profile_main)

    masks = sub.add_parser("masks", help="print which keys each query may see under a mask")
    masks.add_argument("--layout", default="T4 V4 T2 V4 T3", help="token layout, e.g. 'T4 V4 T2 V4 T3'")
    masks.add_argument("--mask", default="Mf", help="causal, Mf, Mv2v, Mv2t (optionally /full or +merge)")
    masks.set_defaults(func=_masks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
