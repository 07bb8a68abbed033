"""The compute bill (experiments/compute_bill.py): totals and ratios, the paper's figures
beside it, and (slow) a run on a tiny budget in which every stage's FLOPs are counted."""

from __future__ import annotations

import json

import pytest
from test_synthetic_safety import load_script


@pytest.fixture(scope="module")
def bill():
    return load_script("compute_bill")


def fake_result(wall: float, flops: float, rss_mib: float) -> dict:
    return {
        "wall_s": wall,
        "process_s": wall + 5,
        "compute": {"flops": flops, "functions": {}, "seconds": {}},
        "peak_rss_bytes": rss_mib * 2**20,
        "baseline_rss_bytes": 100 * 2**20,
    }


def test_pipeline_totals_add_stages_and_divide_by_safedpo(bill):
    # SafeDPO: stages of 1 + 2 s (3 s) and 10 + 20 FLOPs; SACPO: four stages of 3 s each.
    repeats = []
    for extra in (0.0, 0.6):  # a second repeat 0.6 s slower in SafeDPO's training
        rep = {}
        for pipeline, label, *_ in bill.STAGES:
            key = f"{pipeline}/{label}"
            if key == "SafeDPO/reference pass":
                rep[key] = fake_result(1.0, 10.0, 500)
            elif key == "SafeDPO/training":
                rep[key] = fake_result(2.0 + extra, 20.0, 600)
            else:
                rep[key] = fake_result(3.0, 30.0, 700)
        repeats.append(rep)
    totals = bill.pipeline_totals(repeats, list(bill.PIPELINES))
    safedpo, sacpo, p_sacpo = totals["SafeDPO"], totals["SACPO"], totals["P-SACPO"]
    assert safedpo["wall_s"]["mean"] == pytest.approx(3.3)
    assert safedpo["wall_s"]["se"] == pytest.approx(0.3)
    assert sacpo["wall_s"]["mean"] == 12.0 and sacpo["flops"]["mean"] == 120.0
    assert len(p_sacpo["stages"]) == 5 and p_sacpo["wall_s"]["mean"] == 15.0
    assert sacpo["ratio_to_safedpo"]["flops"] == pytest.approx(4.0)
    assert sacpo["ratio_to_safedpo"]["wall_s"] == pytest.approx(12 / 3.3)
    assert sacpo["ratio_to_safedpo"]["peak_rss_mib"] == pytest.approx(700 / 600)
    per_repeat = sacpo["time_ratio_per_repeat"]  # paired by repeat: 12/3 and 12/3.6
    assert per_repeat["mean"] == pytest.approx((4.0 + 12 / 3.6) / 2)
    assert totals["SafeDPO"]["ratio_to_safedpo"] == {
        "wall_s": 1.0,
        "flops": 1.0,
        "peak_rss_mib": 1.0,
    }


def test_paper_estimates_come_from_the_estimates_module(bill):
    est = bill.paper_estimates()
    import estimates  # on sys.path: experiments/paper (the bill imports it from there)

    base = json.loads((estimates.CONFIG_DIR / "alpaca7b_baselines.json").read_text())
    hours = estimates.config_estimates(base)[bill.PAPER_POD]["stage_hours"]
    want = hours["reward_model"] + hours["cost_model"] + hours["saferlhf_ppo"]
    assert est["pipeline_hours"]["SafeRLHF"] == pytest.approx(want)
    assert est["ratio_to_safedpo"]["SafeDPO"] == 1.0
    assert est["ratio_to_safedpo"]["SafeRLHF"] > 1.0
    assert bill.PAPER_SECONDS == {"SafeDPO": 1_400.0, "SafeRLHF": 35_000.0}


@pytest.mark.slow
def test_a_tiny_bill_counts_every_stage_and_generation_scales_with_tokens(bill, tmp_path):
    results = tmp_path / "results"
    tiny = ["--steps", "2", "--sft-steps", "4", "--repeats", "1", "--results-dir", str(results)]
    assert bill.main([*tiny, "--max-new-tokens", "4", "--output-dir", str(tmp_path / "a")]) == 0
    payload = json.loads((results / "compute_bill.json").read_text())
    assert (results / "compute_bill.png").stat().st_size > 10_000
    md = (results / "compute_bill.md").read_text()
    assert "| SafeRLHF |" in md and "1,400 s" in md and "35,000 s" in md
    assert payload["repeats"] == 1 and payload["load_average"]["before"]
    rows = {f"{r['pipeline']}/{r['stage']}": r for r in payload["stages"]}
    assert list(rows) == [f"{p}/{s}" for p, s, *_ in bill.STAGES]
    for key, row in rows.items():
        assert row["wall_s"]["mean"] > 0 and row["peak_rss_mib"]["mean"] > 0, key
        if row["kind"] == "merge":
            assert row["flops"]["mean"] == 0.0  # numpy arithmetic, no XLA program
        else:
            assert row["flops"]["mean"] > 0, key
    # The reference pass stages ran the reference, the training stages read its cache.
    assert rows["SafeDPO/reference pass"]["functions"]["reference_pass"]["calls"] > 0
    assert "reference_pass" not in rows["SafeDPO/training"]["functions"]
    assert rows["SafeDPO/training"]["functions"]["train_step"]["calls"] == 2
    ppo = rows["SafeRLHF/PPO-Lagrangian"]
    assert set(ppo["phases"]) == {"generation", "scoring", "update", "other"}
    for phase in ("generation", "scoring", "update"):
        assert ppo["phases"][phase]["flops"]["mean"] > 0, phase
    totals = payload["pipelines"]
    assert set(totals) == set(bill.PIPELINES)
    for t in totals.values():
        assert t["flops"]["mean"] == pytest.approx(
            sum(rows[k]["flops"]["mean"] for k in t["stages"])
        )

    # PPO alone with 12 new tokens instead of 4: each extra decode step costs at least the
    # matmuls of B tokens, 2 N B FLOPs (N the actor's matmul weights, B the prompts a
    # step), and well under twice that: on top come attention over a cache of up to 128
    # slots (up to +25%), top-p sampling over the vocabulary and the prefill's attention
    # over the longer cache (1.56 x 2 N B measured). Without the decode loop's trips
    # (XLA counts its body once) the difference would be about zero.
    argv = [*tiny, "--max-new-tokens", "12", "--pipelines", "SafeRLHF"]
    assert bill.main([*argv, "--output-dir", str(tmp_path / "b")]) == 0
    longer = json.loads((results / "compute_bill.json").read_text())
    ppo12 = next(r for r in longer["stages"] if r["kind"] == "ppo")
    steps4, steps12 = ppo["decode_steps"], ppo12["decode_steps"]
    assert steps12 > steps4
    gen4 = ppo["phases"]["generation"]["flops"]["mean"]
    gen12 = ppo12["phases"]["generation"]["flops"]["mean"]
    hf = json.loads((tmp_path / "a" / "sft" / "runs" / "sft" / "hf" / "config.json").read_text())
    d, f, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    kv = d // hf["num_attention_heads"] * hf["num_key_value_heads"]
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * f) + d * hf["vocab_size"]
    per_step = (gen12 - gen4) / (steps12 - steps4)
    b = payload["setup"]["batch_size"]
    assert 1.0 < per_step / (2 * n * b) < 2.0, per_step / (2 * n * b)
