"""Reading PKU-SafeRLHF preference rows through `datasets`, and validating them.

Sources (`load_rows`):

- ``"sample"``: the embedded synthetic sample (`SAMPLE_DIR`, see `safedpo_jax.worlds.synthetic`).
- a local file (``.jsonl``, ``.json``, ``.parquet``, ``.arrow``): the training split
  (``split="train"``), or the split its name names (``test.jsonl``, ``test-00000.parquet``,
  ``test/x.jsonl`` for ``split="test"``). Any other split raises `MissingSplitError`: one
  training file never poses as a held-out split (the trainer then runs without held-out
  evaluation and says so). JSON files are read with `json` (values exactly as written;
  a broken line is named by its number); parquet/arrow columns must have the right arrow
  type (text, boolean, integer), never cast.
- a local directory: a `datasets.Dataset.save_to_disk` directory, or the data files whose
  name is the split (``train.jsonl``, ``train-00000-of-00002.parquet``, ``train/*.arrow``)
  anywhere below it; with ``config``, only below a sub-directory named like the config
  (case-insensitive, e.g. ``data/Alpaca-7B`` for ``alpaca-7b``).
- anything else is a Hugging Face Hub dataset id: its data files are fetched with
  `huggingface_hub.snapshot_download` (``revision`` a branch, tag or commit; offline,
  ``HF_HUB_OFFLINE=1``, from the Hub cache) and the snapshot is read like a local
  directory (config ``default`` without a ``default`` folder: every file). A snapshot
  without plain files for the split (e.g. compressed ones) falls back to
  ``datasets.load_dataset(name, config, split=split, revision=revision)``.
  ``PKU-Alignment/PKU-SafeRLHF-30K`` or ``PKU-Alignment/PKU-SafeRLHF`` (configs
  ``default``, ``alpaca-7b``, ``alpaca2-7b``, ``alpaca3-8b``).

Schemas: the 30K columns ``prompt, response_0, response_1, is_response_0_safe,
is_response_1_safe, better_response_id, safer_response_id``, and the full v1 schema,
which adds ``response_{0,1}_severity_level`` (0 safe, 1-3 minor to severe) among others.
Other columns are ignored. ``is_response_*_safe`` is True for a SAFE response; this
module turns it into ``unsafe`` (True = unsafe, the paper's h), or, with
``safety_label="severity"``, uses ``severity_level > 0`` as unsafe instead.

`validate_rows` checks every row and reports problems as ``FILE: row R: column 'C': ...``
(R is the 0-based row position in that file). With ``on_error="drop"`` bad rows are
dropped and counted by reason instead. Rows whose two responses are identical (after
stripping whitespace) are always dropped and counted (``identical_responses``).

>>> raw = rows_from_records([
...     {"prompt": "hi", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
...      "is_response_1_safe": False, "better_response_id": 1, "safer_response_id": 0}])
>>> rows, dropped = validate_rows(raw)
>>> rows[0].unsafe, rows[0].better_response_id, dropped
((False, True), 1, {})
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DataError",
    "MissingSplitError",
    "PreferenceRow",
    "RawRows",
    "RawTable",
    "SAMPLE",
    "SAMPLE_DIR",
    "SAMPLE_TOKENIZER_DIR",
    "load_rows",
    "rows_from_records",
    "unique_prompts",
    "validate_rows",
]

SAMPLE = "sample"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_TOKENIZER_DIR = SAMPLE_DIR / "tokenizer"

TEXT_COLUMNS = ("prompt", "response_0", "response_1")
ID_COLUMNS = ("better_response_id", "safer_response_id")
SAFE_COLUMNS = ("is_response_0_safe", "is_response_1_safe")
SEVERITY_COLUMNS = ("response_0_severity_level", "response_1_severity_level")
SCHEMA_COLUMNS = TEXT_COLUMNS + SAFE_COLUMNS + ID_COLUMNS + SEVERITY_COLUMNS
DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
HUB_CONFIGS = {"PKU-Alignment/PKU-SafeRLHF": ("default", "alpaca-7b", "alpaca2-7b", "alpaca3-8b")}

SafetyLabel = Literal["is_safe", "severity"]
OnError = Literal["raise", "drop"]


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row and column."""


class MissingSplitError(DataError):
    """The source has no such split (e.g. a held-out split asked of one training file)."""


@dataclass(frozen=True)
class RawTable:
    """The schema columns read from one file (or Hub split), before validation."""

    file: str
    columns: Mapping[str, Sequence[Any]]
    num_rows: int


@dataclass(frozen=True)
class RawRows:
    """Everything `load_rows` read: one `RawTable` per file, in reading order."""

    source: str
    split: str
    tables: tuple[RawTable, ...]

    def __len__(self) -> int:
        return sum(t.num_rows for t in self.tables)


@dataclass(frozen=True)
class PreferenceRow:
    """One validated row.

    ``unsafe[k]`` is True when response k is unsafe (h = 1). ``index`` is the row's
    0-based position among all rows read (across files, in reading order).
    """

    prompt: str
    responses: tuple[str, str]
    unsafe: tuple[bool, bool]
    better_response_id: int
    safer_response_id: int
    index: int


def rows_from_records(
    records: Sequence[Mapping[str, Any]], *, name: str = "<records>", split: str = "train"
) -> RawRows:
    """Wrap in-memory rows (dicts with the schema columns) as `RawRows` named ``name``.

    A column counts as present when the first record has it.
    """
    present = [c for c in SCHEMA_COLUMNS if records and c in records[0]]
    columns = {c: [r.get(c) for r in records] for c in present}
    return RawRows(name, split, (RawTable(name, columns, len(records)),))


def load_rows(
    source: str | Path,
    *,
    split: str = "train",
    config: str | None = None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
) -> RawRows:
    """Read the rows of ``split`` from ``source`` (see the module docstring for sources).

    ``cache_dir`` is passed to `datasets` for parquet/arrow files (default: its usual
    cache); ``revision`` (branch, tag or commit) applies to Hub datasets. Raises
    `DataError` when nothing can be read.
    """

    cache = None if cache_dir is None else str(cache_dir)
    name = str(source)
    path = SAMPLE_DIR if name == SAMPLE else Path(name).expanduser()
    if path.is_file():
        if not _file_serves_split(path, split):
            raise MissingSplitError(
                f"{path}: a single file is the training split; it has no {split!r} split "
                f"(name the file {split}.{path.suffix.lstrip('.')}, give a directory holding "
                f"{split}.* files, or evaluate without a held-out split)"
            )
        tables = (_read_file(path, cache),)
    elif path.is_dir():
        tables = _read_directory(path, split, config, cache)
    elif path.suffix in DATA_EXTENSIONS or name.startswith(("/", ".", "~")):
        raise DataError(f"{name}: no such file or directory")
    else:
        if name in HUB_CONFIGS and config is not None and config not in HUB_CONFIGS[name]:
            raise DataError(f"{name}: unknown config {config!r}; one of {HUB_CONFIGS[name]}")
        snapshot = hub_dataset_dir(name, revision=revision)
        try:
            tables = _read_directory(snapshot, split, config, cache)
        except MissingSplitError as exc:  # a layout of its own (e.g. compressed files)
            tables = (_load_hub_dataset(name, split, config, revision, cache, exc),)
    return RawRows(name, split, tables)


def _load_hub_dataset(
    name: str,
    split: str,
    config: str | None,
    revision: str | None,
    cache: str | None,
    first: Exception,
) -> RawTable:
    """`datasets.load_dataset` for a Hub snapshot whose files the directory reader misses."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision, cache_dir=cache)
    except Exception as exc:  # any failure becomes one line
        raise DataError(
            f"{name}: cannot load split {split!r} ({first}; datasets.load_dataset: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from None
    label = f"{name}[{config}]:{split}" if config else f"{name}:{split}"
    return _table(label, ds)


HUB_DATA_PATTERNS = [f"*{ext}" for ext in DATA_EXTENSIONS] + ["*dataset_dict.json", "*state.json"]


def hub_dataset_dir(name: str, *, revision: str | None = None) -> Path:
    """The local snapshot of Hub dataset ``name`` (its data files only).

    `huggingface_hub.snapshot_download` with ``repo_type="dataset"``: downloads what is
    missing, or, offline (``HF_HUB_OFFLINE=1``), reads the Hub cache (``HF_HUB_CACHE``).
    Any failure is a one-line `DataError` naming the dataset and revision.
    """
    from huggingface_hub import snapshot_download

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise DataError(f"{name}: no such file or directory, and not a Hub dataset id 'org/name'")
    try:
        local = snapshot_download(
            name, repo_type="dataset", revision=revision, allow_patterns=HUB_DATA_PATTERNS
        )
    except Exception as exc:  # any Hub failure becomes one line
        at = f" at revision {revision!r}" if revision else ""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"{name}: not a local path, and Hub dataset {name!r}{at} cannot be used: "
            f"{type(exc).__name__}: {reason}"
        ) from None
    return Path(local)


def _split_pattern(split: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(split)}([-_.].*)?")


def _file_serves_split(path: Path, split: str) -> bool:
    """A single file is split ``"train"``, or the split its name (or folder) names."""
    return (
        split == "train"
        or bool(_split_pattern(split).fullmatch(path.stem))
        or (path.parent.name == split)
    )


def _arrow_kind(column: str) -> str:
    if column in TEXT_COLUMNS:
        return "text"
    if column in SAFE_COLUMNS:
        return "boolean"
    return "integer"


def _check_arrow_types(label: str, schema: Any) -> None:
    """`DataError` naming the first schema column whose arrow type is not what it must be.

    Checked before any value is read, so that pyarrow never casts ``"1"`` to 1 or
    ``"false"`` to False behind the row validation's back.
    """
    import pyarrow as pa

    checks = {
        "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        "boolean": pa.types.is_boolean,
        "integer": pa.types.is_integer,
    }
    for field in schema:
        if field.name not in SCHEMA_COLUMNS or pa.types.is_null(field.type):
            continue  # an all-null column: the row checks name every row
        kind = _arrow_kind(field.name)
        if not checks[kind](field.type):
            raise DataError(
                f"{label}: column {field.name!r} has type {field.type}, expected {kind} "
                "values (fix the file; values are not converted)"
            )


def _table(label: str, ds: Any) -> RawTable:
    present = [c for c in SCHEMA_COLUMNS if c in ds.column_names]
    _check_arrow_types(label, ds.data.schema)
    return RawTable(label, ds.select_columns(present).to_dict(), ds.num_rows)


def _read_json_records(path: Path) -> list[Any]:
    """The records of a .jsonl (one object per line) or .json (a list of objects) file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {number}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from None
        where = "line"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        records = list(enumerate(data))
        where = "item"
    for number, r in records:
        if not isinstance(r, dict):
            raise DataError(
                f"{path}: {where} {number}: expected a JSON object, got {type(r).__name__}"
            )
    return [r for _, r in records]


def _read_file(path: Path, cache: str | None) -> RawTable:
    import datasets

    builder = DATA_EXTENSIONS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use one of {sorted(DATA_EXTENSIONS)}")
    if builder == "json":  # values exactly as written, no arrow casting
        records = _read_json_records(path)
        present = [c for c in SCHEMA_COLUMNS if any(c in r for r in records)]
        columns = {c: [r.get(c) for r in records] for c in present}
        return RawTable(str(path), columns, len(records))
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
    except Exception as exc:  # any failure becomes one clear message
        raise DataError(f"{path}: cannot be read as {builder}: {exc}") from exc
    return _table(str(path), ds)


def _read_directory(
    path: Path, split: str, config: str | None, cache: str | None
) -> tuple[RawTable, ...]:
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r}; found {sorted(loaded)}")
            loaded = loaded[split]
        return (_table(f"{path}:{split}", loaded),)
    roots = [path]
    if config is not None:
        roots = [
            d for d in sorted(path.rglob("*")) if d.is_dir() and d.name.lower() == config.lower()
        ]
        if not roots and config == "default":  # the Hub's default config: every file
            roots = [path]
        if not roots:
            raise DataError(f"{path}: no sub-directory for config {config!r}")
    pattern = _split_pattern(split)
    files = sorted(
        {
            f
            for root in roots
            for f in root.rglob("*")
            if f.is_file()
            and f.suffix in DATA_EXTENSIONS
            and (pattern.fullmatch(f.stem) or f.parent.name == split)
        }
    )
    if not files:
        raise MissingSplitError(
            f"{path}: no {'/'.join(DATA_EXTENSIONS)} files for split {split!r} "
            f"(looked for {split}.*, {split}-*.* and {split}/*)"
        )
    return tuple(_read_file(f, cache) for f in files)


def validate_rows(
    raw: RawRows, *, safety_label: SafetyLabel = "is_safe", on_error: OnError = "raise"
) -> tuple[list[PreferenceRow], dict[str, int]]:
    """Check every row; returns the valid rows and the drop counts by reason.

    Reasons: ``invalid_prompt`` / ``invalid_response`` (null, not a string, or blank),
    ``invalid_safety_label`` (``is_response_*_safe`` not a boolean, or with
    ``safety_label="severity"`` a severity level that is not an integer >= 0),
    ``invalid_response_id`` (not the integer 0 or 1), and ``identical_responses``.
    With ``on_error="raise"`` (default) any of these problems except identical responses
    raises `DataError` listing them (file, row, column; the first 10). A missing column
    always raises.
    """
    if safety_label not in ("is_safe", "severity"):
        raise ValueError(f"safety_label must be 'is_safe' or 'severity', got {safety_label!r}")
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
    label_columns = SAFE_COLUMNS if safety_label == "is_safe" else SEVERITY_COLUMNS
    required = TEXT_COLUMNS + label_columns + ID_COLUMNS
    rows: list[PreferenceRow] = []
    dropped: Counter[str] = Counter()
    problems: list[str] = []
    offset = 0
    for table in raw.tables:
        missing = [c for c in required if c not in table.columns]
        if missing:
            found = ", ".join(table.columns) or "none"
            raise DataError(
                f"{table.file}: missing column(s) {', '.join(missing)} (found: {found})"
            )
        for i in range(table.num_rows):
            values = {c: table.columns[c][i] for c in required}
            errors = _row_errors(values, label_columns)
            if errors:
                dropped[errors[0][0]] += 1
                problems += [f"{table.file}: row {i}: {msg}" for _, msg in errors]
                continue
            prompt, r0, r1 = (values[c] for c in TEXT_COLUMNS)
            if r0.strip() == r1.strip():
                dropped["identical_responses"] += 1
                continue
            if safety_label == "is_safe":
                unsafe = (not values[SAFE_COLUMNS[0]], not values[SAFE_COLUMNS[1]])
            else:
                unsafe = (values[SEVERITY_COLUMNS[0]] > 0, values[SEVERITY_COLUMNS[1]] > 0)
            rows.append(
                PreferenceRow(
                    prompt=prompt,
                    responses=(r0, r1),
                    unsafe=(bool(unsafe[0]), bool(unsafe[1])),
                    better_response_id=int(values["better_response_id"]),
                    safer_response_id=int(values["safer_response_id"]),
                    index=offset + i,
                )
            )
        offset += table.num_rows
    if problems and on_error == "raise":
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"{len(problems)} invalid value(s) in {raw.source} "
            "(--on-error drop, or on_error='drop', drops and counts such rows instead):"
            f"\n  {shown}{more}"
        )
    return rows, dict(dropped)


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _row_errors(values: Mapping[str, Any], label_columns: tuple[str, str]) -> list[tuple[str, str]]:
    """(reason, message) for every bad value of one row, in column order."""
    errors = []
    for column in TEXT_COLUMNS:
        value = values[column]
        reason = "invalid_prompt" if column == "prompt" else "invalid_response"
        if not isinstance(value, str):
            errors.append((reason, f"column {column!r}: expected text, got {_describe(value)}"))
        elif not value.strip():
            errors.append((reason, f"column {column!r}: is empty"))
    for column in label_columns:
        value = values[column]
        if column in SAFE_COLUMNS:
            if not isinstance(value, bool | np.bool_):
                msg = f"column {column!r}: expected a boolean, got {_describe(value)}"
                errors.append(("invalid_safety_label", msg))
        elif not _is_int(value) or value < 0:
            msg = f"column {column!r}: expected an integer >= 0, got {_describe(value)}"
            errors.append(("invalid_safety_label", msg))
    for column in ID_COLUMNS:
        value = values[column]
        if not _is_int(value) or value not in (0, 1):
            msg = f"column {column!r}: expected 0 or 1, got {_describe(value)}"
            errors.append(("invalid_response_id", msg))
    return errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def unique_prompts(rows: Sequence[PreferenceRow]) -> list[str]:
    """Distinct prompts in first-seen order (the evaluation's prompt list).

    >>> unique_prompts([PreferenceRow("a", ("x", "y"), (False, False), 0, 0, 0),
    ...                 PreferenceRow("a", ("x", "z"), (False, False), 0, 0, 1)])
    ['a']
    """
    return list(dict.fromkeys(r.prompt for r in rows))
