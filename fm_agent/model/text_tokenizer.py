"""A word-level tokenizer built here (``tokenizers``) over the instructions, plus reserved tokens.

VLA instructions use a small vocabulary; a word-level model keeps prompts short (one id per
word), which matters on a CPU. Reserved tokens cover the prompt structure, the image placeholder,
proprio bins and action bins, so the action tokenizer can map onto a contiguous id range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE, FRAME, INSTRUCTION, PROPRIO, ACTION = "<image>", "<frame>", "<instruction>", "<proprio>", "<action>"
QUERY = "<query>"  # an action placeholder of the parallel head: one per action token, all predicted in one pass
SPECIAL = [PAD, BOS, EOS, UNK, IMAGE, FRAME, INSTRUCTION, PROPRIO, ACTION, QUERY]
WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def proprio_token(k: int) -> str:
    return f"<p{k}>"


def action_token(k: int) -> str:
    return f"<a{k}>"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def build_tokenizer(instructions: Iterable[str], action_bins: int, proprio_bins: int) -> PreTrainedTokenizerFast:
    """Vocabulary: specials, proprio bins, action bins (contiguous), then instruction words."""
    vocab: dict[str, int] = {}
    for token in (
        SPECIAL + [proprio_token(k) for k in range(proprio_bins)] + [action_token(k) for k in range(action_bins)]
    ):
        vocab[token] = len(vocab)
    for text in instructions:
        for word in words(text):
            vocab.setdefault(word, len(vocab))
    model = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^a-z0-9<>]"), behavior="isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=SPECIAL[4:],
    )
    tokenizer.padding_side = "left"
    return tokenizer


def unknown_words(tokenizer_file: Path, instructions: Iterable[str]) -> list[str]:
    """Instruction words a checkpoint's vocabulary lacks (they become ``<unk>``): sorted, each once."""
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab()
    return sorted({w for text in instructions for w in words(text) if w not in vocab})
