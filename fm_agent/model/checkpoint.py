"""What a servable checkpoint folder holds, and the checks that run when one loads.

A folder is a transformers ``save_pretrained`` image-text-to-text model (``config.json`` and the
weights), its tokenizer (``tokenizer.json``, with fm-agent's reserved tokens) and
``fm_agent_policy.json`` (:class:`~fm_agent.model.configuration_vla.VLAConfig`: cameras, image size,
history, prompt order, the action tokenizer). ``docs/checkpoints.md`` describes the format and
``fm-agent import`` builds one from a user's own VLM folder.

Everything a server would otherwise discover at its first ``Act`` (a vocabulary larger than the
embedding table, an image-token id the model does not use, a tokens-per-image mismatch, missing
action statistics, an action offset that points at structural tokens) is found here, before the
server opens its port, and reported as one :class:`CheckpointError` naming the file and the field
to fix. A request can then only fail for what the request itself carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..attention.fast_decode import FastDecoder
from ..jobs import ConfigError
from .configuration_vla import POLICY_FILE
from .processor import Observation
from .text_tokenizer import ACTION, BOS, FRAME, IMAGE, INSTRUCTION, PROPRIO, QUERY, action_token, proprio_token

if TYPE_CHECKING:
    from .modeling_vla import VLAPolicy

MODEL_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
IMPORT_HINT = "fm-agent import builds it from a transformers VLM folder; see docs/checkpoints.md"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be served; the message names the file and field to fix."""

    def __init__(self, folder: Path, file: str, field: str, problem: str) -> None:
        self.file, self.field = file, field
        super().__init__(f"{Path(folder) / file}: {field}: {problem}")


def check_files(folder: Path) -> None:
    """The three files exist; raised before anything is parsed, so the error says what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "", "folder", "does not exist")
    wanted = {
        MODEL_FILE: "the transformers model config (save_pretrained writes it)",
        TOKENIZER_FILE: f"the tokenizer, with fm-agent's reserved tokens ({IMPORT_HINT})",
        POLICY_FILE: f"the policy's prompt and action conventions ({IMPORT_HINT})",
    }
    for name, what in wanted.items():
        if not (folder / name).exists():
            raise CheckpointError(folder, name, "file", f"missing: {what}")


def validate_policy(policy: VLAPolicy, folder: Path) -> None:
    """Cross-check the three files against each other and run one dummy step; raise CheckpointError."""
    folder = Path(folder)
    config, tokenizer, model = policy.config, policy.tokenizer, policy.model
    text_config = model.config.get_text_config()
    unk = tokenizer.unk_token_id

    def token(name: str) -> int:
        value = tokenizer.convert_tokens_to_ids(name)
        if not isinstance(value, int) or value == unk:
            raise CheckpointError(
                folder, TOKENIZER_FILE, "added_tokens", f"lacks the reserved token {name} ({IMPORT_HINT})"
            )
        return value

    needed = [BOS, IMAGE, FRAME, INSTRUCTION, ACTION] + ([PROPRIO] if config.proprio_dim else [])
    needed += [QUERY] if config.action_head == "parallel" else []
    needed += [proprio_token(k) for k in range(config.proprio_bins)] if config.proprio_dim else []
    ids = {name: token(name) for name in needed}

    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise CheckpointError(
            folder,
            MODEL_FILE,
            "text_config.vocab_size",
            f"the tokenizer has {len(tokenizer)} tokens but the embedding table {rows} rows "
            "(resize the embeddings: model.resize_token_embeddings(len(tokenizer)))",
        )
    image_id = next(
        (
            getattr(model.config, a)
            for a in ("image_token_id", "image_token_index")
            if getattr(model.config, a, None) is not None
        ),
        None,
    )
    if image_id != ids[IMAGE]:
        raise CheckpointError(
            folder, MODEL_FILE, "image_token_id", f"is {image_id}, but the tokenizer's {IMAGE} is id {ids[IMAGE]}"
        )
    _check_actions(policy, folder, rows, set(ids.values()))
    if config.proprio_dim and not (len(config.proprio_low) == len(config.proprio_high) == config.proprio_dim):
        raise CheckpointError(
            folder, POLICY_FILE, "proprio_low / proprio_high", f"need {config.proprio_dim} values each (proprio_dim)"
        )
    vision_size = vision_side(model.config, "image_size") or config.image_size
    if vision_size != config.image_size:
        raise CheckpointError(
            folder, POLICY_FILE, "image_size", f"is {config.image_size}, the vision tower's is {vision_size}"
        )
    tokens = features_per_image(model, config.image_size)
    if tokens is not None and tokens != config.tokens_per_image:
        raise CheckpointError(
            folder,
            POLICY_FILE,
            "image_tokens",
            f"the prompt reserves {config.tokens_per_image} placeholders per image but the vision tower yields {tokens} "
            "features (set image_tokens, or backbone.patch_size, to match)",
        )
    if policy.prompt_capacity() < 1:
        raise CheckpointError(
            folder,
            MODEL_FILE,
            "text_config.max_position_embeddings",
            f"{text_config.max_position_embeddings} positions do not hold the frames, proprio and action tokens",
        )
    _dummy_step(policy, folder)


def _check_actions(policy: VLAPolicy, folder: Path, rows: int, reserved: set[int]) -> None:
    actions, tokenizer = policy.actions, policy.tokenizer
    field = "action_tokenizer"
    if actions.kind == "continuous":
        for name in ("clip_low", "clip_high"):
            if len(getattr(actions, name)) != actions.dims:
                raise CheckpointError(
                    folder, POLICY_FILE, f"{field}.{name}", f"needs {actions.dims} values (the env's action bounds)"
                )
        if not np.all(np.asarray(actions.high) > np.asarray(actions.low)):
            raise CheckpointError(folder, POLICY_FILE, f"{field}.low / high", "every high must exceed its low")
    lo, hi = actions.token_range()
    if lo < 0 or hi > min(rows, len(tokenizer)):
        raise CheckpointError(
            folder,
            POLICY_FILE,
            f"{field}.offset",
            f"action ids [{lo}, {hi}) fall outside the {len(tokenizer)}-token vocabulary",
        )
    clash = sorted(i for i in reserved if lo <= i < hi)
    if clash:
        names = tokenizer.convert_ids_to_tokens(clash[:3])
        raise CheckpointError(
            folder,
            POLICY_FILE,
            f"{field}.offset",
            f"is {actions.offset}, so action ids [{lo}, {hi}) include prompt tokens {names}: they would be decoded as actions",
        )
    if actions.convention == "fm_agent":
        expected = [action_token(k) for k in range(actions.bins)]
        found = tokenizer.convert_ids_to_tokens(list(range(lo, hi)))
        wrong = next((k for k, (e, f) in enumerate(zip(expected, found)) if e != f), None)
        if wrong is not None:
            raise CheckpointError(
                folder,
                POLICY_FILE,
                f"{field}.offset",
                f"is {actions.offset}, so action bin {wrong} would decode id {lo + wrong} ({found[wrong]!r}), "
                f"not {expected[wrong]}; the {action_token(0)} token is id {tokenizer.convert_tokens_to_ids(action_token(0))}",
            )


def vision_side(model_config, name: str) -> int | None:
    """The vision config's ``image_size`` / ``patch_size`` as one int (families store ints or pairs)."""
    value = getattr(getattr(model_config, "vision_config", None), name, None)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return value if isinstance(value, int) else None


def features_per_image(model, image_size: int) -> int | None:
    """Features the vision path yields for one image (one tower forward), or None where the model
    offers no ``get_image_features``."""
    get_features = getattr(getattr(model, "model", None), "get_image_features", None)
    if get_features is None:
        return None
    with torch.no_grad():
        pixels = torch.zeros(1, 3, image_size, image_size, device=model.device, dtype=model.dtype)
        features = get_features(pixel_values=pixels).pooler_output
    return int(features[0].shape[0])  # one (tokens, hidden) entry per image, as a list or a tensor


# The batches a compiled decode step is warmed on at load, as instructions per request: dynamo compiles
# batch 1 (specialised), then once more for the first unpadded batch of several, the first padded one
# and a padded one of another size; after these four the batch is dynamic and nothing recompiles
# (tested). Without the warm-up a server's first micro-batch of each kind stalled 10-60 s mid-episode.
COMPILE_WARM_UP: tuple[tuple[str, ...], ...] = (
    ("go", "go"),
    ("go", "go to the left of the table"),
    ("go", "go to the left of the table", "go left"),
)


def _dummy_step(policy: VLAPolicy, folder: Path) -> None:
    config = policy.config
    size = config.image_size
    frame = {camera: np.zeros((size, size, 3), np.uint8) for camera in config.cameras}
    proprio = np.asarray(config.proprio_low, dtype=np.float64) if config.proprio_dim else None
    compiled = isinstance(policy.fast_decoder, FastDecoder) and policy.fast_decoder.compiled
    batches = (("go",), *(COMPILE_WARM_UP if compiled else ()))
    try:
        for instructions in batches:
            policy.predict([Observation([frame], instruction, proprio) for instruction in instructions])
    except Exception as error:  # anything here is the checkpoint's fault, not a request's
        raise CheckpointError(folder, "", "dummy step", f"{type(error).__name__}: {error}") from error
