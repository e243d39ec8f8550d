"""The profiler runs end to end and reports what it measured (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from fm_agent.cli import main
from fm_agent.profiling.layouts import parse_layout, vla_layout


def test_profile_writes_json_plot_and_table(tmp_path, capsys) -> None:
    code = main(["profile", "--preset", "quick", "--contexts", "64", "--repetitions", "1", "--decode-tokens", "2",
                 "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
                 "--vocab", "128", "--frame-tokens", "8", "--specs", "causal", "Mf/full", "Mf+merge",
                 "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    assert {r["spec"] for r in report["results"]} == {"causal", "Mf/full", "Mf+merge"}
    full = next(r for r in report["results"] if r["spec"] == "Mf/full")
    assert full["decode_ms_per_token"] > 0 and "full_decode_ratio_to_merge" in full
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    assert "Mf+merge" in capsys.readouterr().out


def test_layouts() -> None:
    flags = vla_layout(256, frame_tokens=64)
    assert flags.shape == (256,) and 0.5 < flags.float().mean() < 0.9 and not flags[0] and not flags[-1]
    assert parse_layout("T2 V3 T1").tolist() == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match="T<count>"):
        parse_layout("X3")


def test_masks_command_prints_pattern(capsys) -> None:
    assert main(["masks", "--layout", "T1 V2 T1", "--mask", "Mv2t"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].endswith("V ##.#") and out[4].endswith("T ####")
