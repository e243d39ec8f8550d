"""The parallel action head: the whole chunk read off placeholders in the prompt's one forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from paths import REPO
from policy_cases import CAMERAS, INSTRUCTION, episodes, observation, tiny_libero_policy

from fm_agent.attention import ALL_SPEC_LABELS, FutureAttention, FutureMaskSpec
from fm_agent.data.episodes import EpisodeArrays, Sample, all_samples
from fm_agent.model import ActionTokenizer, Observation, VLAConfig, VLAPolicy
from fm_agent.training.loop import TrainSettings, forward_loss, make_batch, train


def parallel_policy(chunk: int = 3, seed: int = 0, head: str = "parallel") -> VLAPolicy:
    rng = np.random.default_rng(seed)
    return tiny_libero_policy(ActionTokenizer.fit(rng.uniform(-1, 1, (500, 7)), bins=32, chunk=chunk), head, seed)


def count_decoder_calls(policy: VLAPolicy) -> list[int]:
    calls: list[int] = []
    policy.model.model.language_model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_one_forward_per_chunk_under_every_mask(label: str) -> None:
    policy = parallel_policy(chunk=4)
    calls = count_decoder_calls(policy)
    result = policy.predict([observation()], FutureMaskSpec.parse(label))[0]
    assert len(calls) == 1, f"{label}: {len(calls)} decoder passes for one chunk"
    assert result.actions.shape == (4, 7) and np.all(np.abs(result.actions) <= 1)
    lo, hi = policy.actions.token_range()
    assert np.all((result.tokens >= lo) & (result.tokens < hi)), "constrained to action tokens"


def test_prompt_ends_in_one_placeholder_per_action_token() -> None:
    policy = parallel_policy(chunk=3)
    ids = policy.prompt_ids(INSTRUCTION, np.zeros(8))
    query = policy.tokenizer.convert_tokens_to_ids("<query>")
    n = policy.actions.tokens_per_call
    assert ids[-n:] == [query] * n and ids[-n - 1] == policy.tokenizer.convert_tokens_to_ids("<action>")
    autoregressive = parallel_policy(chunk=3, head="autoregressive")
    assert autoregressive.prompt_ids(INSTRUCTION, np.zeros(8))[-1] == policy.tokenizer.convert_tokens_to_ids("<action>")
    assert policy.prompt_capacity() == autoregressive.prompt_capacity()


def test_serving_reads_the_logits_training_scores() -> None:
    """The tokens ``predict`` returns are the constrained argmax of the logits the training loss sees."""
    policy = parallel_policy(chunk=3)
    data = episodes(1)
    batch = make_batch(policy, data, [Sample(0, 5)])
    spec = FutureMaskSpec.parse("Mf+merge")
    n, (lo, hi) = policy.actions.tokens_per_call, policy.actions.token_range()
    with torch.no_grad():
        logits = policy.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            future_attention=FutureAttention(spec, batch["visual"]),
        ).logits[:, -n:, lo:hi]
    from fm_agent.data.episodes import history_frames

    e = data[0]
    obs = Observation(history_frames(e, 5, 2, policy.config.history_stride), e.instruction, e.proprio[5])
    served = policy.predict([obs], spec)[0].tokens
    assert np.array_equal(served, (logits.argmax(-1)[0] + lo).numpy())


def test_targets_never_enter_the_input_and_masks_matter() -> None:
    policy = parallel_policy(chunk=2)
    base = episodes(1)[0]
    other = EpisodeArrays(base.instruction, base.frames, base.proprio, -base.actions, {})
    a, b = (make_batch(policy, [e], [Sample(0, 4)]) for e in (base, other))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert not torch.equal(a["targets"], b["targets"])
    results = {
        label: policy.predict([observation(3)], FutureMaskSpec.parse(label))[0].tokens
        for label in ("causal", "Mf/prefill")
    }
    assert not np.array_equal(results["causal"], results["Mf/prefill"]), "visual rows see the placeholders under Mf"


def test_batch_equals_single_and_sampling_is_seeded() -> None:
    policy = parallel_policy(chunk=3)
    observations = [observation(s, proprio=0.1 * s) for s in range(3)]
    observations[1] = Observation(observations[1].frames, "place the bowl", observations[1].proprio)  # padding
    spec = FutureMaskSpec.parse("Mv2t+merge")
    batched = policy.predict(observations, spec)
    for o, b in zip(observations, batched):
        assert np.array_equal(policy.predict([o], spec)[0].tokens, b.tokens)
    from fm_agent.model import step_generator

    def sampled(seed: int) -> np.ndarray:
        o = observation(1)
        return policy.predict([Observation(o.frames, o.instruction, o.proprio, 50.0, step_generator(seed, 0))], spec)[
            0
        ].tokens

    assert np.array_equal(sampled(4), sampled(4))
    assert any(not np.array_equal(sampled(4), sampled(s)) for s in (5, 6, 7))


@pytest.mark.parametrize("mask", ["causal", "Mf/prefill", "Mv2t+merge"])
def test_parallel_training_lowers_the_loss(mask: str, tmp_path) -> None:
    policy, data = parallel_policy(chunk=2), episodes(4)
    policy.model.train()
    batch = make_batch(policy, data, all_samples(data)[:16])
    spec = FutureMaskSpec.parse(mask)
    with torch.no_grad():
        before = forward_loss(policy, batch, spec)[0].item()
    settings = TrainSettings(
        steps=20,
        batch_size=16,
        lr=3e-3,
        warmup=2,
        train_masks=(mask,),
        validate_every=20,
        checkpoint_every=20,
        threads=1,
    )
    train(policy, data, data[:1], settings, tmp_path)
    policy.model.eval()
    with torch.no_grad():
        after = forward_loss(policy, batch, spec)[0].item()
    assert after < before * 0.8, (before, after)


def test_save_load_keeps_the_head(tmp_path) -> None:
    policy = parallel_policy(chunk=3)
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path)
    assert loaded.parallel and loaded.config.action_head == "parallel"
    spec = FutureMaskSpec.parse("Mf+merge")
    assert np.array_equal(
        policy.predict([observation()], spec)[0].tokens, loaded.predict([observation()], spec)[0].tokens
    )


def test_a_tokenizer_without_placeholders_is_refused(tmp_path) -> None:

    checkpoint = REPO / "checkpoints" / "libero_spatial"
    config = VLAConfig.load(checkpoint)
    config.action_head = "parallel"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    config.save(tmp_path)
    with pytest.raises(ValueError, match="<query>"):
        VLAPolicy.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="action_head"):
        VLAConfig(
            env_family="libero", cameras=CAMERAS, image_size=16, history=2, action_tokenizer={}, action_head="diffusion"
        )
