"""``fm-agent train``: demonstrations in, a checkpoint with its training record out."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.episodes import EpisodeArrays, action_chunk, all_samples, load_episodes
from ..jobs import ConfigError
from ..model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy
from ..model.action_tokenizer import quantile_range
from ..model.importing import ImportSpec, import_checkpoint
from ..model.presets import PRESETS
from .config import ImportConfig, TrainConfig
from .loop import TrainLog, TrainSettings, plot_losses, save_log, train


def recorded_envs(data: Path) -> list[str]:
    """The environments the demonstrations came from, so evaluation can default to them."""
    manifest = Path(data) / "manifest.jsonl"
    if not manifest.exists():
        return []
    return sorted({json.loads(line)["env"] for line in manifest.read_text().splitlines() if line.strip()})


def build_policy(
    config: TrainConfig, instructions: list[str], train_eps: list[EpisodeArrays], proprio: np.ndarray | None
) -> VLAPolicy:
    """A fresh policy of the preset's conventions, its tokenizers fitted to the training episodes."""
    preset = PRESETS[config.preset]
    chunk = config.chunk or preset.chunk
    actions = np.concatenate([e.actions for e in train_eps])
    if preset.discrete_actions:
        action_tokenizer = ActionTokenizer.discrete(preset.discrete_actions, chunk=chunk)
    elif config.action_encoding == "fast":  # BPE fitted on the chunk that starts at every training step
        chunks = np.stack([action_chunk(e, t, chunk) for e in train_eps for t in range(len(e.actions))])
        action_tokenizer = ActionTokenizer.fit_fast(actions, chunks, scale=config.fast_scale, vocab=config.fast_vocab)
    else:
        action_tokenizer = ActionTokenizer.fit(actions, bins=config.bins, chunk=chunk)
    proprio_low, proprio_high = quantile_range(proprio) if proprio is not None else ([], [])
    vla = VLAConfig(
        env_family=config.preset,
        cameras=list(preset.cameras),
        image_size=config.image_size or preset.image_size,
        history=config.history or preset.history,
        action_tokenizer=action_tokenizer.to_dict(),
        history_stride=config.history_stride or chunk,
        prompt_order=config.prompt_order,
        action_head=config.action_head,
        proprio_dim=0 if proprio is None else proprio.shape[1],
        proprio_low=proprio_low,
        proprio_high=proprio_high,
        backbone=BackboneShape(
            hidden=config.hidden,
            layers=config.layers,
            heads=config.heads,
            kv_heads=config.kv_heads,
            intermediate=int(config.hidden * 8 / 3) // 16 * 16,
            patch_size=config.patch or preset.patch,
            family=config.backbone,
        ),
    )
    return VLAPolicy.create(vla, instructions, seed=config.seed)


def validation_split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the validation and training episodes among ``count`` loaded ones (``load_episodes``
    order): the split ``fm-agent train`` makes, so a later measurement can find its held-out episodes."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(count * val_fraction))
    return order[:n_val], order[n_val:]


def kept_validation(log: TrainLog) -> dict:
    """The validation figures of the weights that are saved: the kept step's with --keep-best, else the last."""
    if not log.val_loss:
        return {"val_loss": None, "val_action_accuracy": None}
    index = log.val_steps.index(log.kept_step) if log.kept_step is not None else -1
    kept = {"kept_step": log.kept_step} if log.kept_step is not None else {}
    return {"val_loss": log.val_loss[index], "val_action_accuracy": log.val_accuracy[index], **kept}


def run_train(config: TrainConfig, command: str = "") -> int:
    config.validate()
    preset = PRESETS[config.preset]
    episodes = [e for folder in config.data for e in load_episodes(folder, list(preset.cameras), config.max_episodes)][
        : config.max_episodes
    ]
    val_index, train_index = validation_split(len(episodes), config.val_fraction, config.seed)
    val_eps = [episodes[i] for i in val_index]
    train_eps = [episodes[i] for i in train_index]
    if not train_eps:
        raise ConfigError(f"{len(episodes)} episode(s) leave none for training beside {len(val_eps)} for validation")
    if config.init is not None:
        policy = VLAPolicy.from_pretrained(config.init)
        if policy.config.env_family != config.preset:
            raise ConfigError(f"--init {config.init} is a {policy.config.env_family} policy, not {config.preset}")
        earlier = dict(policy.config.training)  # the --init policy's own record
    else:
        proprio = np.concatenate([e.proprio for e in train_eps]) if preset.proprio else None
        policy = build_policy(config, [e.instruction for e in episodes], train_eps, proprio)
        earlier = None
    if config.temperature is not None:
        policy.config.temperature = config.temperature
    params = sum(p.numel() for p in policy.model.parameters())
    first = train_eps[0]
    prompt = policy.prompt_ids(
        first.instruction, first.proprio[0] if first.proprio is not None and policy.config.proprio_dim else None
    )
    try:  # episodes rendered every N steps give only their rendered steps, on the history's grid
        samples = all_samples(train_eps, policy.config.history_stride)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(
        f"{len(train_eps)} training / {len(val_eps)} validation episodes, "
        f"{len(samples)} samples; model {params / 1e6:.2f}M parameters; "
        f"prompt {len(prompt)} tokens"
    )
    settings = TrainSettings(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        train_masks=tuple(config.train_mask),
        validate_every=config.validate_every,
        checkpoint_every=config.validate_every,
        seed=config.seed,
        threads=config.threads,
        max_minutes=config.max_minutes,
        image_shift=config.image_shift,
        keep_best=config.keep_best,
    )
    log = train(
        policy,
        train_eps,
        val_eps,
        settings,
        config.out,
        progress=lambda **kw: tqdm(desc="training", **kw),
        resume=not config.fresh,
    )
    policy.config.training = {
        "command": command,
        "data": " ".join(map(str, config.data)),
        "episodes": len(episodes),
        "validation": {"val_fraction": config.val_fraction, "seed": config.seed, "episodes": len(val_eps)},
        "envs": sorted({env for folder in config.data for env in recorded_envs(folder)}),
        "init": str(config.init) if config.init else None,
        **({"init_training": earlier} if earlier else {}),
        "train_masks": list(config.train_mask),
        "steps": log.steps[-1] if log.steps else 0,
        "image_shift": config.image_shift,
        "minutes": round(log.seconds / 60, 2),
        "parameters": params,
        **kept_validation(log),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch_threads": config.threads,
    }
    policy.save_pretrained(config.out)
    plot_losses(log, config.out / "loss.png")
    save_log(log, config.out / "train_log.json")
    print(json.dumps(policy.config.training, indent=2))
    return 0


def run_import(config: ImportConfig, command: str = "") -> int:
    """``fm-agent import``: a user's VLM folder -> a validated fm-agent checkpoint."""
    config.validate()
    preset = PRESETS[config.preset]
    actions = proprio = None
    if config.demos is not None:
        episodes = load_episodes(config.demos, preset.cameras)
        actions = np.concatenate([e.actions.reshape(len(e.actions), -1) for e in episodes])
        samples = [e.proprio for e in episodes if e.proprio is not None]
        proprio = np.concatenate(samples) if samples and preset.proprio else None
    spec = ImportSpec(
        env_family=config.preset,
        cameras=list(preset.cameras),
        history=config.history or preset.history,
        chunk=config.chunk or preset.chunk,
        convention=config.convention,
        bins=config.bins,
        discrete_actions=preset.discrete_actions,
        actions=None if preset.discrete_actions else actions,
        action_low=list(config.action_low),
        action_high=list(config.action_high),
        proprio=proprio,
    )
    try:
        vla = import_checkpoint(config.vlm, config.out, spec)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    actions_line = ActionTokenizer.from_dict(vla.action_tokenizer)
    lo, hi = actions_line.token_range()
    print(
        f"{config.out}: servable ({vla.tokens_per_image} tokens per image, {len(vla.cameras)} camera(s), history "
        f"{vla.history}, action ids [{lo}, {hi}) by the {actions_line.convention} convention); "
        f"serve it with: fm-agent serve --checkpoint {config.out}"
    )
    return 0
