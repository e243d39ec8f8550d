"""The VLA: action tokenizer, prompt, predict under every mask, save/load, a training step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from paths import REPO
from policy_cases import TINY

from fm_agent.attention import ALL_SPEC_LABELS, FutureMaskSpec
from fm_agent.data.episodes import EpisodeArrays
from fm_agent.model import ActionTokenizer, Observation, VLAConfig, VLAPolicy
from fm_agent.model.history import padded
from fm_agent.training.loop import TrainSettings, forward_loss, make_batch, train

INSTRUCTIONS = ["pick up the black bowl and place it on the plate", "go to the red ball, then open a door"]


def libero_like(seed: int = 0, chunk: int = 2) -> VLAPolicy:
    rng = np.random.default_rng(seed)
    tokenizer = ActionTokenizer.fit(rng.uniform(-1, 1, (500, 7)), bins=32, chunk=chunk)
    config = VLAConfig(
        env_family="libero",
        cameras=["agentview", "wrist"],
        image_size=16,
        history=2,
        action_tokenizer=tokenizer.to_dict(),
        proprio_dim=8,
        proprio_bins=8,
        proprio_low=[-1.0] * 8,
        proprio_high=[1.0] * 8,
        backbone=TINY,
    )
    return VLAPolicy.create(config, INSTRUCTIONS, seed=seed)


def babyai_like(seed: int = 0) -> VLAPolicy:
    config = VLAConfig(
        env_family="babyai",
        cameras=["image"],
        image_size=16,
        history=3,
        action_tokenizer=ActionTokenizer.discrete(7).to_dict(),
        backbone=TINY,
    )
    return VLAPolicy.create(config, INSTRUCTIONS, seed=seed)


def frames(cameras, n: int = 2, seed: int = 0, size: int = 16):
    rng = np.random.default_rng(seed)
    return [{c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras} for _ in range(n)]


# -- action tokenizer --------------------------------------------------------------------------------
def test_continuous_round_trip_and_bounds() -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (1000, 7))
    tok = ActionTokenizer.fit(data, bins=256, chunk=3)
    tok.offset = 100
    actions = rng.uniform(-0.9, 0.9, (3, 7))
    ids = tok.encode(actions)
    assert ids.shape == (21,) and ids.min() >= 100 and ids.max() < 356
    width = (np.asarray(tok.high) - np.asarray(tok.low)) / 256
    assert np.all(np.abs(tok.decode(ids) - actions) <= width / 2 + 1e-6)
    extreme = tok.decode(tok.encode(np.full((1, 7), 50.0)))
    assert np.all(extreme <= 1.0) and np.all(extreme >= np.asarray(tok.high) - width)
    assert ActionTokenizer.from_dict(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="outside"):
        tok.decode(np.array([5]))


def test_discrete_round_trip() -> None:
    tok = ActionTokenizer.discrete(7)
    tok.offset = 40
    assert list(tok.decode(tok.encode(np.arange(7)))) == list(range(7))
    with pytest.raises(ValueError, match="out of range"):
        tok.encode(np.array([7]))


# -- prediction --------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_predict_under_every_mask(label: str) -> None:
    policy = libero_like()
    obs = Observation(frames(["agentview", "wrist"]), INSTRUCTIONS[0], np.zeros(8))
    result = policy.predict([obs], FutureMaskSpec.parse(label))[0]
    assert result.actions.shape == (2, 7) and np.all(np.abs(result.actions) <= 1)
    assert {"prefill_ms", "decode_ms", "total_ms"} <= set(result.timings_ms)
    lo, hi = policy.actions.token_range()
    assert np.all((result.tokens >= lo) & (result.tokens < hi))


def test_batch_equals_single_predictions() -> None:
    """Left padding of prompts of different lengths changes nothing."""
    policy = libero_like()
    observations = [
        Observation(frames(["agentview", "wrist"], seed=s), INSTRUCTIONS[s % 2], np.full(8, 0.1 * s)) for s in range(3)
    ]
    for label in ("causal", "Mf/prefill", "Mv2t+merge"):
        spec = FutureMaskSpec.parse(label)
        batch = policy.predict(observations, spec)
        singles = [policy.predict([o], spec)[0] for o in observations]
        for b, s in zip(batch, singles):
            assert np.array_equal(b.tokens, s.tokens), label


def test_actions_come_from_the_weights() -> None:
    policy = babyai_like()
    observations = [Observation(frames(["image"], seed=s), INSTRUCTIONS[1]) for s in range(8)]
    before = [r.actions[0] for r in policy.predict(observations)]
    with torch.no_grad():
        policy.model.lm_head.weight.add_(torch.randn_like(policy.model.lm_head.weight))
    after = [r.actions[0] for r in policy.predict(observations)]
    assert before != after


def test_sampling_is_seeded_valid_and_greedy_at_low_temperature() -> None:
    policy = babyai_like()
    history = frames(["image"], seed=3)

    def draws(temperature: float, seed: int, n: int = 40) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [
            int(policy.predict([Observation(history, INSTRUCTIONS[1], None, temperature, generator)])[0].actions[0])
            for _ in range(n)
        ]

    greedy = int(policy.predict([Observation(history, INSTRUCTIONS[1])])[0].actions[0])
    assert draws(1e-4, 0, 5) == [greedy] * 5  # a vanishing temperature is greedy
    hot = draws(100.0, 0)
    assert hot == draws(100.0, 0) and hot != draws(100.0, 1)  # the generator makes draws reproducible
    assert len(set(hot)) > 1 and all(0 <= a < 7 for a in hot)  # near-uniform over valid actions only
    # rows of one batch sample independently, with their own temperature
    batch = policy.predict(
        [
            Observation(history, INSTRUCTIONS[1]),
            Observation(history, INSTRUCTIONS[1], None, 100.0, torch.Generator().manual_seed(0)),
        ]
    )
    assert int(batch[0].actions[0]) == greedy and int(batch[1].actions[0]) == hot[0]


def test_masks_change_the_action_logits() -> None:
    policy = babyai_like()
    obs = Observation(frames(["image"], n=3), INSTRUCTIONS[1])
    inputs = policy.encode([obs])
    from fm_agent.attention import FutureAttention

    with torch.no_grad():
        logits = {
            label: policy.model(
                **inputs,
                future_attention=FutureAttention(
                    FutureMaskSpec.parse(label), inputs["input_ids"] == policy.image_token_id
                ),
            ).logits[0, -1]
            for label in ("causal", "Mf/prefill", "Mv2v+merge")
        }
    assert not torch.allclose(logits["causal"], logits["Mf/prefill"])
    assert not torch.allclose(logits["causal"], logits["Mv2v+merge"])


def test_save_load_gives_identical_outputs(tmp_path) -> None:
    policy = libero_like()
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path)
    obs = Observation(frames(["agentview", "wrist"]), INSTRUCTIONS[0], np.zeros(8))
    for label in ("causal", "Mf+merge"):
        a = policy.predict([obs], FutureMaskSpec.parse(label))[0]
        b = loaded.predict([obs], FutureMaskSpec.parse(label))[0]
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.actions, b.actions)
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("order", ["frames_first", "instruction_first"])
def test_prompt_order_decides_whether_causal_image_tokens_see_the_instruction(order: str, tmp_path) -> None:
    """Under the causal mask the image tokens' hidden states depend on the instruction only when it
    comes first; the order survives save/load."""
    config = VLAConfig(
        env_family="babyai",
        cameras=["image"],
        image_size=16,
        history=2,
        action_tokenizer=ActionTokenizer.discrete(7).to_dict(),
        backbone=TINY,
        prompt_order=order,
    )
    policy = VLAPolicy.create(config, INSTRUCTIONS, seed=0)
    policy.save_pretrained(tmp_path)
    policy = VLAPolicy.from_pretrained(tmp_path)
    assert policy.config.prompt_order == order
    shown = frames(["image"])
    states = []
    for instruction in ("go to the red ball", "open a door"):
        inputs = policy.encode([Observation(shown, instruction)])
        visual = inputs["input_ids"][0] == policy.image_token_id
        ids = inputs["input_ids"][0].tolist()
        first_image, instruction_at = (
            ids.index(policy.image_token_id),
            ids.index(policy.tokenizer.convert_tokens_to_ids("<instruction>")),
        )
        assert (instruction_at < first_image) == (order == "instruction_first")
        with torch.no_grad():
            hidden = policy.model(**inputs, output_hidden_states=True).hidden_states[-1][0]
        states.append(hidden[visual])
    assert torch.equal(states[0], states[1]) == (order == "frames_first")


def test_unknown_prompt_order_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt_order"):
        VLAConfig(
            env_family="babyai",
            cameras=["image"],
            image_size=16,
            history=2,
            action_tokenizer=ActionTokenizer.discrete(7).to_dict(),
            prompt_order="images_last",
        )


def test_bad_inputs_get_clear_errors() -> None:
    policy = libero_like()
    good = frames(["agentview", "wrist"])
    with pytest.raises(ValueError, match="uint8"):
        policy.predict([Observation([{**good[0], "wrist": good[0]["wrist"].astype(np.float32)}], "pick", np.zeros(8))])
    with pytest.raises(ValueError, match="lacks camera"):
        policy.predict([Observation([{"agentview": good[0]["agentview"]}], "pick", np.zeros(8))])
    with pytest.raises(ValueError, match="instruction is empty"):
        policy.predict([Observation(good, "  ", np.zeros(8))])
    with pytest.raises(ValueError, match="finite"):
        policy.predict([Observation(good, "pick", np.full(8, np.nan))])
    with pytest.raises(ValueError, match="at least one frame"):
        policy.predict([Observation([], "pick", np.zeros(8))])


# -- training ----------------------------------------------------------------------------------------
def tiny_episodes(n: int = 6, steps: int = 5) -> list[EpisodeArrays]:
    rng = np.random.default_rng(0)
    return [
        EpisodeArrays(
            INSTRUCTIONS[i % 2],
            {"image": rng.integers(0, 256, (steps, 16, 16, 3), dtype=np.uint8)},
            None,
            rng.integers(0, 7, steps),
            {},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("mask", ["causal", "Mf/prefill", "Mv2t+merge"])
def test_training_lowers_the_loss(mask: str, tmp_path) -> None:
    policy, episodes = babyai_like(), tiny_episodes()
    from fm_agent.data.episodes import all_samples

    batch = make_batch(policy, episodes, all_samples(episodes)[:16])
    spec = FutureMaskSpec.parse(mask)
    with torch.no_grad():
        before = forward_loss(policy, batch, spec)[0].item()
    settings = TrainSettings(
        steps=15,
        batch_size=16,
        lr=3e-3,
        warmup=2,
        train_masks=(mask,),
        validate_every=15,
        checkpoint_every=15,
        threads=1,
    )
    log = train(policy, episodes, episodes[:2], settings, tmp_path)
    policy.model.eval()
    with torch.no_grad():
        after = forward_loss(policy, batch, spec)[0].item()
    assert after < before * 0.8, (before, after)
    assert (tmp_path / "training_state.pt").exists() and len(log.val_loss) == 1


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_ends_on_the_lowest_validation_loss(keep_best: bool, tmp_path, monkeypatch) -> None:
    """Validation losses 3, 1, 2 (scripted): with keep_best the policy ends with the weights it had at the
    second validation, and a resumed run still does; without, with the last step's."""
    from fm_agent.training import loop

    scripted, snapshots = iter([3.0, 1.0, 2.0]), []

    def scripted_validate(policy, *_args):
        snapshots.append({k: v.detach().clone() for k, v in policy.model.state_dict().items()})
        return next(scripted), 0.5

    monkeypatch.setattr(loop, "validate", scripted_validate)
    policy, episodes = babyai_like(), tiny_episodes()
    settings = TrainSettings(steps=6, batch_size=4, lr=3e-3, warmup=1, validate_every=2, checkpoint_every=2, threads=1)
    log = train(policy, episodes, episodes[:2], replace(settings, steps=4, keep_best=keep_best), tmp_path)
    log = train(policy, episodes, episodes[:2], replace(settings, keep_best=keep_best), tmp_path)  # resumes
    final = policy.model.state_dict()
    kept, last = snapshots[1], snapshots[2]  # the weights at the validations of steps 4 and 6 (the last step)
    assert not all(torch.equal(kept[k], last[k]) for k in final), "training moved the weights"
    expected = kept if keep_best else last
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert log.val_loss == [3.0, 1.0, 2.0] and log.kept_step == (4 if keep_best else None)


@pytest.mark.parametrize("chunk", [1, 4])
def test_training_histories_match_what_the_server_keeps(chunk: int) -> None:
    """A client executing each chunk calls once per chunk; the frames the server then holds for a call
    are the ones a training sample at that step is built from (history_stride = chunk)."""
    from fm_agent.data.episodes import history_frames
    from fm_agent.serving.episodes import EpisodeStore

    policy = babyai_like()
    steps, history = 23, policy.config.history
    video = np.arange(steps, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    episode = EpisodeArrays("pick", {"image": video}, None, np.zeros(steps, np.int64), {})
    live = EpisodeStore(history).start("pick", FutureMaskSpec("causal"), 0, 0.0)
    for step in range(0, steps, chunk):  # the steps at which the client calls Act
        served = live.history.with_frame({"image": video[step]})
        served = padded(served, history)  # padded as the model pads a young episode
        trained = history_frames(episode, step, history, stride=chunk)
        assert [int(f["image"][0, 0, 0]) for f in trained] == [int(f["image"][0, 0, 0]) for f in served]
        live.history.append({"image": video[step]})


def test_random_shift_moves_each_view_and_keeps_the_motion_between_frames() -> None:
    from fm_agent.training.loop import random_shift

    samples, history, cameras, size, pad = 6, 2, 2, 8, 2
    ramp = torch.arange(size, dtype=torch.float32)
    image = (ramp[:, None] * 10 + ramp[None, :]).expand(3, size, size)  # every pixel distinct
    views = image.expand(samples, history, cameras, 3, size, size).clone()
    views[:, 1] += 1000.0  # the second frame differs from the first by a constant
    pixels = views.reshape(-1, 3, size, size)
    generator = torch.Generator().manual_seed(0)
    out = random_shift(pixels, samples, history, cameras, pad, generator).reshape_as(views)
    assert torch.equal(random_shift(pixels, samples, history, cameras, 0), pixels)
    torch.testing.assert_close(out[:, 1] - out[:, 0], torch.full_like(out[:, 0], 1000.0))  # same shift per sample
    padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="replicate")[0]
    shifts = set()
    for i in range(samples):
        for c in range(cameras):
            found = [
                (dy, dx)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                if torch.equal(out[i, 0, c], padded[:, dy : dy + size, dx : dx + size])
            ]
            assert found, "a view is not a shifted copy of the image"
            shifts.add(found[0])
    assert len(shifts) > 1


def test_training_never_shows_targets_to_images() -> None:
    """With Mf the images may see the prompt's future but not the appended targets: changing a target
    token must not change the logits at any prompt position."""
    policy = libero_like(chunk=2)
    obs_frames = frames(["agentview", "wrist"])
    from fm_agent.data.episodes import EpisodeArrays as E

    base = E(
        INSTRUCTIONS[0],
        {c: np.stack([f[c] for f in obs_frames]) for c in ("agentview", "wrist")},
        np.zeros((2, 8), np.float32),
        np.zeros((2, 7), np.float32),
        {},
    )
    other = E(base.instruction, base.frames, base.proprio, np.full((2, 7), 0.9, np.float32), {})
    from fm_agent.data.episodes import Sample

    a, b = (make_batch(policy, [e], [Sample(0, 1)]) for e in (base, other))
    from fm_agent.attention import FutureAttention

    spec = FutureMaskSpec.parse("Mf/prefill")
    with torch.no_grad():
        la, lb = (
            policy.model(
                input_ids=x["input_ids"],
                attention_mask=x["attention_mask"],
                pixel_values=x["pixel_values"],
                future_attention=FutureAttention(spec, x["visual"]),
            ).logits
            for x in (a, b)
        )
    prompt = a["visual"].shape[1]
    torch.testing.assert_close(la[:, :prompt], lb[:, :prompt], atol=0, rtol=0)


# -- embedded checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["libero_spatial", "libero_spatial_parallel", "babyai_gotoseq", "babyai_opendoors"])
def test_default_checkpoint_loads_and_acts(name: str) -> None:

    folder = REPO / "checkpoints" / name
    policy = VLAPolicy.from_pretrained(folder)
    cfg = policy.config
    rng = np.random.default_rng(0)
    frame = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
    proprio = np.zeros(cfg.proprio_dim) if cfg.proprio_dim else None
    instruction = (
        "pick up the black bowl between the plate and the ramekin and place it on the plate"
        if cfg.env_family == "libero"
        else "go to the red ball"
    )
    for label in ("causal", "Mf+merge"):
        result = policy.predict([Observation([frame], instruction, proprio)], FutureMaskSpec.parse(label))[0]
        if cfg.env_family == "libero":
            assert result.actions.shape == (policy.actions.chunk, 7) and np.all(np.abs(result.actions) <= 1)
        else:
            assert 0 <= int(result.actions[0]) < 7
    assert (folder / "MODEL_CARD.md").exists()


def test_episodes_rendered_every_n_steps_give_only_their_rendered_steps_as_samples() -> None:
    """A recording rendered every 4 steps holds stale images between; no sample may start there, and
    a history stride off the rendering grid would read stale frames, so it is refused."""
    from fm_agent.data.episodes import all_samples, history_frames

    sparse = EpisodeArrays(
        "pick", {"image": np.zeros((10, 2, 2, 3), np.uint8)}, None, np.zeros(10, np.int64), {"render_every": 4}
    )
    dense = EpisodeArrays("pick", {"image": np.zeros((3, 2, 2, 3), np.uint8)}, None, np.zeros(3, np.int64), {})
    samples = all_samples([sparse, dense], history_stride=4)
    assert [(s.episode, s.step) for s in samples] == [(0, 0), (0, 4), (0, 8), (1, 0), (1, 1), (1, 2)]
    for sample in samples[:3]:
        frames = history_frames(sparse, sample.step, 2, stride=4)
        assert len(frames) == 2  # steps (t - 4, t), clamped at 0: all on the rendering grid
    with pytest.raises(ValueError, match="multiple of it"):
        all_samples([sparse], history_stride=2)
