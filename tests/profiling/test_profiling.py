"""The profiler runs end to end and reports what it measured (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from fm_agent.cli import main
from fm_agent.profiling.layouts import parse_layout, vla_layout


@pytest.mark.parametrize("static", [False, True])
def test_profile_writes_json_plot_and_table(static: bool, tmp_path, capsys) -> None:
    code = main(
        [
            "profile",
            *(["--static-decode"] if static else []),
            "--preset",
            "quick",
            "--contexts",
            "64",
            "--repetitions",
            "1",
            "--decode-tokens",
            "2",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--intermediate",
            "64",
            "--vocab",
            "128",
            "--frame-tokens",
            "8",
            "--specs",
            "causal",
            "Mf/full",
            "Mf+merge",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    assert {r["spec"] for r in report["results"]} == {"causal", "Mf/full", "Mf+merge"}
    full = next(r for r in report["results"] if r["spec"] == "Mf/full")
    assert full["decode_ms_per_token"] > 0 and "full_decode_ratio_to_merge" in full
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "Mf+merge" in out
    assert ("same tokens" in out) == static
    for row in report["results"]:
        cached = row["spec"] != "Mf/full"  # a cache-free mask has no cache to make static
        assert ("static_decode_ms_per_token" in row) == (static and cached)
        if "static_decode_ms_per_token" in row:
            assert row["static_tokens_match"] is True and row["static_decode_speedup"] > 0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--device", "cuda", "--grpc"], "--device applies to the mask grid and --step"),
        (["--static-decode", "--grpc"], "--static-decode applies to the mask grid and --step"),
    ],
)
def test_profile_refuses_a_device_it_cannot_use(flags: list[str], message: str, capsys) -> None:
    assert main(["profile", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize("step", [False, True])
def test_profile_on_cuda_without_a_gpu_says_so(step: bool, tmp_path, capsys) -> None:
    flags = ["--step"] if step else ["--preset", "quick"]
    assert main(["profile", "--device", "cuda", *flags, "--out", str(tmp_path)]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


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


def test_transport_paths_take_turns_in_rotating_order() -> None:
    """Every path gets its calls, in turns of ``block``, and no path always follows the same one."""
    from fm_agent.profiling.transport import summarise_paths, time_paths

    calls: list[str] = []

    def path(name: str, server_ms: float | None):
        return lambda: calls.append(name) or server_ms

    paths = {"in_process_step": path("in_process_step", None), "a": path("a", 0.0), "b": path("b", 0.0)}
    timings = time_paths(paths, rounds=5, block=2)
    timed = calls[9:]  # after 3 warm-up calls per path
    assert [len(timings[n]["round_trip"]) for n in paths] == [5, 5, 5] and len(timed) == 15
    assert timings["in_process_step"]["transport"] == [] and len(timings["a"]["transport"]) == 5
    turns = [timed[i] for i in range(0, 12, 2)]  # the first call of each turn of 2
    assert turns[:3] == ["in_process_step", "a", "b"] and turns[3:6] == ["a", "b", "in_process_step"]
    summary = summarise_paths(timings)
    assert "transport" not in summary["in_process_step"] and summary["a"]["transport"]["n"] == 5
    assert summary["a"]["round_trip_minus_in_process_p50_ms"] == pytest.approx(
        summary["a"]["round_trip"]["p50_ms"] - summary["in_process_step"]["round_trip"]["p50_ms"]
    )


def test_transport_benchmark_runs_every_path_end_to_end(tmp_path) -> None:
    """Real servers on loopback, two calls per path: the report has every path (or says why one was
    skipped), a table and a plot."""
    import importlib.util
    from pathlib import Path

    from fm_agent.profiling.transport import format_report, plot_report, run_transport_benchmark

    report = run_transport_benchmark(
        Path("checkpoints/libero_spatial"), repeats=2, image_size=32, concurrent=2, concurrent_steps=2
    )
    for ordering in ("interleaved", "blocks"):
        paths = report["orderings"][ordering]["paths"]
        assert {"in_process_step", "grpc", "grpc_no_deadline", "grpc_stream", "grpc_stream_threaded"} <= set(paths)
        assert set(paths) | set(report["skipped"]) >= {"openpi_msgpack_websocket", "pickle_websocket"}
        for name, module in (
            ("openpi_msgpack_websocket", "openpi_client"),
            ("fm_agent_openpi_endpoint", "openpi_client"),
            ("pickle_websocket", "websockets"),
        ):
            if importlib.util.find_spec(module) is not None:  # launch/setup.sh installs both
                assert name in paths, report["skipped"].get(name)
        assert all(paths[name]["transport"]["n"] == 2 for name in paths if name != "in_process_step")
    assert report["throughput"]["ratio"] > 0
    assert "gRPC StreamAct" in format_report(report)
    plot_report(report, tmp_path / "transport.png")
    assert (tmp_path / "transport.png").stat().st_size > 10_000


def test_the_step_profile_times_the_static_path_when_asked_and_compiles_only_on_a_cpu() -> None:
    from paths import REPO

    from fm_agent.profiling.step import shaped_like, step_heads

    assert step_heads("cpu", False) == ("autoregressive", "ar-compiled", "ar-reference", "parallel")
    assert step_heads("cuda", True) == ("autoregressive", "ar-static", "ar-reference", "parallel")
    policy = shaped_like(REPO / "checkpoints/libero_spatial", 2, "ar-static")
    assert policy.decode_path == "static" and policy.actions.chunk == 2
