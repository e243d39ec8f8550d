"""Tiny, randomly initialised transformers VLMs built in-process (nothing is downloaded).

Prompts interleave several frames with text, like a VLA prompt: BOS, system text, frame, text,
frame, instruction.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

LLAVA_IMAGE_TOKEN = 60
LLAVA_TOKENS_PER_IMAGE = 4  # (16 / 8) ** 2 patches, CLS dropped
QWEN_IMAGE_TOKEN, QWEN_VISION_START, QWEN_VISION_END = 61, 62, 63
QWEN_TOKENS_PER_IMAGE = 4  # grid 1 x 4 x 4 patches merged 2 x 2


def tiny_llava(seed: int = 0, attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """LLaVA with a CLIP tower and a grouped-query Llama decoder (4 query heads, 2 KV heads)."""
    torch.manual_seed(seed)
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=LLAVA_IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        attn_implementation=attn,
    )
    return LlavaForConditionalGeneration(config).eval()


def llava_prompt(frames: int = 2, text_between: int = 2) -> torch.Tensor:
    """(1, L) ids: BOS, 3 system tokens, then frames separated by text, then 3 instruction tokens."""
    ids = [1, 5, 6, 7]
    for f in range(frames):
        ids += [LLAVA_IMAGE_TOKEN] * LLAVA_TOKENS_PER_IMAGE
        ids += [8 + f] * (text_between if f < frames - 1 else 0)
    ids += [20, 21, 22]
    return torch.tensor([ids])


def llava_pixels(frames: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def tiny_qwen2_vl(seed: int = 0, attn: str = "sdpa") -> Qwen2VLForConditionalGeneration:
    """Qwen2-VL (M-RoPE, its own vision tower) with a grouped-query Qwen2 decoder."""
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=QWEN_IMAGE_TOKEN,
        video_token_id=59,
        vision_start_token_id=QWEN_VISION_START,
        vision_end_token_id=QWEN_VISION_END,
        attn_implementation=attn,
    )
    return Qwen2VLForConditionalGeneration(config).eval()


def qwen_inputs(frames: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Prompt ids with vision start/end around each frame, flattened patches and grid sizes."""
    ids = [1, 5, 6]
    for f in range(frames):
        ids += [QWEN_VISION_START] + [QWEN_IMAGE_TOKEN] * QWEN_TOKENS_PER_IMAGE + [QWEN_VISION_END, 8 + f]
    ids += [20, 21, 22]
    patch_dim = 3 * 2 * 4 * 4  # channels * temporal patch * patch * patch
    pixels = torch.randn(frames * 16, patch_dim, generator=torch.Generator().manual_seed(seed))
    grid = torch.tensor([[1, 4, 4]] * frames)
    input_ids = torch.tensor([ids])
    mm_token_type_ids = (input_ids == QWEN_IMAGE_TOKEN).int()  # 1 marks image tokens, as the processor does
    return {
        "input_ids": input_ids,
        "pixel_values": pixels,
        "image_grid_thw": grid,
        "mm_token_type_ids": mm_token_type_ids,
    }
