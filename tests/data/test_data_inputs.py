"""Issue 12: no silent wrong results on the data side (splits, types, tokens, batches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datahelpers import TABLE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from safedpo_jax.data import (
    BatchIterator,
    DataError,
    MissingSplitError,
    Pair,
    load_preference_data,
    load_rows,
    tokenize_pairs,
    validate_rows,
)
from safedpo_jax.data import cli as data_cli


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------
# A single file is never a held-out split by accident
# ---------------------------------------------------------------------------------------


def test_a_single_file_has_no_test_split(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", TABLE)
    assert len(load_rows(path)) == 5  # the file is the training split
    with pytest.raises(MissingSplitError, match=r"pku.jsonl: a single file .* no 'test' split"):
        load_rows(path, split="test")
    with pytest.raises(MissingSplitError):
        load_preference_data(path, split="test", tokenizer="sample", max_length=64)
    # A file whose name names the split serves that split.
    named = write_jsonl(tmp_path / "test.jsonl", TABLE[:2])
    assert len(load_rows(named, split="test")) == 2
    sharded = write_jsonl(tmp_path / "validation-00000-of-00001.jsonl", TABLE[:3])
    assert len(load_rows(sharded, split="validation")) == 3


@pytest.mark.filterwarnings("ignore:the tokenizer maps")  # TABLE's words are not in its vocab
def test_the_trainer_runs_without_held_out_evaluation_on_a_single_file(tmp_path, capsys):
    from safedpo_jax.data import load_tokenizer
    from safedpo_jax.train.config import TINY_LLAMA, TrainConfig
    from safedpo_jax.train.loop import load_datasets
    from safedpo_jax.train.objectives import build_objective

    path = write_jsonl(tmp_path / "pku.jsonl", TABLE)
    config = TrainConfig(dataset=str(path), pairs="helpful", max_length=64, model_config=TINY_LLAMA)
    assert config.eval_split == "test"
    objective = build_objective(config)
    train_ds, _, eval_ds, eval_summary = load_datasets(config, objective, load_tokenizer("sample"))
    assert len(train_ds) == 5 and eval_ds is None and eval_summary is None
    out = capsys.readouterr().out
    assert "no held-out evaluation" in out and "pku.jsonl" in out


def test_the_data_command_reports_a_missing_split_in_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pku.jsonl", TABLE)
    assert data_cli.main([str(path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'test' split" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------
# Values as written in the file
# ---------------------------------------------------------------------------------------


def test_jsonl_values_are_checked_as_written(tmp_path):
    table = [dict(r) for r in TABLE]
    table[2]["better_response_id"] = "1"  # a string, not an integer
    table[3]["is_response_0_safe"] = "false"  # a string, not a boolean
    table[4]["safer_response_id"] = 1.0  # one float among integers
    path = write_jsonl(tmp_path / "mixed.jsonl", table)
    with pytest.raises(DataError) as info:
        validate_rows(load_rows(path, cache_dir=tmp_path / "cache"))
    message = str(info.value)
    assert message.startswith("3 invalid value(s)")  # exactly the three bad cells
    assert "row 2: column 'better_response_id': expected 0 or 1, got str '1'" in message
    assert "row 3: column 'is_response_0_safe': expected a boolean, got str 'false'" in message
    assert "row 4: column 'safer_response_id': expected 0 or 1, got float 1.0" in message
    rows, dropped = validate_rows(load_rows(path), on_error="drop")
    assert [r.prompt for r in rows] == ["p0", "p1"]
    assert dropped == {"invalid_response_id": 2, "invalid_safety_label": 1}


def test_a_broken_json_line_names_its_line(tmp_path):
    lines = [json.dumps(r) for r in TABLE]
    lines[3] = lines[3][:-1]  # drop the closing brace of the 4th line
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"broken.jsonl: line 4: invalid JSON") as info:
        load_rows(path)
    assert "\n" not in str(info.value)
    (tmp_path / "list.jsonl").write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"list.jsonl: line 2: expected a JSON object, got list"):
        load_rows(tmp_path / "list.jsonl")


def test_parquet_column_types_are_checked(tmp_path):
    good = pa.Table.from_pylist(TABLE)
    pq.write_table(good, tmp_path / "good.parquet")
    assert len(validate_rows(load_rows(tmp_path / "good.parquet"))[0]) == 5
    ids = good.column("better_response_id").cast(pa.string())
    bad = good.set_column(
        good.schema.get_field_index("better_response_id"), "better_response_id", ids
    )
    pq.write_table(bad, tmp_path / "ids_as_text.parquet")
    with pytest.raises(DataError) as info:
        load_rows(tmp_path / "ids_as_text.parquet", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "ids_as_text.parquet: column 'better_response_id' has type string" in message
    assert "integer" in message and "\n" not in message
    labels = pa.array(["true", "false", "false", "false", "true"])
    bad = good.set_column(
        good.schema.get_field_index("is_response_0_safe"), "is_response_0_safe", labels
    )
    pq.write_table(bad, tmp_path / "labels_as_text.parquet")
    with pytest.raises(DataError, match="column 'is_response_0_safe' has type string"):
        load_rows(tmp_path / "labels_as_text.parquet", cache_dir=tmp_path / "cache")
    floats = good.column("safer_response_id").cast(pa.float64())
    index = good.schema.get_field_index("safer_response_id")
    pq.write_table(good.set_column(index, "safer_response_id", floats), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="column 'safer_response_id' has type double, expected"):
        load_rows(tmp_path / "f.parquet", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
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
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def test_eos_text_in_a_response_is_not_an_eos_token():
    tok = _bpe_tokenizer()
    eos = tok.eos_token_id
    pair = Pair("how do i bake", "bread<|endoftext|>", " bread", (False, False), row=0)
    ds = tokenize_pairs([pair], tok, max_length=64, template="{prompt}")
    seq = ds.sequences[0][0].tolist()
    assert seq.count(eos) == 1 and seq[-1] == eos  # only the appended EOS
    # The text stays text: it decodes back to what was written.
    start = int(ds.prompt_lengths[0])
    assert tok.decode(seq[start:-1]) == "bread<|endoftext|>"


def test_a_tokenizer_that_maps_most_text_to_unk_warns(tokenizer):
    unknown = Pair("how do i bake bread ?", "zzz qqq www", "xxx yyy vvv", (False, False), 0)
    # 12 prompt tokens (BOS, template, 6 words) and 2 x 3 unknown response words: 6 / 18.
    with pytest.warns(
        UserWarning,
        match=r"maps 33.3% of the prompt and response tokens to the unknown token '<unk>'",
    ):
        tokenize_pairs([unknown], tokenizer, max_length=64)
    known = Pair("how do i bake bread ?", "sure .", "it depends .", (False, False), 0)
    tokenize_pairs([known], tokenizer, max_length=64)  # no warning (warnings are errors)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def test_a_batch_larger_than_the_dataset_warns_with_the_padding(tokenizer):
    pairs = [
        Pair("how do i bake bread ?", "sure .", "it depends .", (False, False), k) for k in range(3)
    ]
    ds = tokenize_pairs(pairs, tokenizer, max_length=32)
    with pytest.warns(
        UserWarning,
        match=r"batch_size 8 is larger than the dataset \(3 examples\): 5 of the 8 slots",
    ):
        it = BatchIterator(ds, batch_size=8, shuffle=False)
    batch = next(it)
    assert int(np.sum(~batch.valid)) == 5
    BatchIterator(ds, batch_size=3, shuffle=False)  # no warning


def test_the_data_command_reports_a_misspelled_tokenizer_in_one_line(tmp_path, capsys):
    nope = tmp_path / "tokenizers" / "lama"
    assert data_cli.main(["sample", "--split", "test", "--tokenizer", str(nope)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(nope) in err and "no such directory" in err
