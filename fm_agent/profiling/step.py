"""What one control step costs, and how that grows with the chunk: autoregressive vs parallel head.

For each chunk length a policy of the shipped LIBERO checkpoint's shape (random weights: latency
does not depend on them) is built with each action head. Measured in one run, interleaved, with one
intra-op thread: the whole ``predict`` step, its vision / prefill / decode parts, and one plain
forward over the autoregressive prompt (the floor a step is read against: ``step / forward``).

    fm-agent profile --step --chunks 1 4 8 16 --out runs/step

``--static-decode`` adds the path ``ar-static`` (decoding on a fixed-capacity cache: CUDA graphs on a
GPU, eager on a CPU) and ``--device cuda`` runs every path on a GPU, where the timings are synchronised
and the compiled step (a CPU path: inductor's C++ wrapper) is left out.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from ..attention import FutureMaskSpec, MergeOptions
from ..attention.fast_decode import FastDecoder
from ..model import ActionTokenizer, EpisodeHistory, Observation, VLAConfig, VLAPolicy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

# "autoregressive" decodes with the exact fast step (fm_agent/attention/fast_decode.py) and reuses the
# history's vision features, as served; "ar-compiled" is that step compiled (``--compile-decode``, not
# bit-exact); "ar-reference" is the same policy through transformers' forward for every token, encoding
# every frame of every step: the paths they replace. "ar-static" (with --static-decode) decodes on a
# fixed-capacity cache, replayed from CUDA graphs on a GPU.
HEADS = ("autoregressive", "ar-compiled", "ar-static", "ar-reference", "parallel")
# The shipped checkpoint itself (chunk 4), loaded the way `fm-agent serve` loads it for each decode path.
SHIPPED_PATHS: dict[str, dict[str, Any]] = {
    "ar-reference": {"fast_decode": False, "reuse_vision": False},
    "autoregressive": {},
    "ar-compiled": {"compile_decode": True},
    "ar-static": {"static_decode": True},
}


def step_heads(device: str, static: bool) -> tuple[str, ...]:
    """The paths a step profile times: the compiled step only on a CPU, the static one when asked."""
    return tuple(h for h in HEADS if (h != "ar-compiled" or device == "cpu") and (h != "ar-static" or static))


SPECS = {"causal": FutureMaskSpec(), "Mf+merge": FutureMaskSpec("Mf", merge=MergeOptions())}
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def shaped_like(checkpoint: Path, chunk: int, head: str, device: str = "cpu") -> VLAPolicy:
    """A random-weight policy with ``checkpoint``'s shape, cameras and prompt, ``chunk`` actions per call,
    on ``device``."""
    shape = VLAConfig.load(checkpoint)
    rng = np.random.default_rng(0)
    actions = ActionTokenizer.fit(rng.uniform(-1, 1, (1000, 7)), bins=256, chunk=chunk)
    config = VLAConfig(
        env_family=shape.env_family,
        cameras=shape.cameras,
        image_size=shape.image_size,
        history=shape.history,
        action_tokenizer=actions.to_dict(),
        proprio_dim=shape.proprio_dim,
        proprio_low=[-1.0] * shape.proprio_dim,
        proprio_high=[1.0] * shape.proprio_dim,
        backbone=shape.backbone,
        action_head="parallel" if head == "parallel" else "autoregressive",
    )
    policy = VLAPolicy.create(config, [INSTRUCTION], seed=0)
    policy.model.to(device)  # in place; the decoders below find it there
    if head == "ar-reference":  # the reference paths: transformers' forward per token, every frame encoded
        policy.fast_decoder = None
        policy.reuse_vision = False
    if head == "ar-compiled":
        policy.fast_decoder = FastDecoder(policy.model, compile=True)
    if head == "ar-static":
        policy.use_static_decode()
    return policy


def _observation(policy: VLAPolicy) -> Observation:
    rng = np.random.default_rng(1)
    size = policy.config.image_size
    frames = [
        {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in policy.config.cameras}
        for _ in range(policy.config.history)
    ]
    return Observation(frames, INSTRUCTION, np.zeros(policy.config.proprio_dim) if policy.config.proprio_dim else None)


def _steady(policy: VLAPolicy, observation: Observation) -> Observation:
    """``observation`` as a running episode sends it: every frame but the newest already encoded (the
    features its history kept from earlier steps), so the step encodes one frame."""
    history = EpisodeHistory(policy.config.history)
    for frame in observation.frames[:-1]:
        step = Observation(history.with_frame(frame), observation.instruction, observation.proprio,
                           features=history.features_with_new_frame())  # fmt: skip
        history.append(frame, policy.predict([step])[0].frame_features)
    features = [*history.features_with_new_frame()][-len(observation.frames) :]
    return Observation(list(observation.frames), observation.instruction, observation.proprio, features=features)


@torch.no_grad()
def time_step_parts(
    policy: VLAPolicy, reference: VLAPolicy, spec: FutureMaskSpec, observation: Observation | None = None
) -> dict[str, float]:
    """One steady-state ``predict`` of ``policy`` (step, prefill, decode), one forward of ``reference``
    over its own prompt, and the vision tower over the step's images; milliseconds, and the action
    tokens the step decoded (fewer than the chunk's bins with the FAST encoding).

    ``observation`` (default: random frames) matters where the step's length depends on what the
    policy sees: a FAST policy decodes as many tokens as the chunk it predicts needs."""
    observation = observation or _observation(policy)
    observation = _steady(policy, observation) if policy.reuse_vision else observation
    start = policy.clock()
    result = policy.predict([observation], spec)[0]
    step = (policy.clock() - start) * 1e3
    inputs = reference.encode([_observation(reference)])  # the autoregressive prompt: the same for every head
    inputs = {name: value.to(reference.device) for name, value in inputs.items()}
    start = reference.clock()
    reference.model(**inputs)
    forward = (reference.clock() - start) * 1e3
    pixels = policy.encode([observation])["pixel_values"].to(policy.device, policy.model.dtype)
    start = policy.clock()
    policy.model.model.get_image_features(pixel_values=pixels)
    vision = (policy.clock() - start) * 1e3
    return {
        "step_ms": step,
        "forward_ms": forward,
        "vision_ms": vision,
        "prefill_ms": result.timings_ms["prefill_ms"],
        "decode_ms": result.timings_ms["decode_ms"],
        "tokens": float(len(result.tokens)),
    }


def run_step_profile(
    checkpoint: Path,
    chunks: tuple[int, ...] = (1, 2, 4, 8, 16),
    repetitions: int = 15,
    threads: int = 1,
    progress=None,
    device: str = "cpu",
    static: bool = False,
) -> dict:
    torch.set_num_threads(threads)
    heads = step_heads(device, static)
    policies: dict[tuple[int | str, str], VLAPolicy] = {
        (chunk, head): shaped_like(checkpoint, chunk, head, device) for chunk in chunks for head in heads
    }
    reference: dict[int | str, VLAPolicy] = {chunk: policies[(chunk, "autoregressive")] for chunk in chunks}
    shipped_chunk = ActionTokenizer.from_dict(VLAConfig.load(checkpoint).action_tokenizer).chunk
    shipped_heads = [head for head in SHIPPED_PATHS if head in heads]
    for head in shipped_heads:  # "shipped" in place of a chunk: the checkpoint's own weights
        policies[("shipped", head)] = VLAPolicy.from_pretrained(checkpoint, device=device, **SHIPPED_PATHS[head])
    reference["shipped"] = policies[("shipped", "autoregressive")]
    samples: dict[tuple, list[dict]] = {}
    keys: list[tuple[int | str, str, str]] = [
        (chunk, head, label) for chunk in chunks for head in heads for label in SPECS
    ]
    keys += [("shipped", head, label) for head in shipped_heads for label in SPECS]
    for key in keys:  # warm-up (and the compiles of the compiled step)
        time_step_parts(policies[key[:2]], reference[key[0]], SPECS[key[2]])
    for rep in range(repetitions):  # interleaved: machine noise spreads over every configuration alike
        for key in keys:
            samples.setdefault(key, []).append(time_step_parts(policies[key[:2]], reference[key[0]], SPECS[key[2]]))
        if progress:
            progress(rep + 1, repetitions)
    rows: list[dict] = []
    shipped: list[dict] = []
    for (chunk, head, label), runs in samples.items():  # binned actions: the tokens are the chunk's, 7 per action
        median = {name: float(np.median([r[name] for r in runs])) for name in runs[0] if name != "tokens"}
        actions = shipped_chunk if chunk == "shipped" else int(chunk)
        row = {
            "chunk": actions,
            "head": head,
            "spec": label,
            "tokens": 7 * actions,
            **median,
            "step_over_forward": median["step_ms"] / median["forward_ms"],
        }
        (shipped if chunk == "shipped" else rows).append(row)
    for group in (rows, shipped):
        causal = {(r["chunk"], r["head"]): r for r in group if r["spec"] == "causal"}
        for row in group:
            row["over_causal"] = row["step_ms"] / causal[(row["chunk"], row["head"])]["step_ms"]
    return {
        "shipped": shipped,
        "checkpoint_shape": str(checkpoint),
        "threads": threads,
        "repetitions": repetitions,
        "device": device if device == "cpu" else torch.cuda.get_device_name(torch.device(device)),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }


def format_step_report(report: dict) -> str:
    head = (
        f"{'chunk':>5} {'head':15} {'spec':9} {'step ms':>8} {'vision':>7} {'prefill':>8} {'decode':>7} "
        f"{'forward':>8} {'step/fwd':>8} {'x causal':>8}"
    )
    lines = [
        f"control step, {report['checkpoint_shape']} itself, {report['threads']} thread(s), "
        f"{report.get('device', 'cpu')}, median of {report['repetitions']}",
        head,
        *_step_lines(report.get("shipped", [])),
        "",
        f"control step, {report['checkpoint_shape']} shape, random weights, per chunk length",
        head,
        *_step_lines(report["rows"]),
    ]
    return "\n".join(lines)


def _step_lines(rows: list[dict]) -> list[str]:
    return [
        f"{r['chunk']:>5} {r['head']:15} {r['spec']:9} {r['step_ms']:8.1f} {r['vision_ms']:7.1f} "
        f"{r['prefill_ms']:8.1f} {r['decode_ms']:7.1f} {r['forward_ms']:8.1f} "
        f"{r['step_over_forward']:8.2f} {r['over_causal']:8.2f}"
        for r in sorted(rows, key=lambda r: (r["chunk"], r["head"], r["spec"]))
    ]


def plot_step_report(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for head in sorted({r["head"] for r in report["rows"]}, key=HEADS.index):
        for label, style in zip(SPECS, ("-o", "--s")):
            rows = sorted(
                (r for r in report["rows"] if r["head"] == head and r["spec"] == label), key=lambda r: r["chunk"]
            )
            ax.plot([r["chunk"] for r in rows], [r["step_ms"] for r in rows], style, label=f"{head}, {label}")
    forward = sorted(
        (r for r in report["rows"] if r["head"] == "autoregressive" and r["spec"] == "causal"), key=lambda r: r["chunk"]
    )
    ax.plot(
        [r["chunk"] for r in forward],
        [r["forward_ms"] for r in forward],
        ":",
        color="gray",
        label="one forward of the prompt",
    )
    ax.set_xlabel("actions per chunk (7 tokens each)")
    ax.set_ylabel("ms per control step (median)")
    ax.set_title("control step vs chunk length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    checkpoint: Path,
    out: Path,
    chunks: tuple[int, ...],
    repetitions: int,
    threads: int,
    command: str = "",
    device: str = "cpu",
    static: bool = False,
) -> int:
    bar = tqdm(total=repetitions, desc="step profile", unit="round")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    report = run_step_profile(checkpoint, chunks, repetitions, threads, progress, device, static)
    bar.close()
    report["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").write_text(json.dumps(report, indent=2))
    plot_step_report(report, out / "step.png")
    print(format_step_report(report))
    print(f"wrote {out / 'step.json'} and {out / 'step.png'}")
    return 0
