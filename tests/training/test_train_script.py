"""launch/train_bc.py end to end: recorded demonstrations in, a loadable checkpoint with its training record out."""

from __future__ import annotations

import subprocess
import sys

import pytest
from paths import REPO

from envs.recording import RecordSettings, record
from fm_agent.model import VLAPolicy

ROOT = REPO


@pytest.mark.simulator
@pytest.mark.slow
def test_train_bc_trains_on_several_demo_folders_and_records_them(tmp_path) -> None:
    # Two folders, as with clean and DART demonstrations: both must be read, and both named in the record.
    record(["babyai:BabyAI-GoToLocal-v0"], 2, RecordSettings(out=tmp_path / "a"))
    record(["babyai:BabyAI-PickupLoc-v0"], 2, RecordSettings(out=tmp_path / "b"))
    out = tmp_path / "ckpt"
    command = [
        sys.executable,
        str(ROOT / "launch" / "train_bc.py"),
        "--preset",
        "babyai",
        "--data",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--out",
        str(out),
        "--hidden",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--validate-every",
        "1",
        "--val-fraction",
        "0.25",
        "--threads",
        "1",
        "--fresh",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    policy = VLAPolicy.from_pretrained(out)
    training = policy.config.training
    assert training["episodes"] == 4
    assert training["envs"] == ["babyai:BabyAI-GoToLocal-v0", "babyai:BabyAI-PickupLoc-v0"]
    assert training["data"].split() == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert training["steps"] == 2 and training["val_loss"] is not None
    assert (out / "loss.png").stat().st_size > 0 and (out / "train_log.json").exists()


@pytest.mark.simulator
@pytest.mark.slow
def test_an_internvl_policy_trains_serves_and_is_evaluated_under_every_mask(tmp_path) -> None:
    """A backbone other than LLaVA end to end: InternVL (InternViT, pixel shuffle, Qwen2) trained on BabyAI
    demonstrations, then evaluated through the gRPC server under every mask, every episode without error."""
    import json

    from fm_agent.cli import main

    record(["babyai:BabyAI-GoToLocal-v0"], 3, RecordSettings(out=tmp_path / "demos"))
    out = tmp_path / "ckpt"
    flags = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--steps", "2", "--batch-size", "4"]
    assert main(["train", "--preset", "babyai", "--backbone", "internvl", "--patch", "7", "--data",
                 str(tmp_path / "demos"), "--out", str(out), *flags, "--validate-every", "1",
                 "--val-fraction", "0.34", "--threads", "1", "--fresh"]) == 0  # fmt: skip
    policy = VLAPolicy.from_pretrained(out)
    assert type(policy.model).__name__ == "InternVLForConditionalGeneration"
    assert policy.config.tokens_per_image == 16  # (56 / 7)^2 = 64 patches, 2 x 2 pixel shuffle
    masks = ["causal", "Mf", "Mv2v", "Mv2t", "Mf+merge", "Mv2v+merge", "Mv2t+merge"]
    results = tmp_path / "eval"
    code = main(["eval-babyai", "--checkpoint", str(out), "--masks", *masks, "--episodes", "1", "--max-steps", "3",
                 "--levels", "BabyAI-GoToLocal-v0", "--server-threads", "1", "--out", str(results)])  # fmt: skip
    assert code == 0
    episodes = [json.loads(line) for line in (results / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["mask"] for e in episodes) == sorted(masks)
    assert all(e["steps"] == 3 and not e["error"] for e in episodes)


@pytest.mark.simulator
def test_train_refuses_a_history_stride_off_the_rendering_grid_before_any_work(tmp_path, capsys) -> None:
    """Episodes rendered every 4 steps hold stale images between; a stride of 2 would train on them."""
    from envs.recording import read_episode, write_episode
    from fm_agent.cli import main as cli

    record(["babyai:BabyAI-GoToLocal-v0"], 2, RecordSettings(out=tmp_path / "demos"))
    for path in (tmp_path / "demos").rglob("episode_*.h5"):
        episode = read_episode(path)
        episode.metadata["render_every"] = 4
        write_episode(path, episode)
    out = tmp_path / "ckpt"
    argv = ["train", "--preset", "babyai", "--data", str(tmp_path / "demos"), "--out", str(out)]
    argv += ["--history-stride", "2", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "needs a history stride that is a multiple of it, got 2" in err and "Traceback" not in err
    assert not out.exists()
