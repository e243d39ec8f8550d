"""The boolean patterns of every mask against the brute-force table of the brief."""

from __future__ import annotations

import pytest
import torch
from reference import allowed_loops

from fm_agent.attention import FutureMaskSpec, MergeOptions, allowed_matrix, render_allowed

MASKS = ["causal", "Mf", "Mv2v", "Mv2t"]


def brief_layout() -> list[bool]:
    """BOS, 3 system tokens, frame 1 (4), 2 text tokens, frame 2 (4), 3 question tokens."""
    return [False] * 4 + [True] * 4 + [False] * 2 + [True] * 4 + [False] * 3


def random_layouts(count: int = 20, seed: int = 0) -> list[list[bool]]:
    rng = torch.Generator().manual_seed(seed)
    layouts = []
    for _ in range(count):
        length = int(torch.randint(3, 30, (1,), generator=rng))
        layouts.append((torch.rand(length, generator=rng) < 0.6).tolist())
    return layouts


@pytest.mark.parametrize("mask", MASKS)
def test_every_mask_matches_the_loops(mask: str) -> None:
    for visual in [brief_layout(), *random_layouts()]:
        got = allowed_matrix(torch.tensor(visual), mask)
        assert torch.equal(got, allowed_loops(visual, mask)), (mask, visual)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_is_anded_over_keys(mask: str, side: str) -> None:
    layouts = [brief_layout(), [False, True, True, False, True, False, False]]
    length = max(len(v) for v in layouts)
    visual = torch.zeros(len(layouts), length, dtype=torch.bool)
    padding = torch.zeros(len(layouts), length, dtype=torch.long)
    for b, layout in enumerate(layouts):
        cols = slice(length - len(layout), length) if side == "left" else slice(0, len(layout))
        visual[b, cols] = torch.tensor(layout)
        padding[b, cols] = 1
    got = allowed_matrix(visual, mask, padding)
    for b in range(len(layouts)):
        expected = allowed_loops(visual[b].tolist(), mask, padding[b].bool().tolist())
        assert torch.equal(got[b], expected)


def test_brief_example() -> None:
    visual = torch.tensor(brief_layout())
    frame1, between, frame2, question = range(4, 8), range(8, 10), range(10, 14), range(14, 17)
    mf, v2v, v2t = (allowed_matrix(visual, m) for m in ("Mf", "Mv2v", "Mv2t"))
    row = frame1[0]
    assert all(mf[row, j] for j in [*between, *frame2, *question])
    assert all(v2v[row, j] for j in frame2) and not any(v2v[row, j] for j in [*between, *question])
    assert all(v2t[row, j] for j in [*between, *question]) and not any(v2t[row, j] for j in frame2)
    assert not v2t[row, frame1[1]], "inside its own frame Mv2t stays causal"


@pytest.mark.parametrize("mask", MASKS)
def test_text_rows_stay_causal(mask: str) -> None:
    for visual in random_layouts(seed=3):
        allowed = allowed_matrix(torch.tensor(visual), mask)
        causal = allowed_loops(visual, "causal")
        for i, is_visual in enumerate(visual):
            if not is_visual:
                assert torch.equal(allowed[i], causal[i])


def test_full_mode_sees_generated_tokens_prefill_does_not() -> None:
    from fm_agent.attention import future_extension

    visual = torch.tensor([[False, True, True, False]])
    keys = torch.tensor([[False, True, True, False, False, False]])  # two generated tokens
    positions = torch.arange(6)
    full = future_extension(
        FutureMaskSpec("Mf", decode_mode="full"), keys, keys, positions, positions, prompt_length=visual.shape[1]
    )
    prefill = future_extension(FutureMaskSpec("Mf"), keys, keys, positions, positions, prompt_length=4)
    assert full[0, 1, 4:].all() and not prefill[0, 1, 4:].any()


def test_spec_parsing_and_errors() -> None:
    assert FutureMaskSpec.parse("Mf+merge").merge == MergeOptions()
    assert FutureMaskSpec.parse("Mv2t/full").decode_mode == "full"
    assert FutureMaskSpec.parse("Mv2v").label == "Mv2v/prefill"
    with pytest.raises(ValueError, match="unknown mask"):
        FutureMaskSpec("Mx")
    with pytest.raises(ValueError, match="decode mode"):
        FutureMaskSpec("Mf", decode_mode="lazy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel"):
        MergeOptions(kernel=0)
    with pytest.raises(ValueError, match="op"):
        MergeOptions(op="sum")  # type: ignore[arg-type]


def test_render_shows_rows() -> None:
    visual = torch.tensor([False, True, False])
    picture = render_allowed(allowed_matrix(visual, "Mf"), visual)
    assert picture.splitlines()[1].endswith("###") and picture.splitlines()[2].endswith("###")
    assert picture.splitlines()[0].endswith("#..")
