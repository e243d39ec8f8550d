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
