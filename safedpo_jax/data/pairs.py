"""Pair constructions: which response is slot 0 (chosen) and which is slot 1 (rejected).

One small function per method of the paper (section 4 of /work/shared/docs/safedpo.md),
looked up by name in `PAIR_CONSTRUCTIONS`:

``safedpo``
    helpfulness order (chosen = ``better_response_id``) with both safety labels. The
    pairs are NOT reordered here: the loss kernel applies T (swap an unsafe winner with
    a safe loser). Pairs with both responses unsafe, which T drops, are dropped here
    already (``both_unsafe``) unless ``keep_both_unsafe=True``.
``helpful``
    DPO-HELPFUL: helpfulness order, every pair.
``harmless``
    DPO-HARMLESS: harmlessness order (chosen = ``safer_response_id``), every pair.
``safebetter``
    DPO-SAFEBETTER: helpfulness order, pairs with an unsafe winner dropped
    (``unsafe_winner``).

Every `Pair` carries ``unsafe`` (True = unsafe) for its two slots, in slot order.

>>> from safedpo_jax.data.rows import PreferenceRow
>>> row = PreferenceRow("q", ("comply", "refuse"), unsafe=(True, False),
...                     better_response_id=0, safer_response_id=1, index=0)
>>> helpful_pairs([row])[0][0].chosen, harmless_pairs([row])[0][0].chosen
('comply', 'refuse')
>>> safebetter_pairs([row])
([], {'unsafe_winner': 1})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safedpo_jax.data.rows import (
    OnError,
    PreferenceRow,
    RawRows,
    SafetyLabel,
    validate_rows,
)
from safedpo_jax.data.summary import DataSummary, merge_counts

__all__ = [
    "PAIR_CONSTRUCTIONS",
    "Pair",
    "build_pairs",
    "count_swapped",
    "harmless_pairs",
    "helpful_pairs",
    "safebetter_pairs",
    "safedpo_pairs",
]


@dataclass(frozen=True)
class Pair:
    """A prompt and two responses in slot order (0 = chosen/winner, 1 = rejected/loser).

    ``unsafe[s]`` is True when the response in slot s is unsafe. ``row`` is the source
    row's `PreferenceRow.index`.
    """

    prompt: str
    chosen: str
    rejected: str
    unsafe: tuple[bool, bool]
    row: int

    @property
    def responses(self) -> tuple[str, str]:
        """(chosen, rejected)."""
        return self.chosen, self.rejected


Construction = tuple[list[Pair], dict[str, int]]


def _pair(row: PreferenceRow, winner: int) -> Pair:
    loser = 1 - winner
    return Pair(
        prompt=row.prompt,
        chosen=row.responses[winner],
        rejected=row.responses[loser],
        unsafe=(row.unsafe[winner], row.unsafe[loser]),
        row=row.index,
    )


def helpful_pairs(rows: Sequence[PreferenceRow]) -> Construction:
    """DPO-HELPFUL: chosen = ``better_response_id``; nothing dropped."""
    return [_pair(r, r.better_response_id) for r in rows], {}


def harmless_pairs(rows: Sequence[PreferenceRow]) -> Construction:
    """DPO-HARMLESS: chosen = ``safer_response_id``; nothing dropped."""
    return [_pair(r, r.safer_response_id) for r in rows], {}


def safebetter_pairs(rows: Sequence[PreferenceRow]) -> Construction:
    """DPO-SAFEBETTER: helpfulness order; pairs whose winner is unsafe are dropped."""
    pairs = [_pair(r, r.better_response_id) for r in rows]
    kept = [p for p in pairs if not p.unsafe[0]]
    dropped = len(pairs) - len(kept)
    return kept, ({"unsafe_winner": dropped} if dropped else {})


def safedpo_pairs(rows: Sequence[PreferenceRow], *, keep_both_unsafe: bool = False) -> Construction:
    """SafeDPO: helpfulness order with both labels; both-unsafe pairs dropped by default.

    The swap of T (unsafe winner, safe loser) is left to the loss kernel; see
    `count_swapped`.
    """
    pairs = [_pair(r, r.better_response_id) for r in rows]
    if keep_both_unsafe:
        return pairs, {}
    kept = [p for p in pairs if not all(p.unsafe)]
    dropped = len(pairs) - len(kept)
    return kept, ({"both_unsafe": dropped} if dropped else {})


PAIR_CONSTRUCTIONS: dict[str, Callable[..., Construction]] = {
    "safedpo": safedpo_pairs,
    "helpful": helpful_pairs,
    "harmless": harmless_pairs,
    "safebetter": safebetter_pairs,
}


def count_swapped(pairs: Sequence[Pair]) -> int:
    """Number of pairs SafeDPO's T swaps: unsafe winner and safe loser.

    >>> count_swapped([Pair("q", "a", "b", (True, False), 0),
    ...                Pair("q", "a", "b", (False, True), 1)])
    1
    """
    return sum(p.unsafe == (True, False) for p in pairs)


def build_pairs(
    rows: RawRows | Sequence[PreferenceRow],
    mode: str,
    *,
    safety_label: SafetyLabel = "is_safe",
    on_error: OnError = "raise",
    keep_both_unsafe: bool = False,
) -> tuple[list[Pair], DataSummary]:
    """Validate ``rows`` (when raw) and construct the pairs of ``mode``.

    Returns the pairs and a `DataSummary` (not tokenized yet: ``truncated`` is None).
    ``swapped`` counts kept pairs T will swap when ``mode`` is ``safedpo``, else 0.
    ``keep_both_unsafe`` applies to ``safedpo`` only.
    """
    if mode not in PAIR_CONSTRUCTIONS:
        raise ValueError(f"unknown pair construction {mode!r}; one of {sorted(PAIR_CONSTRUCTIONS)}")
    if keep_both_unsafe and mode != "safedpo":
        raise ValueError(f"keep_both_unsafe applies to 'safedpo' pairs only, not {mode!r}")
    if isinstance(rows, RawRows):
        source, split, num_rows = rows.source, rows.split, len(rows)
        valid, dropped = validate_rows(rows, safety_label=safety_label, on_error=on_error)
    else:
        source, split, num_rows = "<rows>", "", len(rows)
        valid, dropped = list(rows), {}
    options = {"keep_both_unsafe": keep_both_unsafe} if mode == "safedpo" else {}
    pairs, construction_drops = PAIR_CONSTRUCTIONS[mode](valid, **options)
    summary = DataSummary(
        source=source,
        split=split,
        pairs_mode=mode,
        rows=num_rows,
        pairs=len(pairs),
        swapped=count_swapped(pairs) if mode == "safedpo" else 0,
        dropped=merge_counts(dropped, construction_drops),
    )
    return pairs, summary
