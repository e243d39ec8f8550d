"""The VLA: transformers LLaVA backbone + word-level tokenizer + action tokenizer."""

from .action_tokenizer import ActionTokenizer
from .checkpoint import CheckpointError
from .configuration_vla import BackboneShape, VLAConfig
from .history import EpisodeHistory
from .modeling_vla import (
    ActionResult,
    Observation,
    PreparedObservation,
    VLAPolicy,
    build_backbone,
    fit_image,
    step_generator,
)
from .processor import VLAProcessor

__all__ = [
    "ActionResult",
    "ActionTokenizer",
    "CheckpointError",
    "BackboneShape",
    "EpisodeHistory",
    "Observation",
    "PreparedObservation",
    "VLAConfig",
    "VLAPolicy",
    "VLAProcessor",
    "build_backbone",
    "fit_image",
    "step_generator",
]
