"""The mask vocabulary: every label parses back to itself, options round-trip, bad text is refused."""

from __future__ import annotations

import pytest

from fm_agent_client import ALL_SPEC_LABELS, FutureMaskSpec, MergeOptions, pb


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_every_default_label_is_its_own_canonical_form(label: str) -> None:
    assert FutureMaskSpec.parse(label).label == label


def test_merge_options_are_written_only_when_they_differ_from_the_defaults() -> None:
    spec = FutureMaskSpec.parse("Mv2t+merge(op=mean,k=5,slots=2)")
    assert spec.merge == MergeOptions(op="mean", kernel=5, slots=2)
    assert spec.label == "Mv2t+merge(op=mean,k=5,slots=2)"
    assert FutureMaskSpec.parse(spec.label) == spec
    assert FutureMaskSpec.parse("Mf+merge(slots=1, kernel=3)").label == "Mf+merge"
    assert FutureMaskSpec.parse("Mf+merge(k=4)").label == "Mf+merge(k=4)"
    assert str(FutureMaskSpec.parse("Mf")) == "Mf/prefill"


@pytest.mark.parametrize(
    "text, words",
    [
        ("Mx", "unknown mask"),
        ("Mf/half", "unknown decode mode"),
        ("Mf/full+merge", "takes no /full"),
        ("Mf+merge(op=sum)", "merge op"),
        ("Mf+merge(k=0)", "positive integer"),
        ("Mf+merge(k=two)", "not an integer"),
        ("Mf+merge(size=3)", "not one of"),
        ("Mf+merge(k=3,k=4)", "twice"),
        ("Mf+mrge", "cannot read mask"),
        ("", "cannot read mask"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FutureMaskSpec.parse(text)


def test_the_wire_form_round_trips_and_an_empty_message_means_the_default() -> None:
    default = FutureMaskSpec.parse("Mv2v/full")
    for label in (*ALL_SPEC_LABELS, "Mf+merge(op=mean,k=7,slots=3)"):
        spec = FutureMaskSpec.parse(label)
        assert FutureMaskSpec.from_message(spec.to_message(), default) == spec
    assert FutureMaskSpec.from_message(pb.MaskOptions(), default) is default
    assert FutureMaskSpec.from_message(pb.MaskOptions(mask="Mf", merge=True), default).label == "Mf+merge"
    with pytest.raises(ValueError):
        FutureMaskSpec.from_message(pb.MaskOptions(mask="Mf", merge=True, merge_op="sum"), default)
