"""One call from a source to a tokenised dataset and its summary.

    dataset row (PKU-SafeRLHF schema)            load_rows
      -> validated rows, counted drops           validate_rows
      -> pairs of a construction, counted drops  build_pairs
      -> token ids + lengths, truncation         tokenize_pairs
      -> [B, 2, T] batches                       BatchIterator

>>> ds, summary = load_preference_data("sample", split="test", pairs="safedpo",
...                                    tokenizer="sample", max_length=64)
>>> len(ds) == summary.pairs, summary.rows, summary.dropped
(True, 360, {'both_unsafe': 80})
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safedpo_jax.data.pairs import applies_safety_transform, build_pairs, count_swapped
from safedpo_jax.data.rows import OnError, SafetyLabel, load_rows, validate_rows
from safedpo_jax.data.summary import DataSummary, merge_counts
from safedpo_jax.data.tokenization import (
    PairDataset,
    SFTDataset,
    SFTResponses,
    Tokenizer,
    load_tokenizer,
    sft_examples,
    tokenize_pairs,
    tokenize_sft,
)

__all__ = ["load_preference_data", "load_sft_data"]


def _tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    return load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer


def load_preference_data(
    source: str | Path,
    *,
    split: str = "train",
    pairs: str = "safedpo",
    tokenizer: Tokenizer | str | Path,
    max_length: int = 512,
    template: str = "safe_rlhf",
    config: str | None = None,
    safety_label: SafetyLabel = "is_safe",
    on_error: OnError = "raise",
    keep_both_unsafe: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[PairDataset, DataSummary]:
    """Load, validate, construct ``pairs`` and tokenise; returns (dataset, summary).

    ``tokenizer`` is a tokenizer object or a name/path for `load_tokenizer` (``"sample"``
    is the embedded one). The summary counts the final dataset: ``pairs == len(dataset)``.
    """
    raw = load_rows(source, split=split, config=config, cache_dir=cache_dir)
    constructed, summary = build_pairs(
        raw,
        pairs,
        safety_label=safety_label,
        on_error=on_error,
        keep_both_unsafe=keep_both_unsafe,
    )
    dataset = tokenize_pairs(
        constructed, _tokenizer(tokenizer), max_length=max_length, template=template
    )
    summary = dataclasses.replace(
        summary,
        pairs=len(dataset),
        swapped=count_swapped(dataset.pairs) if applies_safety_transform(pairs) else 0,
        truncated=dataset.truncated,
        truncated_responses=dataset.truncated_responses,
        dropped=merge_counts(summary.dropped, dataset.dropped),
    )
    return dataset, summary


def load_sft_data(
    source: str | Path,
    *,
    split: str = "train",
    responses: SFTResponses = "both",
    unique: bool = False,
    tokenizer: Tokenizer | str | Path,
    max_length: int = 512,
    template: str = "safe_rlhf",
    config: str | None = None,
    safety_label: SafetyLabel = "is_safe",
    on_error: OnError = "raise",
    cache_dir: str | Path | None = None,
) -> tuple[SFTDataset, DataSummary]:
    """Load and validate rows, pick SFT examples (`sft_examples`) and tokenise them.

    The summary's ``pairs_mode`` is ``sft-<responses>`` and ``pairs`` counts examples.

    >>> ds, summary = load_sft_data("sample", split="test", responses="better",
    ...                             tokenizer="sample", max_length=64)
    >>> len(ds), summary.pairs_mode
    (360, 'sft-better')
    """
    raw = load_rows(source, split=split, config=config, cache_dir=cache_dir)
    rows, dropped = validate_rows(raw, safety_label=safety_label, on_error=on_error)
    examples = sft_examples(rows, responses=responses, unique=unique)
    dataset = tokenize_sft(
        examples, _tokenizer(tokenizer), max_length=max_length, template=template
    )
    summary = DataSummary(
        source=raw.source,
        split=raw.split,
        pairs_mode=f"sft-{responses}",
        rows=len(raw),
        pairs=len(dataset),
        truncated=dataset.truncated,
        truncated_responses=dataset.truncated,
        dropped=merge_counts(dropped, dataset.dropped),
    )
    return dataset, summary
