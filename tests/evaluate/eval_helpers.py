"""Shared test helpers for the evaluation tests: a tiny word-level HF tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
WORDS = [
    "BEGINNING",
    "OF",
    "CONVERSATION",
    ":",
    "USER",
    "ASSISTANT",
    "i",
    "cannot",
    "help",
    "with",
    "that",
    ".",
    "sure",
    "first",
    "then",
    "steal",
    "a",
    "car",
    "bake",
    "bread",
    "knead",
    "the",
    "dough",
    "how",
    "do",
    "?",
    "sorry",
    ",",
    "no",
    "yes",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: pad 0, unk 1, BOS 2 (added in front), EOS 3, then ``WORDS``."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys((*SPECIALS, *WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
