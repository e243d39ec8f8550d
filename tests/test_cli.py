"""The fm-agent CLI and the job configs: every job parses, and a bad config is refused before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from paths import REPO

from fm_agent.cli import main as cli
from fm_agent.cli import parse
from fm_agent.jobs import JOBS
from fm_agent.serving.config import ServeConfig
from fm_agent.serving.local import LocalServer

ROOT = REPO


@pytest.mark.parametrize("name", list(JOBS))
def test_every_job_has_help_and_a_config_that_builds_from_defaults_or_required_flags(name, capsys) -> None:
    assert cli([name, "--help"]) == 0
    assert f"fm-agent {name}" in capsys.readouterr().out


def test_the_cli_is_fast_to_start_because_configs_import_no_torch() -> None:
    code = (
        "import sys, fm_agent.cli; [j.config_class() for j in fm_agent.cli.JOBS.values()]; "
        "print([m for m in ('torch', 'transformers', 'libero', 'minigrid') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.simulator
def test_a_launch_shim_speaks_the_same_flags(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "record_demos.py"),
            "--envs",
            "babyai:BabyAI-GoToLocal-v0",
            "--episodes",
            "1",
            "--no-save",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "overall" in done.stdout


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval-libero", "--suite", "libero_nowhere"], "unknown LIBERO suite 'libero_nowhere'"),
        (["eval-libero", "--tasks", "12"], "task index 12 out of range for libero_spatial (10 tasks: 0-9)"),
        (["eval-libero", "--suite", "libero_spatial_temp", "--tasks", "0"], "resources are not installed"),
        (["eval-libero", "--init-states", "50"], "not one of the 50 official initial states"),
        (["eval-libero", "--masks", "causal", "Mf+mrge"], "cannot read mask 'Mf+mrge'"),
        (["eval-babyai", "--levels", "BabyAI-Nowhere-v0"], "unknown BabyAI level"),
        (["eval-local", "--env", "babyai:BabyAI-GoToLocal-v0"], "give either --checkpoint or --random-baseline"),
        (["record", "--suite", "libero_spatial", "--envs", "babyai:BabyAI-GoToLocal-v0", "--out", "x"], "exactly one"),
        (["record", "--envs", "babyai:BabyAI-GoToLocal-v0", "--init-states", "0-9", "--out", "x"], "LIBERO"),
        (["record", "--suite", "libero_spatial", "--init-states", "40-60", "--out", "x"], "--init-states"),
        (["record", "--envs", "babyai:BabyAI-GoToLocal-v0", "--render-every", "4", "--out", "x"], "--render-every"),
        (
            [
                "dagger",
                "--checkpoint",
                "checkpoints/libero_spatial",
                "--suite",
                "libero_spatial",
                "--env",
                "a:b",
                "--out",
                "x",
            ],
            "not both",
        ),
        (
            [
                "dagger",
                "--checkpoint",
                "checkpoints/libero_spatial",
                "--suite",
                "libero_spatial",
                "--tasks",
                "11",
                "--out",
                "x",
            ],
            "out of range",
        ),
        (["record", "--suite", "libero_spatial", "--render", "none", "--render-every", "4", "--out", "x"], "render"),
        (
            ["dagger", "--checkpoint", "checkpoints/babyai_gotoseq", "--env", "babyai:BabyAI-GoToSeqS5R2-v0"]
            + ["--blind-steps", "--out", "x"],
            "--blind-steps",
        ),
        (["train", "--preset", "libero", "--data", "no/such/folder", "--out", "x"], "no such folder"),
        (["train", "--preset", "libero", "--data", ".", "--out", "x", "--train-mask", "Mq"], "--train-mask"),
        (["serve", "--mask", "Mf+merge(k=0)"], "positive integer"),
        (["serve", "--mask", "Mf+merge", "--merge"], "full spec already"),
        (["serve", "--checkpoint", "no/such/policy"], "does not exist"),
        (["serve", "--max-image-side", "0"], "max_image_side must be >= 1"),
        (["profile", "--grpc", "--step"], "choose one"),
        (["masks", "--mask", "Mx"], "unknown mask 'Mx'"),
    ],
)
def test_a_bad_config_exits_2_with_one_line_naming_the_problem(argv, words, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # default checkpoints are relative to the repository
    argv = [a if a != "x" else str(tmp_path / "out") for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing may be written before the config is accepted"


def test_out_of_vocabulary_instruction_words_are_a_warning(tiny_policy, capsys) -> None:
    from fm_agent.evaluation.jobs import warn_unknown_words

    # the tiny policy's vocabulary is one LIBERO instruction
    unknown = warn_unknown_words(tiny_policy, ["pick up the alphabet soup and place it in the basket"])
    assert unknown == ["alphabet", "basket", "in", "soup"]
    assert "4 instruction word(s) are outside" in capsys.readouterr().out


@pytest.mark.simulator
def test_a_run_whose_every_episode_errored_exits_1(tmp_path, tiny_policy) -> None:
    # A LIBERO policy (cameras agentview + wrist) on a BabyAI level: every step lacks its cameras, so every
    # episode errors; none counts as a policy failure, and the run's exit code says so.
    argv = [
        "eval-babyai",
        "--checkpoint",
        str(tiny_policy),
        "--levels",
        "BabyAI-GoToLocal-v0",
        "--episodes",
        "2",
        "--max-steps",
        "2",
        "--retries",
        "0",
        "--image-size",
        "16",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli(argv) == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["error"] for row in rows)


def test_the_server_signals_readiness_in_its_ready_file_and_removes_it_at_exit(tiny_policy) -> None:
    server = LocalServer(tiny_policy, threads=1)
    address = server.start(timeout=120)
    try:
        ready = json.loads(server.ready_file.read_text())
        assert ready == {"address": address, "pid": server.process.pid}
        assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    finally:
        assert server.stop() == 0
    assert not server.ready_file.exists()


def test_serve_config_composes_the_legacy_merge_flags_into_one_spec() -> None:
    assert ServeConfig(mask="Mf", merge=True).default_spec().label == "Mf+merge"
    assert ServeConfig(mask="Mv2t", decode_mode="full").default_spec().label == "Mv2t/full"
    assert ServeConfig(mask="Mf+merge(op=mean)").default_spec().label == "Mf+merge(op=mean)"


def test_compiled_decoding_is_refused_beside_the_reference_decode() -> None:
    from fm_agent.jobs import ConfigError

    with pytest.raises(ConfigError, match="--compile-decode"):
        ServeConfig(compile_decode=True, reference_decode=True).validate()
    ServeConfig(compile_decode=True).validate()


def test_devices_and_decode_paths_are_checked_before_the_checkpoint_loads() -> None:
    import torch

    from fm_agent.jobs import ConfigError

    for options in ({"compile_decode": True}, {"reference_decode": True}):
        with pytest.raises(ConfigError, match="--static-decode is a decode path of its own"):
            ServeConfig(static_decode=True, **options).validate()
    for device in ("tpu", "gpu:0", "cpu:x"):
        with pytest.raises(ConfigError, match="--device must be cpu, cuda or cuda:N"):
            ServeConfig(device=device).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            ServeConfig(device="cuda", static_decode=True).validate()
    with pytest.raises(ConfigError, match="CUDA device"):
        ServeConfig(device=f"cuda:{torch.cuda.device_count()}").validate()
    ServeConfig(static_decode=True, device="cpu", dtype="bfloat16").validate()


def test_the_server_loads_its_policy_where_and_how_it_is_told(tiny_policy) -> None:
    import torch

    from fm_agent.attention.static_decode import StaticCacheDecoder
    from fm_agent.serving.jobs import load_served_policy

    policy = load_served_policy(ServeConfig(checkpoint=tiny_policy, static_decode=True, dtype="bfloat16", threads=1))
    assert isinstance(policy.fast_decoder, StaticCacheDecoder) and policy.model.dtype == torch.bfloat16
    assert policy.device == torch.device("cpu") and policy.decode_path == "static"


def test_evaluations_compile_only_the_server_they_start() -> None:
    from fm_agent.evaluation.config import LiberoEvalConfig
    from fm_agent.jobs import ConfigError

    with pytest.raises(ConfigError, match="local server"):
        LiberoEvalConfig(compile_decode=True, server=("127.0.0.1:50051",)).validate()
    LiberoEvalConfig(compile_decode=True).validate()


def test_evaluations_start_their_servers_with_the_decode_path_and_device_asked_for() -> None:
    import torch

    from fm_agent.evaluation.config import BabyAIEvalConfig, LiberoEvalConfig
    from fm_agent.jobs import ConfigError

    assert LiberoEvalConfig().server_flags() == ()
    assert LiberoEvalConfig(static_decode=True, server_device="cuda:1").server_flags() == (
        "--static-decode",
        "--device",
        "cuda:1",
    )
    BabyAIEvalConfig(static_decode=True, ray="local", server_device="cuda").validate()  # Ray finds the GPU
    refused = {
        "configure the servers this run starts": dict(static_decode=True, server=("127.0.0.1:50051",)),
        "a decode path of its own": dict(static_decode=True, compile_decode=True),
        "Ray picks each actor's GPU": dict(ray="local", server_device="cuda:0"),
        "--server-device must be cpu, cuda or cuda:N": dict(server_device="gpu"),
    }
    if not torch.cuda.is_available():
        refused["sees no CUDA device"] = dict(server_device="cuda")
    for message, options in refused.items():
        with pytest.raises(ConfigError, match=message):
            LiberoEvalConfig(**options).validate()  # type: ignore[arg-type]


def test_train_presets_offered_by_the_cli_are_the_model_presets() -> None:
    import typing

    from fm_agent.model.presets import PRESETS
    from fm_agent.training.config import TrainConfig

    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["preset"])) == set(PRESETS)


SHIMS = {
    "libero_eval.py": "eval-libero",
    "alfred_eval.py": "eval-babyai",
    "eval_policy.py": "eval-local",
    "door_errors.py": "door-errors",
    "train_bc.py": "train",
    "record_demos.py": "record",
    "dagger.py": "dagger",
    "profile_latency.py": "profile",
    "soak.py": "soak",
}


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``launch/*.py`` or ``fm-agent`` command in the README, docs and model cards, as argv for the CLI.

    Commands are read from code blocks (backslash continuations joined) and inline code spans (which
    may wrap across lines); those with placeholders (``<...>``, ``...``, ``A|B``, UPPER-CASE values)
    or that only ask for ``--help`` are skipped."""
    import re
    import shlex

    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("checkpoints/*/*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        spans = [line for block in blocks for line in block.splitlines()]
        spans += [line for line in text.splitlines() if line.startswith("    ")]  # indented code blocks
        spans += [
            span.replace("\n", " ")
            for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
        ]
        for span in spans:
            match = re.search(r"(?:launch/(\w+\.py)|fm-agent) (.*)", span.split("#")[0])
            if match is None:
                continue
            script, rest = match.group(1), match.group(2).strip()
            if any(mark in rest for mark in ("<", "...", "|", "--help")) or (script and script not in SHIMS):
                continue
            try:
                words = shlex.split(rest)
            except ValueError:
                continue
            if any(word.isupper() for word in words):
                continue
            argv = [SHIMS[script], *words] if script else words
            if len(argv) > 1 and argv[0] in JOBS:
                found.append((f"{path.relative_to(REPO)}: {span.strip()[:100]}", argv))
    return found


def test_every_documented_command_still_parses() -> None:
    commands = documented_commands()
    assert len(commands) >= 20, "the documentation lost its commands, or this reader lost them"
    failures = []
    for where, argv in commands:
        try:
            parse(argv)
        except SystemExit:
            failures.append(where)
    assert not failures, "documented commands the CLI no longer accepts:\n" + "\n".join(failures)
