"""The VLA: transformers LLaVA backbone + word-level tokenizer + action tokenizer."""

from .action_tokenizer import ActionTokenizer
from .configuration_vla import BackboneShape, VLAConfig
from .modeling_vla import ActionResult, Observation, VLAPolicy, build_backbone

__all__ = ["ActionResult", "ActionTokenizer", "BackboneShape", "Observation", "VLAConfig", "VLAPolicy",
           "build_backbone"]
