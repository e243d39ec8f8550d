"""Behaviour cloning: cross-entropy on the action tokens, with a chosen training-time mask.

Visual rows only ever see the prompt: the target action tokens appended for teacher forcing are
outside the admitted future (``FutureAttention`` restricts the future to the prompt), otherwise a
future-aware mask would leak the labels into the image tokens.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch

from ..attention import FutureAttention, FutureMaskSpec
from ..data.episodes import EpisodeArrays, Sample, action_chunk, all_samples, history_frames
from ..model import Observation, VLAConfig, VLAPolicy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

CHECKPOINT_STATE = "training_state.pt"


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    train_masks: tuple[str, ...] = ("causal",)  # one label, or several: one drawn per batch
    validate_every: int = 200
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 2
    max_minutes: float | None = None
    image_shift: int = 0  # random-shift augmentation: pixels each camera view may move (0 = off)
    keep_best: bool = False  # end with the weights of the lowest validation loss, not the last step's


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    kept_step: int | None = None  # with keep_best: the validation step whose weights the policy ends with


def recorded_observation(config: VLAConfig, episode: EpisodeArrays, step: int) -> Observation:
    """What a policy of ``config`` is sent at ``step`` of a recorded episode: its history frames
    (``history_stride`` apart), the instruction, and the proprio when the policy reads it."""
    proprio = episode.proprio[step] if config.proprio_dim and episode.proprio is not None else None
    frames = history_frames(episode, step, config.history, config.history_stride)
    return Observation(frames, episode.instruction, proprio)


def make_batch(policy: VLAPolicy, episodes: Sequence[EpisodeArrays], samples: Sequence[Sample]) -> dict:
    """Autoregressive head: prompt + target action tokens, labels -100 except on the targets (teacher
    forcing). Parallel head: the prompt alone (it ends in the placeholders), and ``targets``; the
    targets never enter the input."""
    actions = policy.actions
    observations, targets = [], []
    for s in samples:
        e = episodes[s.episode]
        observations.append(recorded_observation(policy.config, e, s.step))
        targets.append(actions.encode(action_chunk(e, s.step, actions.chunk)))
    inputs = policy.encode(observations)
    if policy.parallel:
        target = torch.tensor(np.stack(targets))
        return {**inputs, "targets": target, "visual": inputs["input_ids"] == policy.image_token_id}
    # FAST targets differ in length: each row's are followed by padding, which is masked out of the
    # attention and the loss; it comes after the row's targets, so no target's logits depend on it
    longest = max(len(t) for t in targets)
    target = torch.full((len(targets), longest), policy.tokenizer.pad_token_id, dtype=torch.long)
    real = torch.zeros(len(targets), longest, dtype=torch.long)
    for row, t in enumerate(targets):
        target[row, : len(t)] = torch.as_tensor(t)
        real[row, : len(t)] = 1
    prompt_len = inputs["input_ids"].shape[1]
    input_ids = torch.cat([inputs["input_ids"], target], dim=1)
    attention_mask = torch.cat([inputs["attention_mask"], real], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, prompt_len:] = target.masked_fill(real == 0, -100)
    visual = inputs["input_ids"] == policy.image_token_id  # prompt only: the future ends at the prompt
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": inputs["pixel_values"],
        "labels": labels,
        "visual": visual,
    }


def random_shift(
    pixels: torch.Tensor, samples: int, history: int, cameras: int, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shifts each sample's view of each camera by up to ``pad`` pixels (edge pixels repeated), the same
    shift for all of its history frames, so the motion between them is kept (DrQ's random shift,
    Yarats et al. 2021). Why: with tens of demonstrations per task a policy otherwise keys on exact
    pixel positions; small shifts make it read where objects are relative to each other.

    ``pixels`` is ``(samples * history * cameras, 3, S, S)`` in the order :meth:`VLAPolicy.pixel_values`
    lays out (sample, then frame, then camera)."""
    if pad <= 0:
        return pixels
    size = pixels.shape[-1]
    views = pixels.reshape(samples, history, cameras, *pixels.shape[1:])
    padded = torch.nn.functional.pad(views.flatten(0, 2), (pad, pad, pad, pad), mode="replicate")
    padded = padded.reshape(samples, history, cameras, *padded.shape[1:])
    offsets = torch.randint(0, 2 * pad + 1, (samples, cameras, 2), generator=generator)
    out = torch.empty_like(views)
    for i in range(samples):
        for c in range(cameras):
            dy, dx = offsets[i, c].tolist()
            out[i, :, c] = padded[i, :, c, :, dy : dy + size, dx : dx + size]
    return out.reshape_as(pixels)


def forward_loss(policy: VLAPolicy, batch: dict, spec: FutureMaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and per-sample exact-match of the greedy action tokens (constrained to the action range)."""
    context = FutureAttention(spec, batch["visual"])
    lo, hi = policy.actions.token_range()
    if policy.parallel:  # action token j is read off placeholder j, the last n positions
        n = policy.actions.tokens_per_call
        out = policy.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            future_attention=context,
            logits_to_keep=n,
        )
        targets = batch["targets"]
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten())
        correct = ((out.logits[..., lo:hi].argmax(-1) + lo) == targets).all(-1)
        return loss, correct
    out = policy.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        labels=batch["labels"],
        future_attention=context,
    )
    # each position predicts the next one's label; a row is correct when every target token is
    predicted = out.logits[:, :-1, lo:hi].argmax(-1) + lo
    labels = batch["labels"][:, 1:]
    correct = ((predicted == labels) | (labels == -100)).all(-1)
    return out.loss, correct


def _schedule(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def validate(
    policy: VLAPolicy, episodes, samples: Sequence[Sample], batch_size: int, spec: FutureMaskSpec
) -> tuple[float, float]:
    policy.model.eval()
    losses, correct = [], []
    for start in range(0, len(samples), batch_size):
        batch = make_batch(policy, episodes, samples[start : start + batch_size])
        loss, ok = forward_loss(policy, batch, spec)
        losses.append(loss.item() * len(ok))
        correct.append(ok.float().sum().item())
    policy.model.train()
    total = max(1, len(samples))
    return sum(losses) / total, sum(correct) / total


def train(
    policy: VLAPolicy,
    train_eps: Sequence[EpisodeArrays],
    val_eps: Sequence[EpisodeArrays],
    settings: TrainSettings,
    out: Path,
    progress: Callable | None = None,
    resume: bool = True,
) -> TrainLog:
    """Train in place; checkpoints (weights + optimiser + log) go to ``out``; resumes from it if present."""
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    specs = [FutureMaskSpec.parse(label) for label in settings.train_masks]
    for spec in specs:
        if spec.decode_mode == "full" and spec.merge is None and not spec.is_causal:
            raise ValueError("train with prefill-mode or merged masks: 'full' would let images see the targets")
    optimiser = torch.optim.AdamW(policy.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _schedule(s, settings))
    log, step = TrainLog(), 0
    # keep_best: a copy of the weights at the lowest validation loss so far (a small policy's weights fit
    # in memory twice); saved with the training state, so a resumed run still ends on the best step.
    best: dict[str, torch.Tensor] | None = None
    state_path = out / CHECKPOINT_STATE
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        policy.model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        log, step = TrainLog(**state["log"]), state["step"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        best = state.get("best")
    stride = policy.config.history_stride
    samples = all_samples(train_eps, stride)
    val_samples = all_samples(val_eps, stride)
    val_samples = random.Random(settings.seed).sample(val_samples, min(len(val_samples), 512))
    policy.model.train()
    bar = progress(total=settings.steps, initial=step) if progress else None
    started = time.perf_counter() - log.seconds

    def checkpoint() -> None:
        log.seconds = time.perf_counter() - started
        torch.save(
            {
                "model": policy.model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "log": asdict(log),
                "step": step,
                "python_rng": random.getstate(),
                "torch_rng": torch.get_rng_state(),
                "best": best,
            },
            state_path,
        )

    while step < settings.steps:
        spec = random.choice(specs)
        drawn = random.sample(samples, min(settings.batch_size, len(samples)))
        batch = make_batch(policy, train_eps, drawn)
        batch["pixel_values"] = random_shift(
            batch["pixel_values"], len(drawn), policy.config.history, len(policy.config.cameras), settings.image_shift
        )
        loss, _ = forward_loss(policy, batch, spec)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        step += 1
        log.steps.append(step)
        log.loss.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mask=spec.label)
        if step % settings.validate_every == 0 or step == settings.steps:
            val_loss, val_acc = validate(policy, val_eps, val_samples, 64, specs[0])
            log.val_steps.append(step)
            log.val_loss.append(val_loss)
            log.val_accuracy.append(val_acc)
            if settings.keep_best and val_loss <= min(log.val_loss):
                best = {name: value.detach().clone() for name, value in policy.model.state_dict().items()}
                log.kept_step = step
            if bar is not None:
                bar.write(
                    f"step {step}: train loss {np.mean(log.loss[-50:]):.4f}, val loss {val_loss:.4f}, "
                    f"val action accuracy {val_acc:.3f}"
                )
        if step % settings.checkpoint_every == 0:
            checkpoint()
        minutes = (time.perf_counter() - started) / 60
        if settings.max_minutes is not None and minutes >= settings.max_minutes:
            if bar is not None:
                bar.write(f"stopping at step {step}: the {settings.max_minutes} minute budget is spent")
            break
    log.seconds = time.perf_counter() - started
    checkpoint()  # the last step's state, so that a longer --steps resumes from where training stopped
    if settings.keep_best and best is not None:
        policy.model.load_state_dict(best)
        if bar is not None:
            bar.write(f"keeping the weights of step {log.kept_step} (lowest validation loss)")
    if bar is not None:
        bar.close()
    return log


def plot_losses(log: TrainLog, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    window = max(1, len(log.loss) // 100)
    smooth = np.convolve(log.loss, np.ones(window) / window, mode="valid") if log.loss else np.zeros(0)
    a.plot(log.steps[: len(smooth)], smooth, label="train (smoothed)")
    a.plot(log.val_steps, log.val_loss, "o-", label="validation")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("action-token cross-entropy")
    a.legend()
    b.plot(log.val_steps, log.val_accuracy, "o-")
    b.set_ylim(0, 1)
    b.set_xlabel("step")
    b.set_title("validation: all action tokens right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_log(log: TrainLog, path: Path) -> None:
    path.write_text(json.dumps(asdict(log)))
