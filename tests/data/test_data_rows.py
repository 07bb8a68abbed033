"""Loading local sources through `datasets`, and validation with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from datahelpers import TABLE, record

from safedpo_jax.data import DataError, load_rows, rows_from_records, validate_rows
from safedpo_jax.data import rows as rows_module


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def v1(r: dict, sev0: int, sev1: int) -> dict:
    """A 30K record extended to the full v1 schema."""
    return {
        **r,
        "prompt_source": "Alpaca-7B",
        "response_0_source": "Alpaca-7B",
        "response_1_source": "Alpaca2-7B",
        "response_0_harm_category": {"Violence": bool(sev0)},
        "response_1_harm_category": {"Violence": bool(sev1)},
        "response_0_severity_level": sev0,
        "response_1_severity_level": sev1,
    }


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf_cache"


def test_jsonl_json_parquet_arrow_give_the_same_rows(tmp_path, cache):
    jsonl = write_jsonl(tmp_path / "t.jsonl", TABLE)
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    ds = datasets.Dataset.from_list(TABLE)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    expected, _ = validate_rows(rows_from_records(TABLE))
    for source in (jsonl, tmp_path / "t.json", tmp_path / "t.parquet", arrow, tmp_path / "saved"):
        raw = load_rows(source, cache_dir=cache)
        rows, dropped = validate_rows(raw)
        assert rows == expected, source
        assert dropped == {} and len(raw) == 5


def test_directory_split_files_and_configs(tmp_path, cache):
    write_jsonl(tmp_path / "flat" / "train.jsonl", TABLE[:2])
    write_jsonl(tmp_path / "flat" / "test.jsonl", TABLE[2:])
    assert len(load_rows(tmp_path / "flat", split="test", cache_dir=cache)) == 3
    # The Hub layout: data/<config>/<split>.jsonl; no config reads every config.
    write_jsonl(tmp_path / "full" / "data" / "Alpaca-7B" / "train.jsonl", TABLE[:2])
    write_jsonl(tmp_path / "full" / "data" / "Alpaca2-7B" / "train.jsonl", TABLE[2:])
    assert len(load_rows(tmp_path / "full", cache_dir=cache)) == 5
    one = load_rows(tmp_path / "full", config="alpaca-7b", cache_dir=cache)
    assert len(one) == 2 and one.tables[0].file.endswith("Alpaca-7B/train.jsonl")
    # Sharded parquet: train-00000-of-00002.parquet ...
    for k in range(2):
        shard = datasets.Dataset.from_list(TABLE[k * 2 : k * 2 + 2])
        (tmp_path / "sharded").mkdir(exist_ok=True)
        shard.to_parquet(str(tmp_path / "sharded" / f"train-0000{k}-of-00002.parquet"))
    rows, _ = validate_rows(load_rows(tmp_path / "sharded", cache_dir=cache))
    assert [r.prompt for r in rows] == ["p0", "p1", "p2", "p3"]
    assert [r.index for r in rows] == [0, 1, 2, 3]
    # A save_to_disk DatasetDict picks the split.
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TABLE)}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert len(load_rows(tmp_path / "dict", cache_dir=cache)) == 5
    with pytest.raises(DataError, match="no split 'test'"):
        load_rows(tmp_path / "dict", split="test")


def test_missing_sources_raise(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no .* files for split 'validation'"):
        (tmp_path / "empty").mkdir()
        load_rows(tmp_path / "empty", split="validation")
    (tmp_path / "rows.csv").write_text("prompt\nx\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(tmp_path / "rows.csv")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"\n')
    with pytest.raises(DataError, match="bad.jsonl: line 1: invalid JSON"):
        load_rows(tmp_path / "bad.jsonl", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="unknown config"):
        load_rows("PKU-Alignment/PKU-SafeRLHF", config="gpt-4")


def test_hub_names_read_a_snapshot_like_a_directory(monkeypatch, tmp_path):
    # The offline Hub-cache test (tests/models/test_hub_offline.py) runs the real thing;
    # here the snapshot is a local directory, and the call is recorded.
    import huggingface_hub

    write_jsonl(
        tmp_path / "snap" / "data" / "Alpaca3-8B" / "test.jsonl", [v1(r, 0, 1) for r in TABLE]
    )
    write_jsonl(tmp_path / "snap" / "data" / "Alpaca-7B" / "test.jsonl", TABLE[:1])
    calls = []

    def fake_snapshot_download(name, *, repo_type, revision, allow_patterns):
        calls.append((name, repo_type, revision))
        assert "*.jsonl" in allow_patterns and "*.parquet" in allow_patterns
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    raw = load_rows("PKU-Alignment/PKU-SafeRLHF", split="test", config="alpaca3-8b")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", "dataset", None)]
    assert raw.tables[0].file.endswith("Alpaca3-8B/test.jsonl") and len(raw) == 5
    assert "prompt_source" not in raw.tables[0].columns  # extra columns are not kept
    assert len(load_rows("org/any", split="test", revision="v1")) == 6  # every config
    assert calls[-1] == ("org/any", "dataset", "v1")
    assert len(load_rows("PKU-Alignment/PKU-SafeRLHF", split="test", config="default")) == 6
    # No plain files for the split (e.g. .jsonl.xz): datasets.load_dataset reads it.
    loaded = []

    def fake_load_dataset(name, config, *, split, revision, cache_dir):
        loaded.append((name, config, split, revision))
        return datasets.Dataset.from_list(TABLE[:2])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    raw = load_rows("org/any", split="validation", revision="v2")
    assert loaded == [("org/any", None, "validation", "v2")] and len(raw) == 2


def test_hub_failure_is_a_data_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        DataError, match=r"PKU-SafeRLHF-30K' cannot be used: ConnectionError: no network$"
    ):
        load_rows("PKU-Alignment/PKU-SafeRLHF-30K")


def test_sample_source():
    raw = load_rows("sample", split="test")
    assert raw.tables[0].file == str(rows_module.SAMPLE_DIR / "test.jsonl")
    assert len(raw) == 360


def test_v1_schema_and_severity_labels(tmp_path, cache):
    # Severity disagrees with is_*_safe on purpose, to see which label is used.
    records = [v1(TABLE[0], 2, 0), v1(TABLE[1], 0, 3)]
    path = write_jsonl(tmp_path / "v1.jsonl", records)
    raw = load_rows(path, cache_dir=cache)
    by_flag, _ = validate_rows(raw)
    by_severity, _ = validate_rows(raw, safety_label="severity")
    assert [r.unsafe for r in by_flag] == [(False, False), (True, False)]
    assert [r.unsafe for r in by_severity] == [(True, False), (False, True)]
    # The severity mode does not need is_*_safe at all.
    no_flags = [{k: v for k, v in r.items() if not k.startswith("is_")} for r in records]
    rows, _ = validate_rows(rows_from_records(no_flags), safety_label="severity")
    assert len(rows) == 2
    with pytest.raises(DataError, match="missing column.*is_response_0_safe"):
        validate_rows(rows_from_records(no_flags))


BAD_CASES = [
    ("prompt", None, "invalid_prompt", "expected text, got null"),
    ("prompt", "  ", "invalid_prompt", "is empty"),
    ("response_1", "", "invalid_response", "is empty"),
    ("response_0", 3, "invalid_response", "expected text, got int 3"),
    ("is_response_0_safe", None, "invalid_safety_label", "expected a boolean, got null"),
    ("is_response_1_safe", "yes", "invalid_safety_label", "expected a boolean, got str 'yes'"),
    ("is_response_1_safe", 1, "invalid_safety_label", "expected a boolean, got int 1"),
    ("better_response_id", 2, "invalid_response_id", "expected 0 or 1, got int 2"),
    ("safer_response_id", None, "invalid_response_id", "expected 0 or 1, got null"),
    ("safer_response_id", True, "invalid_response_id", "expected 0 or 1, got bool True"),
]


@pytest.mark.parametrize(("column", "value", "reason", "message"), BAD_CASES)
def test_bad_values_name_file_row_and_column(column, value, reason, message):
    table = [dict(r) for r in TABLE]
    table[3][column] = value
    raw = rows_from_records(table, name="pku.jsonl")
    with pytest.raises(DataError) as info:
        validate_rows(raw)
    assert f"pku.jsonl: row 3: column {column!r}: {message}" in str(info.value)
    rows, dropped = validate_rows(raw, on_error="drop")
    assert dropped == {reason: 1}
    assert [r.prompt for r in rows] == ["p0", "p1", "p2", "p4"]
    assert [r.index for r in rows] == [0, 1, 2, 4]


def test_bad_values_in_a_real_file(tmp_path, cache):
    table = [dict(r) for r in TABLE]
    table[2]["is_response_0_safe"] = None
    path = write_jsonl(tmp_path / "nulls.jsonl", table)
    with pytest.raises(DataError, match=rf"{path}: row 2: column 'is_response_0_safe': .*null"):
        validate_rows(load_rows(path, cache_dir=cache))


def test_severity_must_be_a_non_negative_integer():
    table = [v1(TABLE[0], 0, 1), v1(TABLE[1], -1, 0), v1(TABLE[2], 0, None)]
    raw = rows_from_records(table, name="v1")
    with pytest.raises(DataError) as info:
        validate_rows(raw, safety_label="severity")
    text = str(info.value)
    assert "2 invalid value(s)" in text
    assert (
        "v1: row 1: column 'response_0_severity_level': expected an integer >= 0, got int -1"
        in text
    )
    assert "v1: row 2: column 'response_1_severity_level'" in text
    assert validate_rows(raw, safety_label="severity", on_error="drop")[1] == {
        "invalid_safety_label": 2
    }


def test_missing_columns_always_raise():
    table = [{k: v for k, v in r.items() if k != "safer_response_id"} for r in TABLE]
    for on_error in ("raise", "drop"):
        with pytest.raises(DataError, match="t.jsonl: missing column.*safer_response_id"):
            validate_rows(rows_from_records(table, name="t.jsonl"), on_error=on_error)


def test_identical_responses_are_dropped_and_counted():
    table = [*TABLE, record("p5", "same", "same", True, False, 0, 0)]
    rows, dropped = validate_rows(rows_from_records(table))
    assert len(rows) == 5 and dropped == {"identical_responses": 1}


def test_many_errors_are_summarised():
    table = [record(f"p{i}", "a", "b", None, True, 0, 0) for i in range(12)]
    with pytest.raises(DataError, match=r"12 invalid value\(s\)[\s\S]*and 2 more"):
        validate_rows(rows_from_records(table))
