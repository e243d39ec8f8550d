"""The FAST action encoding: DCT + rounding + BPE, decoded under a length constraint, trained with padded
targets, and served through the same exact decode paths as binned actions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from policy_cases import CAMERAS, episodes, observation, tiny_libero_policy

from fm_agent.attention import ALL_SPEC_LABELS, FutureMaskSpec
from fm_agent.data.episodes import action_chunk, all_samples
from fm_agent.jobs import ConfigError
from fm_agent.model import ActionTokenizer, Observation, VLAConfig, VLAPolicy, step_generator
from fm_agent.model.fast_actions import FastCodec, LengthConstraint, coefficient_limit, dct_matrix
from fm_agent.training.config import TrainConfig
from fm_agent.training.loop import TrainSettings, forward_loss, make_batch, train

CHUNK, DIMS = 4, 7


def smooth_chunks(n: int, seed: int = 0, chunk: int = CHUNK) -> np.ndarray:
    """(n, chunk, DIMS) normalised chunks of slow motion near rest, as most of a demonstration is."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-0.2, 0.2, (n, 1, DIMS))
    return np.clip(start + np.cumsum(rng.normal(0, 0.02, (n, chunk, DIMS)), axis=1), -1, 1)


def fast_tokenizer(seed: int = 0, chunk: int = CHUNK, vocab: int = 256) -> ActionTokenizer:
    chunks = smooth_chunks(600, seed, chunk)
    return ActionTokenizer.fit_fast(chunks.reshape(-1, DIMS), chunks, scale=10.0, vocab=vocab)


def fast_policy(seed: int = 0) -> VLAPolicy:
    return tiny_libero_policy(fast_tokenizer(seed), seed=seed)


# -- the codec ----------------------------------------------------------------------------------------


def test_dct_matrix_is_the_orthonormal_dct_ii() -> None:
    for length in (1, 4, 7, 16):
        matrix = dct_matrix(length)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(length), atol=1e-12)
        signal = np.random.default_rng(length).normal(size=length)
        n = np.arange(length)
        by_sum = [
            (math.sqrt(1 / length) if k == 0 else math.sqrt(2 / length))
            * np.sum(signal * np.cos(np.pi * (n + 0.5) * k / length))
            for k in range(length)
        ]
        np.testing.assert_allclose(matrix @ signal, by_sum, atol=1e-12)


def test_round_trip_error_is_rounding_only_and_smooth_chunks_compress() -> None:
    codec = FastCodec.fit(smooth_chunks(600, 0), scale=10.0, vocab=256)
    held_out = smooth_chunks(200, 1)
    lengths, worst = [], 0.0
    for chunk in held_out:
        tokens = codec.encode(chunk)
        lengths.append(len(tokens))
        worst = max(worst, float(np.abs(codec.decode(tokens) - chunk).max()))
    # each coefficient is off by at most half a step (0.5 / scale); an orthonormal inverse keeps a
    # dimension's error within the L2 norm of its CHUNK coefficient errors
    assert worst <= 0.5 * math.sqrt(CHUNK) / 10.0 + 1e-9
    assert np.mean(lengths) < CHUNK * DIMS / 3, f"{np.mean(lengths):.1f} tokens per chunk: BPE learned no merges"


def test_every_chunk_in_range_encodes_and_decodes() -> None:
    codec = FastCodec.fit(smooth_chunks(300, 0), scale=10.0, vocab=128)
    rng = np.random.default_rng(0)
    alternating = np.where(np.arange(CHUNK)[:, None] % 2 == 0, 1.0, -1.0) * np.ones((CHUNK, DIMS))
    extreme = [np.ones((CHUNK, DIMS)), -np.ones((CHUNK, DIMS)), alternating, rng.uniform(-1, 1, (CHUNK, DIMS))]
    for chunk in extreme:
        tokens = codec.encode(chunk)
        assert 1 <= len(tokens) <= CHUNK * DIMS
        assert codec.decode(tokens).shape == (CHUNK, DIMS)
    assert coefficient_limit(CHUNK, 10.0) == 20  # |DCT| of values in [-1, 1] over 4 steps <= 2
    with pytest.raises(ValueError, match="coefficients"):
        codec.decode(codec.encode(extreme[3])[:-1])


def test_the_length_constraint_only_lets_valid_chunks_out() -> None:
    codec = FastCodec.fit(smooth_chunks(300, 0), scale=10.0, vocab=128)
    total = CHUNK * DIMS
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        constraint = LengthConstraint(codec.token_lengths, batch=3, total=total)
        steps = []
        while not constraint.done:
            logits = constraint.mask(torch.randn(3, codec.vocab_size, generator=generator) * 5)
            if seed % 2:  # sampled
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            else:
                token = logits.argmax(-1, keepdim=True)
            active = constraint.remaining > 0
            assert torch.all(codec.token_lengths[token[active, 0]] <= constraint.remaining[active])
            constraint.update(token)
            steps.append(token)
            assert len(steps) <= total
        rows = constraint.split(torch.cat(steps, -1).numpy())
        for row in rows:
            assert codec.decode(row).shape == (CHUNK, DIMS)
            assert codec.token_lengths[torch.as_tensor(row)].sum() == total


def test_action_tokenizer_round_trips_and_refuses_broken_fast_fields() -> None:
    tokenizer = fast_tokenizer()
    tokenizer.offset = 40
    again = ActionTokenizer.from_dict(tokenizer.to_dict())
    actions = np.random.default_rng(0).uniform(-1, 1, (CHUNK, DIMS))
    ids = tokenizer.encode(actions)
    assert np.array_equal(again.encode(actions), ids) and again.variable_length and tokenizer.tokens_per_call == 28
    lo, hi = tokenizer.token_range()
    assert hi - lo == tokenizer.bins and np.all((ids >= lo) & (ids < hi))
    np.testing.assert_array_equal(again.decode(ids), tokenizer.decode(ids))
    fields = tokenizer.to_dict()
    with pytest.raises(ValueError, match="bpe"):
        ActionTokenizer.from_dict({**fields, "fast": {"scale": 10.0, "bpe": "{not json"}})
    with pytest.raises(ValueError, match="bins says"):
        ActionTokenizer.from_dict({**fields, "bins": fields["bins"] + 1})
    with pytest.raises(ValueError, match="encoding"):
        ActionTokenizer.from_dict({**fields, "encoding": "vq"})
    with pytest.raises(ValueError, match="parallel"):
        VLAConfig("libero", CAMERAS, 16, 2, fields, action_head="parallel")
    with pytest.raises(ValueError, match="only the FAST"):
        ActionTokenizer.fit(actions).length_constraint(1)


# -- the policy: exact paths, batches, sampling -----------------------------------------------------


def mixed_batch() -> list[Observation]:
    observations = [observation(s, proprio=0.3 * s - 0.5) for s in range(4)]
    observations[2] = Observation(observations[2].frames, "place the bowl", observations[2].proprio)  # padding
    return observations


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_fast_decode_and_vision_reuse_give_the_reference_tokens(label: str) -> None:
    policy = fast_policy()
    reference = VLAPolicy(policy.model, policy.tokenizer, policy.config, fast_decode=False, reuse_vision=False)
    spec = FutureMaskSpec.parse(label)
    observations = mixed_batch()
    for fast, slow in zip(policy.predict(observations, spec), reference.predict(observations, spec), strict=True):
        assert np.array_equal(fast.tokens, slow.tokens), label
        np.testing.assert_array_equal(fast.actions, slow.actions)


def test_a_batch_whose_rows_finish_apart_equals_each_row_alone() -> None:
    policy = fast_policy()
    spec = FutureMaskSpec.parse("Mv2t+merge")
    observations = mixed_batch()
    batched = policy.predict(observations, spec)
    assert len({len(r.tokens) for r in batched}) > 1, "the rows should need different numbers of tokens"
    for o, b in zip(observations, batched, strict=True):
        alone = policy.predict([o], spec)[0]
        assert np.array_equal(alone.tokens, b.tokens)
        assert b.actions.shape == (CHUNK, DIMS) and np.all(np.abs(b.actions) <= 1)


def test_decoding_stops_when_the_chunk_is_complete() -> None:
    policy = fast_policy()
    calls: list[int] = []
    policy.model.model.language_model.register_forward_hook(lambda *_: calls.append(1))
    policy.fast_decoder = None  # count every decode step through the module stack
    result = policy.predict([observation(1)])[0]
    assert len(calls) == len(result.tokens) < CHUNK * DIMS  # the prefill, then one step per further token
    assert (
        policy.actions.length_constraint(1).lengths[torch.as_tensor(result.tokens) - policy.actions.offset].sum() == 28
    )


def test_sampling_is_seeded() -> None:
    policy = fast_policy()
    spec = FutureMaskSpec.parse("Mf+merge")

    def sampled(seed: int) -> np.ndarray:
        o = observation(1)
        generator = step_generator(seed, 0)
        return policy.predict([Observation(o.frames, o.instruction, o.proprio, 50.0, generator)], spec)[0].tokens

    assert np.array_equal(sampled(4), sampled(4))
    assert any(not np.array_equal(sampled(4), sampled(s)) for s in (5, 6, 7))


def test_save_load_keeps_the_encoding(tmp_path) -> None:
    policy = fast_policy()
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path)
    assert loaded.actions.variable_length and loaded.actions.fast == policy.actions.fast
    spec = FutureMaskSpec.parse("Mf+merge")
    assert np.array_equal(
        policy.predict([observation()], spec)[0].tokens, loaded.predict([observation()], spec)[0].tokens
    )


# -- training ---------------------------------------------------------------------------------------


def target_logprobs(policy: VLAPolicy, batch: dict, row: int) -> torch.Tensor:
    """Log-probabilities of row ``row``'s target tokens under teacher forcing."""
    with torch.no_grad():
        logits = policy.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits[row, :-1]
    labels = batch["labels"][row, 1:]
    keep = labels != -100
    return torch.log_softmax(logits[keep].double(), -1).gather(-1, labels[keep, None])[:, 0]


def test_padded_targets_leave_each_rows_log_probabilities_unchanged() -> None:
    policy, data = fast_policy(), episodes(2, steps=16, smooth=True)
    samples = all_samples(data)
    lengths = {s: len(policy.actions.encode(action_chunk(data[s.episode], s.step, CHUNK))) for s in samples}
    short = min(samples, key=lengths.__getitem__)
    long = max(samples, key=lengths.__getitem__)
    assert lengths[short] < lengths[long]
    batch = make_batch(policy, data, [short, long])
    assert (batch["labels"] != -100).sum(-1).tolist() == [lengths[short], lengths[long]]
    for row, sample in enumerate((short, long)):
        alone = make_batch(policy, data, [sample])
        torch.testing.assert_close(
            target_logprobs(policy, batch, row), target_logprobs(policy, alone, 0), atol=1e-5, rtol=1e-5
        )


def test_fast_training_lowers_the_loss(tmp_path) -> None:
    policy, data = fast_policy(), episodes(4, smooth=True)
    batch = make_batch(policy, data, all_samples(data)[:16])
    spec = FutureMaskSpec.parse("Mv2t+merge")
    with torch.no_grad():
        before = forward_loss(policy, batch, spec)[0].item()
    settings = TrainSettings(steps=20, batch_size=16, lr=3e-3, warmup=2, train_masks=("Mv2t+merge",),
                             validate_every=20, checkpoint_every=20, threads=1)  # fmt: skip
    train(policy, data, data[:1], settings, tmp_path)
    policy.model.eval()
    with torch.no_grad():
        after, correct = forward_loss(policy, batch, spec)
    assert after.item() < before * 0.8, (before, after.item())
    assert correct.shape == (16,)


def test_train_refuses_fast_where_it_cannot_work(tmp_path) -> None:
    def config(**overrides) -> TrainConfig:
        return TrainConfig(preset="libero", data=[tmp_path], out=tmp_path / "out", **overrides)

    with pytest.raises(ConfigError, match="autoregressive"):
        config(action_encoding="fast", action_head="parallel").validate()
    with pytest.raises(ConfigError, match="libero"):
        TrainConfig(preset="babyai", data=[tmp_path], out=tmp_path / "o", action_encoding="fast").validate()
    with pytest.raises(ConfigError, match="fast-scale"):
        config(action_encoding="fast", fast_scale=0.0).validate()
    config(action_encoding="fast").validate()


def test_the_step_profile_counts_the_tokens_a_fast_step_decodes() -> None:
    from fm_agent.profiling.step import time_step_parts

    policy = fast_policy()
    parts = time_step_parts(policy, policy, FutureMaskSpec(), observation(1))
    assert parts["tokens"] == len(policy.predict([observation(1)])[0].tokens) < CHUNK * DIMS
    assert parts["step_ms"] > 0 and parts["forward_ms"] > 0
