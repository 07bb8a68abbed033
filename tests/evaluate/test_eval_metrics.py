"""Metrics on hand-made scored responses equal hand-computed values; normalisation."""

import math

import numpy as np
import pytest

from safedpo_jax.evaluate.metrics import (
    RunMetrics,
    ScoredResponse,
    harmless_ratio,
    harmlessness,
    helpfulness,
    normalize_helpfulness,
    normalize_runs,
    summarize,
)

# Six main-set responses (three to unsafe prompts, two to benign ones, one unknown) and
# two from a separate benign set.
RECORDS = [
    ScoredResponse(
        "u1", "sure, do x", reward=3.0, cost=2.5, category="unsafe", num_tokens=5, finished=True
    ),
    ScoredResponse(
        "u2",
        "I cannot.",
        reward=-1.0,
        cost=-2.0,
        refusal="full",
        category="unsafe",
        num_tokens=3,
        finished=True,
    ),
    ScoredResponse(
        "u3", "ok", reward=1.0, cost=0.0, category="unsafe", num_tokens=8, finished=False
    ),
    ScoredResponse(
        "b1", "bread...", reward=2.0, cost=-1.0, category="benign", num_tokens=4, finished=True
    ),
    ScoredResponse(
        "b2",
        "Sorry, no.",
        reward=0.5,
        cost=-0.5,
        refusal="full",
        category="benign",
        num_tokens=2,
        finished=True,
    ),
    ScoredResponse("x", "hm", reward=0.5, cost=1.0, refusal="partial"),
    ScoredResponse(
        "xs1", "I'm sorry", reward=9.0, cost=9.0, refusal="full", category="benign", subset="xstest"
    ),
    ScoredResponse(
        "xs2",
        "ok; but I cannot",
        reward=9.0,
        cost=-9.0,
        refusal="partial",
        category="benign",
        subset="xstest",
    ),
]


def test_array_metrics():
    assert helpfulness([1.0, 2.0, 4.5]) == pytest.approx(2.5)
    assert harmlessness(np.array([1.0, -2.0, -5.0])) == pytest.approx(2.0)
    assert harmless_ratio([-1.0, 0.0, 1e-9, 3.0]) == 0.5  # 0 counts as harmless
    for fn in (helpfulness, harmlessness, harmless_ratio):
        with pytest.raises(ValueError, match="non-empty"):
            fn([])
        with pytest.raises(ValueError, match="finite"):
            fn([1.0, float("nan")])


def test_summarize_equals_hand_computed():
    m = summarize("run", RECORDS)
    # main subset: rewards 3, -1, 1, 2, 0.5, 0.5; costs 2.5, -2, 0, -1, -0.5, 1
    assert m.num_responses == 6
    assert m.helpfulness == pytest.approx(6.0 / 6)
    assert m.harmlessness == pytest.approx(-(0.0) / 6)
    assert m.harmless_ratio == pytest.approx(4 / 6)  # -2, 0, -1, -0.5
    assert m.num_unsafe_responses == 2
    assert m.refusal_rate == pytest.approx(3 / 6)  # u2 full, b2 full, x partial
    # per category, every subset
    assert m.num_unsafe_prompts == 3
    assert m.harmless_ratio_unsafe == pytest.approx(2 / 3)
    assert m.num_benign_prompts == 4  # b1, b2, xs1, xs2
    assert m.over_refusal == pytest.approx(3 / 4)  # b2, xs1 full; xs2 partial
    assert m.over_refusal_full == pytest.approx(2 / 4)
    assert m.mean_new_tokens == pytest.approx((5 + 3 + 8 + 4 + 2) / 5)
    assert m.eos_rate == pytest.approx(4 / 5)
    assert m.helpfulness_normalized is None


def test_summarize_without_categories_or_lengths():
    m = summarize("r", [ScoredResponse("p", "r", reward=1.0, cost=1.0)])
    assert (m.harmless_ratio_unsafe, m.over_refusal, m.over_refusal_full) == (None, None, None)
    assert (m.num_unsafe_prompts, m.num_benign_prompts) == (0, 0)
    assert (m.mean_new_tokens, m.eos_rate) == (None, None)
    assert m.harmless_ratio == 0.0 and m.harmlessness == -1.0


def test_summarize_needs_main_responses():
    with pytest.raises(ValueError, match="no responses"):
        summarize("r", [ScoredResponse("p", "r", 1.0, 1.0, subset="xstest")])


def test_normalize_helpfulness():
    assert normalize_helpfulness(2.0, sft=2.0, helpful=4.0) == 0.0
    assert normalize_helpfulness(4.0, sft=2.0, helpful=4.0) == 10.0
    assert normalize_helpfulness(2.9, sft=2.0, helpful=4.0) == pytest.approx(4.5)
    assert normalize_helpfulness(1.0, sft=2.0, helpful=4.0) == pytest.approx(-5.0)
    # a helpful anchor below SFT still maps it to 10
    assert normalize_helpfulness(-1.0, sft=1.0, helpful=-1.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="distinct"):
        normalize_helpfulness(1.0, sft=2.0, helpful=2.0)
    with pytest.raises(ValueError, match="distinct"):
        normalize_helpfulness(1.0, sft=math.nan, helpful=2.0)


def _run(name: str, h: float) -> RunMetrics:
    return RunMetrics(name, 10, h, 0.0, 0.5, 5, 0.0)


def test_normalize_runs():
    runs = [_run("sft", -1.0), _run("dpo-helpful", 3.0), _run("safedpo", 0.84)]
    out = normalize_runs(runs, sft_run="sft", helpful_run="dpo-helpful")
    assert [m.name for m in out] == ["sft", "dpo-helpful", "safedpo"]
    assert [m.helpfulness_normalized for m in out] == pytest.approx([0.0, 10.0, 4.6])
    assert [m.helpfulness for m in out] == [-1.0, 3.0, 0.84]  # raw kept
    with pytest.raises(ValueError, match="helpful_run 'helpful' is not among"):
        normalize_runs(runs, sft_run="sft", helpful_run="helpful")
    with pytest.raises(ValueError, match="sft_run"):
        normalize_runs(runs, sft_run="base", helpful_run="dpo-helpful")


def test_round_trips_through_dicts():
    m = summarize("run", RECORDS)
    assert RunMetrics.from_dict(m.to_dict()) == m
    for r in RECORDS:
        d = r.to_dict()
        assert d["unsafe"] == (r.cost > 0)
        assert ScoredResponse.from_dict(d) == r
