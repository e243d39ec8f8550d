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


DEFAULT_CHECKPOINT = "checkpoints/libero_spatial"


class _JsonFormatter:
    """One JSON object per line; messages that are JSON objects themselves are merged in."""

    def format(self, record) -> str:  # logging.Formatter protocol
        import json

        entry = {"time": record.created, "level": record.levelname, "logger": record.name}
        message = record.getMessage()
        try:
            parsed = json.loads(message)
            entry.update(parsed if isinstance(parsed, dict) else {"message": parsed})
        except ValueError:
            entry["message"] = message
        if record.exc_info:
            import traceback

            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from .model import VLAPolicy
    from .serving.limits import Limits
    from .serving.server import PortInUse, ServerSettings, serve

    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if args.json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        print(f"checkpoint {checkpoint} does not exist", file=sys.stderr)
        return 2
    spec = args.mask + ("+merge" if args.merge else (f"/{args.decode_mode}" if args.mask != "causal" else ""))
    import torch

    import os

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.set_num_interop_threads(1)  # the server runs one model thread; inter-op parallelism is unused
    try:
        limits = Limits(max_instruction_chars=args.max_instruction_chars,
                        max_instruction_words=args.max_instruction_words, max_image_pixels=args.max_image_pixels,
                        max_image_side=args.max_image_side, max_queued_requests=args.max_queued_requests,
                        max_concurrent_rpcs=args.max_concurrent_rpcs, stall_timeout_s=args.stall_timeout)
    except ValueError as error:
        print(f"fm-agent serve: {error}", file=sys.stderr)
        return 2
    policy = VLAPolicy.from_pretrained(checkpoint)
    settings = ServerSettings(host=args.host, port=args.port, default_mask=spec, max_episodes=args.max_episodes,
                              idle_timeout_s=args.idle_timeout, max_batch=args.max_batch,
                              batch_window_ms=args.batch_window_ms, max_message_bytes=args.max_message_mb << 20,
                              token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                              model_name=checkpoint.name, limits=limits, decode_threads=args.decode_threads)
    try:
        return asyncio.run(serve(policy, settings))
    except PortInUse as error:
        print(f"fm-agent serve: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fm-agent", description="Future-aware VLA policy tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    from .profiling.report import add_arguments, main as profile_main

    profile = sub.add_parser("profile", help="prefill/decode latency of every mask (writes JSON + PNG)")
    add_arguments(profile)
    profile.set_defaults(func=profile_main)

    from pathlib import Path

    serve = sub.add_parser("serve", help="run the gRPC policy server")
    serve.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="policy folder (default: embedded LIBERO)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed at start)")
    serve.add_argument("--mask", default="causal", choices=["causal", "Mf", "Mv2v", "Mv2t"],
                       help="default mask for episodes that do not choose one")
    serve.add_argument("--merge", action="store_true", help="default to the merged variant")
    serve.add_argument("--decode-mode", default="prefill", choices=["prefill", "full"])
    serve.add_argument("--max-episodes", type=int, default=256)
    serve.add_argument("--idle-timeout", type=float, default=300.0, help="seconds before an idle episode is freed")
    serve.add_argument("--max-batch", type=int, default=8, help="requests per forward pass (micro-batching)")
    serve.add_argument("--batch-window-ms", type=float, default=0.0,
                       help="extra wait for more requests before a forward pass (0: take what is queued)")
    serve.add_argument("--max-message-mb", type=int, default=16, help="largest request or response (MiB)")
    limits = serve.add_argument_group("limits", "what one request may ask; refused before any work, the "
                                                "message names the limit (defaults: fm_agent/serving/limits.py)")
    limits.add_argument("--max-instruction-chars", type=int, default=2048)
    limits.add_argument("--max-instruction-words", type=int, default=None,
                        help="default: all the model's context holds beside frames, proprio and actions")
    limits.add_argument("--max-image-pixels", type=int, default=1024 * 1024,
                        help="width x height of one camera image (PNG/JPEG: read from the header)")
    limits.add_argument("--max-image-side", type=int, default=4096)
    limits.add_argument("--max-queued-requests", type=int, default=64,
                        help="Act requests waiting for the model, all episodes together (then RESOURCE_EXHAUSTED)")
    limits.add_argument("--max-concurrent-rpcs", type=int, default=128)
    limits.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds one batch may run before health says NOT_SERVING and Acts fail fast")
    serve.add_argument("--decode-threads", type=int, default=2, help="threads decoding images off the event loop")
    serve.add_argument("--token", help="require 'authorization: Bearer TOKEN' (use beyond loopback)")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (default: every core; the evaluation scripts pass the cores "
                            "their simulators leave)")
    serve.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    serve.set_defaults(func=_serve)

    from .profiling import soak

    soak_parser = sub.add_parser("soak", help="load/soak the server: valid traffic mixed with hostile requests")
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(func=soak.main)

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
