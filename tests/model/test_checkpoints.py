"""A user's own VLM folder becomes a servable policy; a broken checkpoint fails at load, naming the file
and field to fix, never at a client's first request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TEXT_TINY, VISION_TINY
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from fm_agent.cli import main
from fm_agent.model import CheckpointError, VLAPolicy
from fm_agent.model.importing import ImportSpec, import_checkpoint

SENTENCES = ["go to the red ball", "open the blue door", "pick up the green key", "put the box next to the ball"]


def user_vlm(folder: Path, vocab_padding: int = 8) -> Path:
    """What a user brings: a LLaVA (CLIP tower, CLS dropped) saved with its own BPE tokenizer."""
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]", "<image>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]")
    shape = {**TEXT_TINY, "vocab_size": len(tokenizer) + vocab_padding, "max_position_embeddings": 512}
    del shape["pad_token_id"]  # the user's folder names no pad token; import sets one
    text = LlamaConfig(**shape)
    vision = CLIPVisionConfig(**VISION_TINY, image_size=16, patch_size=8)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("import")
    out = root / "policy"
    spec = ImportSpec(env_family="babyai", cameras=["image"], history=2, discrete_actions=7)
    import_checkpoint(user_vlm(root / "vlm"), out, spec)
    return out


def test_an_imported_vlm_keeps_its_tokenizer_and_serves(imported: Path) -> None:
    policy = VLAPolicy.from_pretrained(imported)
    config = json.loads((imported / "fm_agent_policy.json").read_text())
    assert config["image_tokens"] == 4, "CLIP drops its CLS token: (16 / 8)^2 = 4, read off the model"
    assert config["instruction_tokens"] == "tokenizer"
    # the user's BPE merges are still there: an instruction is split by them, not by words
    ids = policy.tokenizer("go to the red ball", add_special_tokens=False)["input_ids"]
    assert policy.tokenizer.unk_token_id not in ids
    frame = {"image": np.zeros((16, 16, 3), np.uint8)}
    result = policy.predict_action([frame], "go to the red ball")
    assert result.actions.shape == (1,) and 0 <= int(result.actions[0]) < 7


def test_openvla_convention_maps_bins_onto_the_last_ids(tmp_path: Path) -> None:
    vlm = user_vlm(tmp_path / "vlm", vocab_padding=0)
    base = PreTrainedTokenizerFast.from_pretrained(vlm).vocab_size
    spec = ImportSpec(
        env_family="libero",
        cameras=["image"],
        chunk=2,
        convention="openvla",
        bins=32,
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
    )
    config = import_checkpoint(vlm, tmp_path / "policy", spec)
    policy = VLAPolicy.from_pretrained(tmp_path / "policy")
    lo, hi = policy.actions.token_range()
    assert (lo, hi) == (base - 32, base) and config.action_tokenizer["offset"] == base - 1
    assert policy.actions.encode(np.array([[-1.0, 1.0]])).tolist() == [base - 1, base - 32]  # bin 0 -> last id
    result = policy.predict_action([{"image": np.zeros((16, 16, 3), np.uint8)}], "open the blue door")
    assert result.actions.shape == (2, 2)


def broken_copy(imported: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(imported, folder)
    return folder


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def expect(folder: Path, file: str, field: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        VLAPolicy.from_pretrained(folder)
    assert (caught.value.file, caught.value.field) == (file, field), str(caught.value)
    assert str(folder) in str(caught.value)
    return caught.value


def test_missing_policy_file(imported: Path, tmp_path: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    (folder / "fm_agent_policy.json").unlink()
    assert "fm-agent import" in str(expect(folder, "fm_agent_policy.json", "file"))


def test_a_tokenizer_without_reserved_tokens(tmp_path: Path, imported: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    vlm = user_vlm(tmp_path / "vlm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(vlm / name, folder / name)
    assert "reserved token" in str(expect(folder, "tokenizer.json", "added_tokens"))


def test_vocabulary_larger_than_the_embeddings(imported: Path, tmp_path: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    policy = VLAPolicy.from_pretrained(imported)
    policy.tokenizer.add_tokens([f"extra{k}" for k in range(200)])
    policy.tokenizer.save_pretrained(folder)
    assert "resize" in str(expect(folder, "config.json", "text_config.vocab_size"))


def test_image_token_id_mismatch(imported: Path, tmp_path: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(image_token_id=3))
    expect(folder, "config.json", "image_token_id")


def test_tokens_per_image_mismatch(imported: Path, tmp_path: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    # without image_tokens the prompt reserves (image_size / patch_size)^2: patch 4 claims 16, the tower yields 4
    edit_json(folder / "fm_agent_policy.json", lambda c: c.update(image_tokens=None))
    edit_json(folder / "fm_agent_policy.json", lambda c: c["backbone"].update(patch_size=4))
    assert "16 placeholders" in str(expect(folder, "fm_agent_policy.json", "image_tokens"))


def test_missing_clip_range(tmp_path: Path) -> None:
    vlm = user_vlm(tmp_path / "vlm")
    spec = ImportSpec(env_family="libero", cameras=["image"], action_low=[-1.0], action_high=[1.0])
    import_checkpoint(vlm, tmp_path / "policy", spec)
    edit_json(tmp_path / "policy/fm_agent_policy.json", lambda c: c["action_tokenizer"].update(clip_low=[]))
    expect(tmp_path / "policy", "fm_agent_policy.json", "action_tokenizer.clip_low")


def test_action_offset_on_structural_tokens(imported: Path, tmp_path: Path) -> None:
    folder = broken_copy(imported, tmp_path)
    edit_json(folder / "fm_agent_policy.json", lambda c: c["action_tokenizer"].update(offset=0))
    message = str(expect(folder, "fm_agent_policy.json", "action_tokenizer.offset"))
    assert "decode" in message


def test_serve_refuses_a_broken_checkpoint_before_listening(imported: Path, tmp_path: Path, capsys) -> None:
    folder = broken_copy(imported, tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(image_token_id=3))
    assert main(["serve", "--checkpoint", str(folder), "--port", "0"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(error) == 1 and "config.json: image_token_id" in error[0], error


def test_import_command(tmp_path: Path, capsys) -> None:
    vlm = user_vlm(tmp_path / "vlm")
    code = main(["import", "--vlm", str(vlm), "--out", str(tmp_path / "policy"), "--preset", "babyai"])
    assert code == 0 and "servable" in capsys.readouterr().out
    assert main(["import", "--vlm", str(tmp_path), "--out", str(tmp_path / "p2"), "--preset", "libero"]) == 2
