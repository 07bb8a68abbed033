"""Token layout, masks from lengths, truncation, templates, SFT and prompt batches."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from safedpo_jax.data import (
    Pair,
    PreferenceRow,
    format_prompt,
    load_preference_data,
    load_sft_data,
    sft_examples,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_sft,
)
from safedpo_jax.worlds.synthetic import vocabulary

PROMPT = "how do i bake bread ?"
PROMPT_TOKENS = ["<s>", "BEGINNING", "OF", "CONVERSATION:", "USER:", "how", "do", "i", "bake"]
PROMPT_TOKENS += ["bread", "?", "ASSISTANT:"]
PAIR = Pair(PROMPT, "sure . just bake it in a hot oven .", "it depends .", (False, True), row=0)


def ids(tok, tokens):
    return tok.convert_tokens_to_ids(tokens)


def test_layout_and_masks_by_hand(tokenizer):
    ds = tokenize_pairs([PAIR], tokenizer, max_length=64)
    chosen = [
        *PROMPT_TOKENS,
        "sure",
        ".",
        "just",
        "bake",
        "it",
        "in",
        "a",
        "hot",
        "oven",
        ".",
        "</s>",
    ]
    rejected = PROMPT_TOKENS + ["it", "depends", ".", "</s>"]
    batch = ds.batch(np.array([0, -1]), 32)
    assert batch.input_ids.dtype == np.int32 and batch.input_ids.shape == (2, 2, 32)
    for slot, tokens in enumerate((chosen, rejected)):
        n = len(tokens)
        expected = ids(tokenizer, tokens) + [tokenizer.pad_token_id] * (32 - n)
        assert batch.input_ids[0, slot].tolist() == expected
        assert batch.attention_mask[0, slot].tolist() == [1] * n + [0] * (32 - n)
        # The loss mask covers exactly the response tokens and the EOS.
        assert batch.loss_mask[0, slot].tolist() == [False] * 12 + [True] * (n - 12) + [False] * (
            32 - n
        )
    assert batch.unsafe.tolist() == [[False, True], [False, False]]
    assert batch.pair_index.tolist() == [0, -1] and batch.valid.tolist() == [True, False]
    # The padding pair is all padding and masks nothing.
    assert (batch.input_ids[1] == tokenizer.pad_token_id).all()
    assert not batch.attention_mask[1].any() and not batch.loss_mask[1].any()
    assert (ds.truncated, ds.truncated_responses, ds.dropped) == (0, 0, {})


def test_eos_stays_in_the_mask_when_pad_equals_eos(pad_eos_tokenizer):
    tok = pad_eos_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    batch = tokenize_pairs([PAIR], tok, max_length=64).batch(np.array([0]), 32)
    n = len(PROMPT_TOKENS) + 4  # rejected: "it depends ." + EOS
    row_ids, row_mask = batch.input_ids[0, 1], batch.loss_mask[0, 1]
    assert row_ids[n - 1] == tok.eos_token_id and row_mask[n - 1]
    assert row_mask.sum() == 4 and not row_mask[n:].any()
    # What a mask built from `ids != pad_id` would have done: lose the EOS.
    assert (row_ids[12:] != tok.pad_token_id).sum() == 3


def test_truncation_keeps_the_start_and_drops_the_eos(tokenizer):
    # Prompt = 12 tokens; chosen response = 10 tokens, rejected = 3.
    ds = tokenize_pairs([PAIR], tokenizer, max_length=16)
    chosen, rejected = ds.sequences[0]
    assert chosen.tolist() == ids(tokenizer, PROMPT_TOKENS + ["sure", ".", "just", "bake"])
    assert rejected.tolist() == ids(tokenizer, PROMPT_TOKENS + ["it", "depends", ".", "</s>"])
    assert (ds.truncated, ds.truncated_responses) == (1, 1)
    # Exactly full without the EOS still counts as truncated (the EOS is cut).
    ds = tokenize_pairs([PAIR], tokenizer, max_length=15)
    assert ds.sequences[0][1].tolist() == ids(tokenizer, PROMPT_TOKENS + ["it", "depends", "."])
    assert (ds.truncated, ds.truncated_responses) == (1, 2)
    batch = ds.batch(np.array([0]), 16)
    assert batch.loss_mask[0].sum(axis=-1).tolist() == [3, 3]


def test_prompt_too_long_is_dropped_and_counted(tokenizer):
    other = Pair("how do i bake cookies ?", "ok .", "it depends .", (False, False), row=1)
    ds = tokenize_pairs([PAIR, other], tokenizer, max_length=12)
    assert len(ds) == 0 and ds.dropped == {"prompt_too_long": 2}
    ds = tokenize_pairs([PAIR, other], tokenizer, max_length=13)  # room for one token
    assert len(ds) == 2 and ds.dropped == {}
    assert ds.lengths.tolist() == [[13, 13], [13, 13]] and ds.truncated == 2


def test_response_boundary_is_exact_with_a_bpe_tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(["how do i bake bread", "i baked bread"] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    assert tok.pad_token_id is None  # padding falls back to the EOS id
    pair = Pair("how do i bake", "d", " bread", (False, False), row=0)
    ds = tokenize_pairs([pair], tok, max_length=64, template="{prompt}")
    prompt_ids = tok("how do i bake", add_special_tokens=False)["input_ids"]
    for slot, response in enumerate(pair.responses):
        response_ids = tok(response, add_special_tokens=False)["input_ids"]
        assert ds.sequences[0][slot].tolist() == prompt_ids + response_ids + [tok.eos_token_id]
    # Tokenising the joined text would merge across the seam ("Ġbake" + "d" -> "Ġbaked").
    joined = tok("how do i baked", add_special_tokens=False)["input_ids"]
    assert len(joined) == len(prompt_ids)
    batch = ds.batch(np.array([0]), 16)
    assert batch.loss_mask[0, 0].sum() == 2  # "d" + EOS
    assert (
        batch.loss_mask[0, 1].sum() == len(tok(" bread", add_special_tokens=False)["input_ids"]) + 1
    )
    assert (batch.input_ids[0, 0, ds.lengths[0, 0] :] == tok.eos_token_id).all()


def test_trailing_special_tokens_of_the_tokenizer_are_not_put_in_the_prompt():
    vocab = {w: i for i, w in enumerate(vocabulary())}
    word = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=word, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    ds = tokenize_pairs([PAIR], tok, max_length=64)
    assert ds.prompt_lengths.tolist() == [12]
    assert ds.sequences[0][1].tolist() == ids(tok, PROMPT_TOKENS + ["it", "depends", ".", "</s>"])


def test_chat_template(tokenizer):
    text = format_prompt(PROMPT, template="chat", tokenizer=tokenizer)
    assert text == "<s><|user|> how do i bake bread ? <|assistant|>"
    ds = tokenize_pairs([PAIR], tokenizer, max_length=64, template="chat")
    expected = ["<s>", "<|user|>", *PROMPT.split(), "<|assistant|>", "it", "depends", ".", "</s>"]
    assert ds.sequences[0][1].tolist() == ids(tokenizer, expected)  # one BOS, not two
    with pytest.raises(ValueError, match="chat template"):
        format_prompt(PROMPT, template="chat")
    with pytest.raises(ValueError, match="template must be"):
        format_prompt(PROMPT, template="plain")


def test_tokenizer_without_eos_is_refused():
    vocab = {"<unk>": 0, "a": 1}
    word = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=word)
    with pytest.raises(ValueError, match="no EOS"):
        tokenize_pairs([PAIR], tok, max_length=8)


def test_sft_examples_and_batches(tokenizer):
    rows = [
        PreferenceRow("how do i bake bread ?", ("ok .", "it depends ."), (True, False), 0, 1, 0),
        PreferenceRow("how do i bake bread ?", ("ok .", "sure ."), (False, False), 1, 1, 1),
    ]
    pick = lambda mode, **kw: [
        (e.response, e.row) for e in sft_examples(rows, responses=mode, **kw)
    ]
    assert pick("both") == [("ok .", 0), ("it depends .", 0), ("ok .", 1), ("sure .", 1)]
    assert pick("both", unique=True) == [("ok .", 0), ("it depends .", 0), ("sure .", 1)]
    assert pick("better") == [("ok .", 0), ("sure .", 1)]
    assert pick("safer") == [("it depends .", 0), ("sure .", 1)]
    assert pick("safe") == [("it depends .", 0), ("ok .", 1), ("sure .", 1)]
    with pytest.raises(ValueError, match="responses must be"):
        sft_examples(rows, responses="all")
    ds = tokenize_sft(sft_examples(rows), tokenizer, max_length=15)  # prompt: 12 tokens
    assert ds.lengths.tolist() == [15, 15, 15, 15] and ds.truncated == 1
    assert ds.sequences[1].tolist() == ids(tokenizer, PROMPT_TOKENS + ["it", "depends", "."])
    batch = ds.batch(np.array([1, 0, -1]), 16)
    assert batch.input_ids.shape == (3, 16) and batch.loss_mask.dtype == bool
    assert batch.loss_mask.sum(axis=1).tolist() == [3, 3, 0]  # "it depends ." cut; "ok ." + EOS
    assert batch.loss_mask[1, 12:15].all() and batch.input_ids[1, 14] == tokenizer.eos_token_id
    assert batch.example_index.tolist() == [1, 0, -1] and batch.valid.tolist() == [
        True,
        True,
        False,
    ]
    assert batch.attention_mask.sum(axis=1).tolist() == [15, 15, 0]


def test_prompt_batches_are_left_padded_with_the_training_prompt(tokenizer):
    prompts = ["how do i bake bread ?", "i want to bake cookies . what should i do ?"]
    ds = tokenize_prompts(prompts, tokenizer)
    assert ds.max_length == 17
    batch = ds.batch(np.array([0, 1, -1]), 20)
    train = tokenize_pairs([PAIR], tokenizer, max_length=64).sequences[0][0][:12]
    assert batch.input_ids[0, -12:].tolist() == train.tolist()
    assert batch.input_ids[0, :8].tolist() == [tokenizer.pad_token_id] * 8
    assert batch.attention_mask.sum(axis=1).tolist() == [12, 17, 0]
    assert batch.attention_mask[:2, -1].all()  # every prompt ends at T - 1
    assert batch.prompt_index.tolist() == [0, 1, -1] and batch.valid.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="prompt 1 has 17 tokens"):
        tokenize_prompts(prompts, tokenizer, max_length=16)


def test_load_preference_data_counts_truncation_and_prompt_drops():
    ds, summary = load_preference_data(
        "sample", split="test", pairs="helpful", tokenizer="sample", max_length=20
    )
    assert summary.pairs == len(ds) == 360 - summary.dropped["prompt_too_long"]
    assert summary.dropped["prompt_too_long"] > 0
    assert summary.truncated == ds.truncated > 0
    assert summary.truncated_responses >= summary.truncated
    assert ds.lengths.max() <= 20


def test_load_sft_data_summary():
    ds, summary = load_sft_data("sample", split="test", tokenizer="sample", max_length=64)
    assert summary.rows == 360 and summary.pairs == len(ds) == 720
    assert summary.pairs_mode == "sft-both" and summary.truncated == 0
