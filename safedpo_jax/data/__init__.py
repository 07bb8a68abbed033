"""Preference data for SafeDPO: loading, validation, pairs, tokenisation, batches.

No JAX here: batches are frozen dataclasses of numpy arrays that the train step registers
as pytrees itself. Modules, in pipeline order:

- `safedpo_jax.data.rows`: `load_rows` (``"sample"``, local jsonl/json/parquet/arrow files
  or directories, Hub dataset ids), `validate_rows` (`DataError` naming
  file, row and column; or counted drops), `PreferenceRow` (``unsafe`` True = unsafe).
- `safedpo_jax.data.pairs`: `PAIR_CONSTRUCTIONS` (``safedpo``, ``helpful``,
  ``harmless``, ``safebetter``), `build_pairs`, `Pair`.
- `safedpo_jax.data.tokenization`: templates, `load_tokenizer`, `tokenize_pairs` ->
  `PairDataset`, `sft_examples` / `tokenize_sft` -> `SFTDataset`, `tokenize_prompts` ->
  `PromptDataset`.
- `safedpo_jax.data.batches`: `PairBatch`, `SFTBatch`, `PromptBatch`, bucket lengths,
  `BatchIterator` (seeded, multi-process, `state` / `restore`).
- `safedpo_jax.data.summary`: `DataSummary` (text and one-line JSON).
- `safedpo_jax.data.pipeline`: `load_preference_data`, `load_sft_data`.
- `safedpo_jax.worlds.synthetic`: the embedded synthetic sample, its tokenizer and the
  `oracle` that scores any response text.
- ``python -m safedpo_jax.data SOURCE ...`` (`safedpo_jax.data.cli`): the summary command.

>>> ds, summary = load_preference_data("sample", split="test", pairs="helpful",
...                                    tokenizer="sample", max_length=64)
>>> batch = next(iter(BatchIterator(ds, batch_size=4, seed=0)))
>>> batch.input_ids.shape, batch.loss_mask.dtype, batch.unsafe.shape
((4, 2, 64), dtype('bool'), (4, 2))
"""

from safedpo_jax.data.batches import (
    BatchIterator,
    PairBatch,
    PromptBatch,
    SFTBatch,
    bucket_length,
    default_bucket_lengths,
)
from safedpo_jax.data.pairs import (
    PAIR_CONSTRUCTIONS,
    PAIR_MODES,
    Pair,
    PairMode,
    applies_safety_transform,
    build_pairs,
    count_swapped,
    harmless_pairs,
    helpful_pairs,
    safebetter_pairs,
    safedpo_pairs,
)
from safedpo_jax.data.pipeline import load_preference_data, load_sft_data
from safedpo_jax.data.rows import (
    SAMPLE,
    SAMPLE_DIR,
    SAMPLE_TOKENIZER_DIR,
    DataError,
    MissingSplitError,
    PreferenceRow,
    RawRows,
    load_rows,
    rows_from_records,
    unique_prompts,
    validate_rows,
)
from safedpo_jax.data.summary import DataSummary
from safedpo_jax.data.tokenization import (
    SAFE_RLHF_TEMPLATE,
    PairDataset,
    PromptDataset,
    SFTDataset,
    SFTExample,
    format_prompt,
    load_tokenizer,
    sft_examples,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_sft,
)

__all__ = [
    "PAIR_CONSTRUCTIONS",
    "PAIR_MODES",
    "PairMode",
    "applies_safety_transform",
    "SAFE_RLHF_TEMPLATE",
    "SAMPLE",
    "SAMPLE_DIR",
    "SAMPLE_TOKENIZER_DIR",
    "BatchIterator",
    "DataError",
    "DataSummary",
    "MissingSplitError",
    "Pair",
    "PairBatch",
    "PairDataset",
    "PreferenceRow",
    "PromptBatch",
    "PromptDataset",
    "RawRows",
    "SFTBatch",
    "SFTDataset",
    "SFTExample",
    "bucket_length",
    "build_pairs",
    "count_swapped",
    "default_bucket_lengths",
    "format_prompt",
    "harmless_pairs",
    "helpful_pairs",
    "load_preference_data",
    "load_rows",
    "load_sft_data",
    "load_tokenizer",
    "rows_from_records",
    "safebetter_pairs",
    "safedpo_pairs",
    "sft_examples",
    "tokenize_pairs",
    "tokenize_prompts",
    "tokenize_sft",
    "unique_prompts",
    "validate_rows",
]
