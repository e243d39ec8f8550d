"""Tiny, randomly initialised transformers VLMs built in-process (nothing is downloaded).

Prompts interleave several frames with text, like a VLA prompt: BOS, system text, frame, text,
frame, instruction.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PixtralVisionConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
)

LLAVA_IMAGE_TOKEN = 60
LLAVA_TOKENS_PER_IMAGE = 4  # (16 / 8) ** 2 patches, CLS dropped
QWEN_IMAGE_TOKEN, QWEN_VISION_START, QWEN_VISION_END = 61, 62, 63
QWEN_TOKENS_PER_IMAGE = 4  # grid 1 x 4 x 4 patches merged 2 x 2
# Decoder and vision-tower shapes shared by the families below (4 query / 2 KV heads, one vision layer).
TEXT_TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)
VISION_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def tiny_llava(seed: int = 0, attn: str = "sdpa", window: int | None = None) -> LlavaForConditionalGeneration:
    """LLaVA with a CLIP tower and a grouped-query Llama decoder (4 query heads, 2 KV heads).

    ``window``: a Mistral decoder with that sliding window instead (every layer windowed)."""
    torch.manual_seed(seed)
    text = LlamaConfig(**TEXT_TINY) if window is None else MistralConfig(**TEXT_TINY, head_dim=8, sliding_window=window)
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


def tiny_qwen2_vl(seed: int = 0, attn: str = "sdpa", window: int | None = None) -> Qwen2VLForConditionalGeneration:
    """Qwen2-VL (M-RoPE, its own vision tower) with a grouped-query Qwen2 decoder.

    ``window``: the second decoder layer slides over that many keys (Qwen2's ``max_window_layers``)."""
    torch.manual_seed(seed)
    sliding = {} if window is None else dict(use_sliding_window=True, sliding_window=window, max_window_layers=1)
    config = Qwen2VLConfig(
        text_config=dict(
            **sliding,
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


SIGLIP_TINY = dict(**VISION_TINY, image_size=16)
GEMMA_TINY = dict(**TEXT_TINY, head_dim=8)
GEMMA3_IMAGE_TOKEN, GEMMA3_BOI, GEMMA3_EOI = 60, 58, 59


def tiny_paligemma(seed: int = 0, attn: str = "sdpa") -> PaliGemmaForConditionalGeneration:
    """PaliGemma (pi0's backbone): SigLIP + Gemma, whose text config declares bidirectional attention."""
    torch.manual_seed(seed)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**SIGLIP_TINY, patch_size=8),
        text_config=GemmaConfig(**GEMMA_TINY),
        image_token_index=LLAVA_IMAGE_TOKEN,
        projection_dim=32,
        attn_implementation=attn,
    )
    return PaliGemmaForConditionalGeneration(config).eval()


def paligemma_inputs(prefix: int | None = 7) -> dict[str, torch.Tensor]:
    """Two frames and text, PaliGemma-style: images first. ``prefix``: how many leading tokens form the
    bidirectional prefix (token type 0; the rest 1, PaliGemma's suffix); None: no token types (causal)."""
    ids = [LLAVA_IMAGE_TOKEN] * 4 + [1, 5, 6] + [LLAVA_IMAGE_TOKEN] * 4 + [7, 20, 21, 22]
    inputs = {"input_ids": torch.tensor([ids]), "pixel_values": llava_pixels(2)}
    if prefix is not None:
        inputs["token_type_ids"] = (torch.arange(len(ids)) >= prefix).long()[None]
    return inputs


def tiny_gemma3(seed: int = 0, attn: str = "sdpa", window: int = 4) -> Gemma3ForConditionalGeneration:
    """Gemma3: a sliding-window layer (``window`` keys) then a full one; images bidirectional within themselves."""
    torch.manual_seed(seed)
    text = Gemma3TextConfig(**GEMMA_TINY, sliding_window=window, layer_types=["sliding_attention", "full_attention"])
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**SIGLIP_TINY, patch_size=8),
        mm_tokens_per_image=4,
        image_token_index=GEMMA3_IMAGE_TOKEN,
        boi_token_index=GEMMA3_BOI,
        eoi_token_index=GEMMA3_EOI,
        attn_implementation=attn,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def gemma3_inputs(token_types: bool = True) -> dict[str, torch.Tensor]:
    """BOS, text, two frames in begin/end-of-image markers, instruction; token types 1 on image tokens,
    as Gemma3's processor returns them."""
    frame = [GEMMA3_BOI] + [GEMMA3_IMAGE_TOKEN] * 4 + [GEMMA3_EOI]
    ids = torch.tensor([[1, 5, *frame, 6, 7, *frame, 20, 21, 22]])
    inputs = {"input_ids": ids, "pixel_values": llava_pixels(2)}
    if token_types:
        inputs["token_type_ids"] = (ids == GEMMA3_IMAGE_TOKEN).long()
    return inputs


def interleaved_prompt(tokens_per_image: int, frames: int = 2) -> torch.Tensor:
    """(1, L): BOS, text, each frame's placeholders followed by one text token, instruction."""
    ids = [1, 5, 6]
    for f in range(frames):
        ids += [LLAVA_IMAGE_TOKEN] * tokens_per_image + [8 + f]
    return torch.tensor([ids + [20, 21, 22]])


def tiny_idefics3(seed: int = 0, attn: str = "sdpa") -> Idefics3ForConditionalGeneration:
    """Idefics3 (SmolVLM): its own vision tower, pixel shuffle by 2: 16 patches -> 4 tokens per image."""
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config=dict(**VISION_TINY, image_size=16, patch_size=4),
        text_config=LlamaConfig(**TEXT_TINY),
        scale_factor=2,
        image_token_id=LLAVA_IMAGE_TOKEN,
        attn_implementation=attn,
    )
    return Idefics3ForConditionalGeneration(config).eval()


def idefics3_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": interleaved_prompt(4), "pixel_values": llava_pixels(2)[None]}  # (1, images, C, H, W)


def tiny_internvl(seed: int = 0, attn: str = "sdpa") -> InternVLForConditionalGeneration:
    """InternVL: InternViT + a Qwen2 decoder, pixel shuffle 0.5: 4 tokens per 16 px image."""
    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config=dict(**VISION_TINY, image_size=[16, 16], patch_size=[4, 4]),
        text_config=Qwen2Config(**TEXT_TINY),
        downsample_ratio=0.5,
        image_token_id=LLAVA_IMAGE_TOKEN,
        attn_implementation=attn,
    )
    return InternVLForConditionalGeneration(config).eval()


def internvl_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": interleaved_prompt(4), "pixel_values": llava_pixels(2)}


def tiny_mistral3(seed: int = 0, attn: str = "sdpa", window: int | None = 5) -> Mistral3ForConditionalGeneration:
    """Mistral3: Pixtral tower, 2x2 patch merger, a Mistral decoder with a sliding window."""
    torch.manual_seed(seed)
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(**VISION_TINY, image_size=16, patch_size=4, head_dim=8),
        text_config=MistralConfig(**TEXT_TINY, head_dim=8, sliding_window=window),
        spatial_merge_size=2,
        image_token_index=LLAVA_IMAGE_TOKEN,
        attn_implementation=attn,
    )
    return Mistral3ForConditionalGeneration(config).eval()


def mistral3_inputs() -> dict[str, torch.Tensor]:
    return {
        "input_ids": interleaved_prompt(4),
        "pixel_values": llava_pixels(2),
        "image_sizes": torch.tensor([[16, 16], [16, 16]]),
    }


def tiny_qwen2_5_vl(seed: int = 0, attn: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL: windowed vision attention in the tower, M-RoPE in the decoder."""
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **TEXT_TINY, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            out_hidden_size=32,
            window_size=8,
            fullatt_block_indexes=[0],
        ),
        image_token_id=QWEN_IMAGE_TOKEN,
        video_token_id=59,
        vision_start_token_id=QWEN_VISION_START,
        vision_end_token_id=QWEN_VISION_END,
        attn_implementation=attn,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_llava_next(seed: int = 0, attn: str = "sdpa") -> LlavaNextForConditionalGeneration:
    """LLaVA-NeXT: any-resolution tiling; a 16 px image on the 16 px grid = base 4 + tile 4 + 2 newlines = 10 tokens."""
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION_TINY, image_size=16, patch_size=8),
        text_config=LlamaConfig(**TEXT_TINY),
        image_token_index=LLAVA_IMAGE_TOKEN,
        image_grid_pinpoints=[[16, 16]],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        attn_implementation=attn,
    )
    return LlavaNextForConditionalGeneration(config).eval()


def llava_next_inputs() -> dict[str, torch.Tensor]:
    pixels = torch.randn(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # (images, base + tile, C, H, W)
    return {
        "input_ids": interleaved_prompt(10),
        "pixel_values": pixels,
        "image_sizes": torch.tensor([[16, 16], [16, 16]]),
    }


def tiny_llava_onevision(seed: int = 0, attn: str = "sdpa") -> LlavaOnevisionForConditionalGeneration:
    """LLaVA-OneVision: SigLIP + a Qwen2 decoder, any-resolution tiling (10 tokens per 16 px image, as NeXT)."""
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION_TINY, image_size=16, patch_size=8),
        text_config=dict(model_type="qwen2", **TEXT_TINY),
        image_token_index=LLAVA_IMAGE_TOKEN,
        image_grid_pinpoints=[[16, 16]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        attn_implementation=attn,
    )
    return LlavaOnevisionForConditionalGeneration(config).eval()
