"""Vision reuse: each frame is encoded once, the step it arrives, and later steps read its features from
the episode history. The prompt is the same, so the actions are the reference path's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from serving_helpers import INSTRUCTION, TINY

from fm_agent.attention import FutureMaskSpec
from fm_agent.model import ActionTokenizer, EpisodeHistory, Observation, VLAConfig, VLAPolicy

LABELS = ("causal", "Mf/prefill", "Mv2t+merge", "Mf/full")


def policy_pair(head: str, family: str = "llava") -> tuple[VLAPolicy, VLAPolicy]:
    """The same random policy twice: reusing vision features, and encoding every frame of every step.
    ``family`` "internvl": InternViT + pixel shuffle + Qwen2 (patch 4: 16 patches, 4 tokens per image)."""
    backbone = TINY if family == "llava" else dataclasses.replace(TINY, family=family, patch_size=4)
    tokenizer = ActionTokenizer.fit(np.random.default_rng(0).uniform(-1, 1, (500, 7)), bins=32, chunk=2)
    config = VLAConfig(env_family="libero", cameras=["agentview", "wrist"], image_size=16, history=3,
                       action_tokenizer=tokenizer.to_dict(), proprio_dim=8, proprio_bins=8, proprio_low=[-1.0] * 8,
                       proprio_high=[1.0] * 8, backbone=backbone, action_head=head)  # fmt: skip
    reusing = VLAPolicy.create(config, [INSTRUCTION], seed=3)
    with torch.no_grad():  # sharper random weights, so that what the frames hold changes the actions
        for parameter in reusing.model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(4.0)
    reference = VLAPolicy(reusing.model, reusing.tokenizer, reusing.config, reuse_vision=False)
    assert reusing.reuse_vision and not reference.reuse_vision
    return reusing, reference


def frames(steps: int, policy: VLAPolicy) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    return [policy.check_frame({c: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for c in policy.config.cameras})
            for _ in range(steps)]  # fmt: skip


@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("head", ["autoregressive", "parallel"])
@pytest.mark.parametrize("label", LABELS)
def test_an_episode_with_reused_features_acts_like_one_without(head, label, family) -> None:
    torch.set_num_threads(1)
    reusing, reference = policy_pair(head, family)
    spec = FutureMaskSpec.parse(label)
    history = EpisodeHistory(reusing.config.history)
    for step, frame in enumerate(frames(6, reusing)):
        proprio = np.linspace(-1, 1, 8) * (step / 6)
        cached = Observation(
            history.with_frame(frame), INSTRUCTION, proprio, features=history.features_with_new_frame()
        )
        plain = Observation(history.with_frame(frame), INSTRUCTION, proprio)
        got, want = reusing.predict([cached], spec)[0], reference.predict([plain], spec)[0]
        assert np.array_equal(got.tokens, want.tokens), (head, label, step)
        assert (got.frame_features is None) == spec.needs_full_recompute  # full mode re-encodes pixels anyway
        history.append(frame, got.frame_features)


def test_a_step_encodes_only_the_new_frame_once(monkeypatch) -> None:
    reusing, _ = policy_pair("autoregressive")
    encoded: list[int] = []
    tower = reusing.model.model.vision_tower
    tower.register_forward_hook(lambda module, args, output: encoded.append(int(args[0].shape[0])))
    history = EpisodeHistory(reusing.config.history)
    cameras = len(reusing.config.cameras)
    for frame in frames(4, reusing):
        observation = Observation(history.with_frame(frame), INSTRUCTION, np.zeros(8),
                                  features=history.features_with_new_frame())  # fmt: skip
        result = reusing.predict([observation])[0]
        history.append(frame, result.frame_features)
    # the first step's history repeats its one frame three times: it is still encoded once
    assert encoded == [cameras] * 4


def test_features_computed_alone_match_those_computed_in_a_batch() -> None:
    reusing, _ = policy_pair("autoregressive")
    pixels = reusing.encode([Observation(frames(3, reusing), INSTRUCTION, np.zeros(8))])["pixel_values"]
    together = torch.stack(reusing.model.model.get_image_features(pixel_values=pixels).pooler_output)
    alone = torch.cat([torch.stack(reusing.model.model.get_image_features(pixel_values=row[None]).pooler_output)
                       for row in pixels])  # fmt: skip
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_the_prompt_logits_are_the_reference_ones_at_every_step() -> None:
    from fm_agent.attention import FutureAttention
    from fm_agent.attention.generation import prefill

    reusing, _ = policy_pair("autoregressive")
    spec = FutureMaskSpec.parse("Mf+merge")
    history = EpisodeHistory(reusing.config.history)
    for frame in frames(5, reusing):
        observation = Observation(history.with_frame(frame), INSTRUCTION, np.zeros(8),
                                  features=history.features_with_new_frame())  # fmt: skip
        prepared = [reusing.prepare(observation)]
        inputs = reusing.encode(prepared)
        context = FutureAttention(spec, inputs["input_ids"] == reusing.image_token_id)
        model_inputs, newest = reusing._vision_inputs(prepared, inputs, spec)
        assert "mm_encoder_outputs" in model_inputs
        got, _ = prefill(reusing.model, context, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         **model_inputs)  # fmt: skip
        want, _ = prefill(reusing.model, context, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          pixel_values=inputs["pixel_values"])  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        history.append(frame, newest[0])
