"""The VLA: transformers LLaVA backbone + word-level tokenizer + action tokenizer."""

from .action_tokenizer import ActionTokenizer
from .configuration_vla import BackboneShape, VLAConfig
from .modeling_vla import (
    ActionResult,
    Observation,
    PreparedObservation,
    VLAPolicy,
    build_backbone,
    fit_image,
    step_generator,
)

__all__ = [
    "ActionResult",
    "ActionTokenizer",
    "BackboneShape",
    "Observation",
    "PreparedObservation",
    "VLAConfig",
    "VLAPolicy",
    "build_backbone",
    "fit_image",
    "step_generator",
]
