"""A policy placed the way ``fm-agent serve --static-decode --device --dtype`` places it.

On the CPU: a checkpoint loaded to decode on a static cache acts exactly like the default, binned and
FAST chunks alike; it is refused where nothing is decoded or the backbone is not a Llama; a half-precision
policy runs an episode from its cached features. On a GPU (skipped here, run by ``launch/gpu_checks.sh``):
the CUDA-graph policy acts exactly like the exact step on the same device, and like the CPU policy up to
near-ties between tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decode_checks import assert_same_chunks, observations
from policy_cases import INSTRUCTION
from test_fast_actions import fast_policy, mixed_batch
from test_parallel_head import parallel_policy

from fm_agent.attention import FutureMaskSpec
from fm_agent.attention.static_decode import StaticCacheDecoder
from fm_agent.jobs import ConfigError
from fm_agent.model import EpisodeHistory, Observation, VLAPolicy

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LABELS = ("causal", "Mf+merge", "Mv2t/prefill")


@pytest.fixture(scope="module")
def default(tiny_policy) -> VLAPolicy:
    torch.set_num_threads(1)
    return VLAPolicy.from_pretrained(tiny_policy)


def episode(policy: VLAPolicy, spec: FutureMaskSpec, steps: int = 4) -> list[np.ndarray]:
    """The action tokens of a short episode that reuses each frame's cached features, as the server does."""
    rng = np.random.default_rng(5)
    size = policy.config.image_size
    history = EpisodeHistory(policy.config.history)
    tokens = []
    for step in range(steps):
        frame = policy.check_frame({c: rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                                    for c in policy.config.cameras})  # fmt: skip
        observation = Observation(history.with_frame(frame), INSTRUCTION, np.full(8, step / steps),
                                  features=history.features_with_new_frame())  # fmt: skip
        result = policy.predict([observation], spec)[0]
        assert result.actions.shape == (policy.actions.chunk, policy.actions.dims)
        assert np.all(np.abs(result.actions) <= np.maximum(np.abs(policy.actions.low), np.abs(policy.actions.high)))
        assert result.frame_features is not None and result.frame_features.device == policy.device
        history.append(frame, result.frame_features)
        tokens.append(result.tokens)
    return tokens


def test_a_checkpoint_loaded_for_static_decoding_acts_like_the_default(tiny_policy, default) -> None:
    static = VLAPolicy.from_pretrained(tiny_policy, static_decode=True)
    assert isinstance(static.fast_decoder, StaticCacheDecoder) and not static.fast_decoder.graph  # no GPU: eager
    for label in LABELS:
        assert_same_chunks(static, default, FutureMaskSpec.parse(label))


def test_fast_chunks_of_rows_that_finish_apart_decode_the_same_on_a_static_cache() -> None:
    policy = fast_policy()
    static = VLAPolicy(policy.model, policy.tokenizer, policy.config)
    static.use_static_decode()
    spec = FutureMaskSpec.parse("Mv2t+merge")
    got, want = static.predict(mixed_batch(), spec), policy.predict(mixed_batch(), spec)
    assert len({len(r.tokens) for r in want}) > 1, "the rows should need different numbers of tokens"
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.tokens, b.tokens)


def test_static_decoding_is_refused_where_there_is_nothing_to_decode(tmp_path) -> None:
    policy = parallel_policy()
    with pytest.raises(ValueError, match="parallel-head policy decodes nothing"):
        policy.use_static_decode()
    policy.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="parallel-head"):
        VLAPolicy.from_pretrained(tmp_path, static_decode=True)


def test_a_half_precision_policy_runs_an_episode_from_its_cached_features(tiny_policy) -> None:
    half = VLAPolicy.from_pretrained(tiny_policy, dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    for label in ("causal", "Mf+merge"):
        tokens = episode(half, FutureMaskSpec.parse(label))
        assert all(len(t) == half.actions.tokens_per_call for t in tokens)


@CUDA
def test_a_policy_on_the_gpu_replays_graphs_with_the_exact_steps_tokens(tiny_policy, default) -> None:
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions in fp32, as on the CPU
    exact = VLAPolicy.from_pretrained(tiny_policy, device="cuda")
    graphed = VLAPolicy.from_pretrained(tiny_policy, device="cuda", static_decode=True)
    assert isinstance(graphed.fast_decoder, StaticCacheDecoder) and graphed.decode_path == "cuda-graphs"
    for label in LABELS:
        spec = FutureMaskSpec.parse(label)
        assert_same_chunks(graphed, exact, spec)  # greedy and sampled, a padded batch of three
        got, want = episode(graphed, spec), episode(exact, spec)  # from cached features on the GPU
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), label
    # against the CPU only up to near-ties: the kernels sum in another order
    got = [r.tokens for r in graphed.predict(observations(graphed))]
    want = [r.tokens for r in default.predict(observations(default))]
    agree = np.mean([np.mean(a == b) for a, b in zip(got, want, strict=True)])
    assert agree >= 0.9, agree


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_policy_on_the_gpu_serves_an_episode_from_graphs(tiny_policy, dtype) -> None:
    policy = VLAPolicy.from_pretrained(tiny_policy, device="cuda", dtype=dtype, static_decode=True)
    for label in ("causal", "Mf+merge"):
        episode(policy, FutureMaskSpec.parse(label))
