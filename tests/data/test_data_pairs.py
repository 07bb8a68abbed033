"""Pair constructions on a hand-made table whose pairs are known."""

from __future__ import annotations

import dataclasses

import pytest
from datahelpers import TABLE, record

from safedpo_jax.data import (
    PAIR_CONSTRUCTIONS,
    build_pairs,
    rows_from_records,
    validate_rows,
)


def triples(pairs):
    return [(p.chosen, p.rejected, p.unsafe) for p in pairs]


FF, TF, FT, TT = (False, False), (True, False), (False, True), (True, True)
HELPFUL = [("a0", "b0", FF), ("a1", "b1", TF), ("b2", "a2", FT), ("b3", "a3", TT), ("b4", "a4", TF)]
HARMLESS = [
    ("a0", "b0", FF),
    ("b1", "a1", FT),
    ("b2", "a2", FT),
    ("a3", "b3", TT),
    ("a4", "b4", FT),
]


@pytest.mark.parametrize(
    ("mode", "expected", "dropped", "swapped"),
    [
        ("helpful", HELPFUL, {}, 0),
        ("harmless", HARMLESS, {}, 0),
        ("safebetter", [HELPFUL[0], HELPFUL[2]], {"unsafe_winner": 3}, 0),
        ("safedpo", [h for h in HELPFUL if h[2] != TT], {"both_unsafe": 1}, 2),
    ],
)
def test_constructions(mode, expected, dropped, swapped):
    pairs, summary = build_pairs(rows_from_records(TABLE, name="table"), mode)
    assert triples(pairs) == expected
    assert [p.prompt for p in pairs] == [f"p{p.row}" for p in pairs]
    assert summary.dropped == dropped
    assert summary.swapped == swapped
    assert (summary.rows, summary.pairs, summary.truncated) == (5, len(expected), None)


def test_safedpo_keeps_both_unsafe_on_request():
    pairs, summary = build_pairs(rows_from_records(TABLE), "safedpo", keep_both_unsafe=True)
    assert triples(pairs) == HELPFUL
    assert summary.dropped == {}
    assert summary.swapped == 2


def test_keep_both_unsafe_is_safedpo_only():
    with pytest.raises(ValueError, match="safedpo"):
        build_pairs(rows_from_records(TABLE), "helpful", keep_both_unsafe=True)


def test_registry_and_unknown_mode():
    assert sorted(PAIR_CONSTRUCTIONS) == [
        "harmless",
        "helpful",
        "safebetter",
        "safedpo",
        "unpaired",
    ]
    rows, _ = validate_rows(rows_from_records(TABLE))
    for fn in PAIR_CONSTRUCTIONS.values():
        assert callable(fn)
    pairs, summary = build_pairs(rows, "helpful")  # already-validated rows work too
    assert len(pairs) == 5 and summary.rows == 5
    with pytest.raises(ValueError, match="unknown pair construction"):
        build_pairs(rows, "dpo")


def test_drops_from_validation_and_construction_add_up():
    table = [*TABLE, record("p5", "same", " same ", True, True, 0, 0)]
    pairs, summary = build_pairs(rows_from_records(table), "safedpo")
    assert summary.dropped == {"both_unsafe": 1, "identical_responses": 1}
    assert summary.rows == 6 and summary.pairs == len(pairs) == 4


def test_unpaired_examples_mismatch_every_completion_once_with_repeated_prompts():
    """KTO's KL completions: another prompt's response for every example, each used once,
    also when prompts repeat many times (as in PKU-SafeRLHF and the sample)."""
    from collections import Counter

    from safedpo_jax.data.pairs import unpaired_examples
    from safedpo_jax.data.rows import PreferenceRow

    rows = [
        PreferenceRow(f"q{i % 7}", (f"a{i}", f"b{i}"), unsafe=(i % 3 == 0, False),
                      better_response_id=0, safer_response_id=1, index=i)
        for i in range(40)
    ]  # fmt: skip
    examples, dropped = unpaired_examples(rows, seed=3)
    assert dropped == {} and len(examples) == 80
    prompt_of = {r.responses[j]: r.prompt for r in rows for j in (0, 1)}
    assert all(prompt_of[e.rejected] != e.prompt for e in examples)
    assert Counter(e.rejected for e in examples) == Counter(e.chosen for e in examples)
    assert [e.unsafe[0] for e in examples] == [r.unsafe[j] for r in rows for j in (0, 1)]
    assert unpaired_examples(rows, seed=3) == (examples, {})  # deterministic
    one_prompt = [dataclasses.replace(r, prompt="q") for r in rows[:3]] + rows[3:4]
    with pytest.raises(ValueError, match="one prompt holds 6 of the 8 examples"):
        unpaired_examples(one_prompt)
