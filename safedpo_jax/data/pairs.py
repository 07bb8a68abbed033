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
``unpaired``
    KTO on the safety labels (SACPO's KTO safety stage): every response of every row is an
    example of its own (slot 0), desirable when safe; slot 1 holds a *mismatched*
    completion, another row's response to a different prompt, for KTO's KL reference point.

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

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

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
    "PAIR_MODES",
    "PairMode",
    "applies_safety_transform",
    "Pair",
    "build_pairs",
    "count_swapped",
    "harmless_pairs",
    "helpful_pairs",
    "safebetter_pairs",
    "safedpo_pairs",
    "unpaired_examples",
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


def unpaired_examples(rows: Sequence[PreferenceRow], *, seed: int = 0) -> Construction:
    """KTO examples: each response with its own label, and a mismatched KL completion.

    Slot 0 is the example (``rows[i].responses[j]``, unsafe = ``rows[i].unsafe[j]``);
    slot 1 the completion of another example whose prompt differs, answered to this
    example's prompt: its log-probs under policy and reference estimate KTO's reference
    point ``z0 = KL(pi || pi_ref)`` as TRL's ``KTOTrainer`` does with its shifted
    completions. The mismatch is a fixed, seeded permutation (every example's completion
    is used as a mismatch exactly once), so a dataset always tokenises the same way.
    A prompt holding more than half of the examples cannot be mismatched: ValueError.

    >>> from safedpo_jax.data.rows import PreferenceRow
    >>> rows = [PreferenceRow(f"q{i}", (f"a{i}", f"b{i}"), unsafe=(i == 0, False),
    ...                       better_response_id=0, safer_response_id=1, index=i)
    ...         for i in range(3)]
    >>> ex, dropped = unpaired_examples(rows)
    >>> len(ex), dropped, [e.chosen for e in ex], [e.unsafe[0] for e in ex]
    (6, {}, ['a0', 'b0', 'a1', 'b1', 'a2', 'b2'], [True, False, False, False, False, False])
    >>> all(e.rejected[1] != e.prompt[1] for e in ex)  # the KL completion answers another prompt
    True
    """
    flat = [(r, j) for r in rows for j in (0, 1)]
    n = len(flat)
    if n == 0:
        return [], {}
    # Group the examples by prompt (groups in a seeded random order), then give each the
    # completion ``largest group size`` places further along the cycle: no group spans
    # that far, so every completion answers another prompt, and each is used once.
    groups: dict[str, list[int]] = {}
    for i, (row, _) in enumerate(flat):
        groups.setdefault(row.prompt, []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    order = [i for key in keys for i in groups[key]]
    shift = max(len(g) for g in groups.values())
    if 2 * shift > n:
        raise ValueError(
            f"unpaired (KTO) examples: one prompt holds {shift} of the {n} examples, too many "
            "to give each a completion of another prompt"
        )
    mate = {order[k]: order[(k + shift) % n] for k in range(n)}
    examples = []
    for i, (row, j) in enumerate(flat):
        other, k = flat[mate[i]]
        examples.append(
            Pair(
                prompt=row.prompt,
                chosen=row.responses[j],
                rejected=other.responses[k],
                unsafe=(row.unsafe[j], other.unsafe[k]),
                row=row.index,
            )
        )
    return examples, {}


PairMode = Literal["safedpo", "helpful", "harmless", "safebetter", "unpaired"]
PAIR_MODES: tuple[str, ...] = get_args(PairMode)

PAIR_CONSTRUCTIONS: dict[str, Callable[..., Construction]] = {
    "safedpo": safedpo_pairs,
    "helpful": helpful_pairs,
    "harmless": harmless_pairs,
    "safebetter": safebetter_pairs,
    "unpaired": unpaired_examples,
}
assert tuple(PAIR_CONSTRUCTIONS) == PAIR_MODES

# Constructions whose pairs keep both safety labels for the loss kernel's T (the swap of an
# unsafe winner over a safe loser happens in the kernel; both-unsafe pairs are dropped here
# unless kept for the kernel to zero out). The other constructions already encode their
# use of safety in which pairs exist and in what order.
_FOR_SAFETY_TRANSFORM = frozenset({"safedpo"})


def applies_safety_transform(mode: str) -> bool:
    """Whether pairs of construction ``mode`` carry labels for the kernel's safety transform T.

    >>> applies_safety_transform("safedpo"), applies_safety_transform("safebetter")
    (True, False)
    """
    if mode not in PAIR_CONSTRUCTIONS:
        raise ValueError(f"unknown pair construction {mode!r}; one of {sorted(PAIR_CONSTRUCTIONS)}")
    return mode in _FOR_SAFETY_TRANSFORM


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
    if keep_both_unsafe and not applies_safety_transform(mode):
        raise ValueError(f"keep_both_unsafe applies to 'safedpo' pairs only, not {mode!r}")
    if isinstance(rows, RawRows):
        source, split, num_rows = rows.source, rows.split, len(rows)
        valid, dropped = validate_rows(rows, safety_label=safety_label, on_error=on_error)
    else:
        source, split, num_rows = "<rows>", "", len(rows)
        valid, dropped = list(rows), {}
    wrapped = applies_safety_transform(mode)
    options = {"keep_both_unsafe": keep_both_unsafe} if wrapped else {}
    pairs, construction_drops = PAIR_CONSTRUCTIONS[mode](valid, **options)
    summary = DataSummary(
        source=source,
        split=split,
        pairs_mode=mode,
        rows=num_rows,
        pairs=len(pairs),
        swapped=count_swapped(pairs) if wrapped else 0,
        dropped=merge_counts(dropped, construction_drops),
    )
    return pairs, summary
