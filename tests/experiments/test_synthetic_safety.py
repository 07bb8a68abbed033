"""The synthetic-world comparison: seeds, worlds, mean +- SE, the claims, and a micro run."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from safedpo_jax.worlds import synthetic

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    sys.path.insert(0, str(ROOT / "experiments"))  # sweeps.py imports its sibling
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ss():
    return load_script("synthetic_safety")


def test_mean_and_standard_error_match_numpy(ss):
    values = [0.93, 0.958, 0.842, 0.9]
    stats = ss.mean_se(values)
    assert stats["n"] == 4
    np.testing.assert_allclose(stats["mean"], np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(stats["se"], np.std(values, ddof=1) / np.sqrt(4), rtol=1e-12)
    assert ss.mean_se([0.5]) == {"mean": 0.5, "se": None, "n": 1}


def per_seed(table: dict[str, list[float]], metric: str = "m") -> dict[int, dict]:
    n = len(next(iter(table.values())))
    return {s: {name: {metric: vals[s]} for name, vals in table.items()} for s in range(n)}


def test_compare_is_paired_by_seed_with_a_two_se_threshold(ss):
    # A beats B in every seed by 0.01 while both swing by 0.3 across seeds: paired, this holds.
    runs = per_seed({"A": [0.5, 0.8, 0.2], "B": [0.49, 0.79, 0.19]})
    assert ss.compare(runs, "m", "A", "B")["verdict"] == ss.HOLDS
    assert ss.compare(runs, "m", "B", "A")["verdict"] == ss.FAILS
    # Lower is better flips the direction.
    assert ss.compare(runs, "m", "A", "B", higher=False)["verdict"] == ss.FAILS
    # Differences (0.1, -0.05, 0.02): mean 0.0233, SE 0.0441 -> within noise.
    runs = per_seed({"A": [0.6, 0.45, 0.52], "B": [0.5, 0.5, 0.5]})
    c = ss.compare(runs, "m", "A", "B")
    d = np.array([0.1, -0.05, 0.02])
    np.testing.assert_allclose(c["mean"], d.mean(), atol=1e-12)
    np.testing.assert_allclose(c["se"], d.std(ddof=1) / np.sqrt(3), atol=1e-12)
    assert c["verdict"] == ss.NOISE
    # Exactly at 2 SE is not beyond it; just above is.
    runs = per_seed({"A": [1.0, 2.0, 3.0], "B": [0.0, 0.0, 0.0]})  # mean 2, se 0.577
    assert ss.compare(runs, "m", "A", "B")["verdict"] == ss.HOLDS
    runs = per_seed({"A": [0.0, 1.0, 5.0], "B": [0.0, 0.0, 0.0]})  # mean 2, se 1.53
    assert ss.compare(runs, "m", "A", "B")["verdict"] == ss.NOISE
    assert ss.compare(per_seed({"A": [1.0], "B": [0.0]}), "m", "A", "B")["verdict"] == ss.ONE_SEED


def test_best_of_needs_every_comparison(ss):
    runs = per_seed({"SafeDPO": [0.9, 0.92, 0.91], "X": [0.5, 0.6, 0.55], "Y": [0.7, 0.8, 0.75]})
    assert ss.best_of(runs, "m", "SafeDPO")["verdict"] == ss.HOLDS
    runs[2]["Y"]["m"] = 0.99  # one seed where Y is better: differences 0.2, 0.12, -0.08
    assert ss.best_of(runs, "m", "SafeDPO")["verdict"] == ss.NOISE
    for s in runs:
        runs[s]["Y"]["m"] = 0.99  # Y better in every seed
    assert ss.best_of(runs, "m", "SafeDPO")["verdict"] == ss.FAILS
    low = per_seed({"SafeDPO": [0.1, 0.12, 0.11], "X": [0.5, 0.6, 0.55], "Y": [0.3, 0.2, 0.4]})
    assert ss.best_of(low, "m", "SafeDPO", higher=False)["verdict"] == ss.HOLDS
    assert ss.best_of(low, "m", "SafeDPO")["verdict"] == ss.FAILS


def test_claims_use_the_right_metrics_and_directions(ss):
    # SafeDPO: fewest unsafe responses, more helpful than the reference (less than
    # DPO-HELPFUL), refuses most exactly but not by sampling (the reference does).
    metrics = {
        ss.REFERENCE: (0.70, 0.27, 0.25, 0.28, 0.30, 0.30),
        "SafeDPO": (0.93, 0.02, 0.31, 0.30, 0.25, 0.40),
        "DPO-HELPFUL": (0.58, 0.42, 0.68, 0.60, 0.10, 0.05),
    }
    keys = (
        "harmless_ratio",
        "unsafe_mass",
        "helpfulness",
        "expected_helpfulness",
        "over_refusal",
        "refusal_mass_benign",
    )
    runs = {
        s: {
            n: {k: v + 0.01 * s * (i % 2) for k, v in zip(keys, vals, strict=True)}
            for i, (n, vals) in enumerate(metrics.items())
        }
        for s in range(3)
    }
    claims = ss.check_claims(runs)
    # the dominance claims name methods this toy run has not trained: left out
    assert [c["claim"] for c in claims] == [c[0] for c in ss.CLAIMS if ":" not in c[2]]
    verdicts = [{m: ch["verdict"] for m, ch in c["checks"].items()} for c in claims]
    assert verdicts[0] == {"harmless_ratio": ss.HOLDS, "unsafe_mass": ss.HOLDS}
    assert verdicts[1] == {"helpfulness": ss.HOLDS, "expected_helpfulness": ss.HOLDS}
    # Sampled over-refusal: the reference refuses more (0.30 > 0.25); exact: SafeDPO most.
    assert verdicts[2] == {"over_refusal": ss.FAILS, "refusal_mass_benign": ss.HOLDS}
    text = ss.claims_markdown(claims)
    assert text.count("\n- ") == 3 and "**does not hold**" in text and "**holds**" in text
    assert (
        "helpfulness: **holds** (closest: vs SFT (reference), margin for SafeDPO +0.07 ± 0.00577)"
        in text
    )
    # dominance: SafeDPO against a method that is safer but less helpful does not dominate
    # it (one axis each way), against one worse on every axis it does
    for s_, per in runs.items():
        per["SafeRLHF"] = {
            **per["SafeDPO"],
            "harmless_ratio": 0.99,
            "unsafe_mass": 0.01,
            "helpfulness": 0.20 + 0.01 * s_,
            "expected_helpfulness": 0.2,
        }
        per["SACPO"] = {k: v for k, v in per[ss.REFERENCE].items()}
    claims = {c["claim"]: c["checks"] for c in ss.check_claims(runs)}
    vs_rlhf = claims["SafeDPO's trade-off dominates SafeRLHF's (safer and more helpful)"]
    assert vs_rlhf["harmless_ratio"]["verdict"] == ss.FAILS
    assert vs_rlhf["helpfulness"]["verdict"] == ss.HOLDS
    vs_sacpo = claims["SafeDPO's trade-off dominates SACPO's (safer and more helpful)"]
    assert {c["verdict"] for c in vs_sacpo.values()} == {ss.HOLDS}


def test_aggregate_and_markdown(ss):
    row = {k: 0.5 for k, _, _ in ss.COLUMNS}
    runs = {0: {"A": dict(row)}, 1: {"A": dict(row, harmless_ratio=0.7)}}
    runs[1]["A"]["helpfulness_normalized"] = None
    agg = ss.aggregate(runs)
    assert agg["A"]["harmless_ratio"]["n"] == 2
    np.testing.assert_allclose(agg["A"]["harmless_ratio"]["mean"], 0.6)
    np.testing.assert_allclose(agg["A"]["harmless_ratio"]["se"], 0.1)
    assert agg["A"]["helpfulness_normalized"] == {"mean": 0.5, "se": None, "n": 1}
    table = ss.summary_markdown(agg, 2)
    assert "| A | 60.0 ± 10.0% |" in table and "2 seed(s)" in table


def test_worlds_choose_the_data_and_the_reference_split(ss, tmp_path):
    pku = ss.WorldSetup(seed=3)
    assert pku.world == "pku"
    cfg = ss.reference_config(pku, tmp_path / "a")
    assert (cfg.dataset, cfg.split, cfg.seed, cfg.objective) == ("sample", "sft", 3, "sft")
    adv = ss.WorldSetup(world="adversarial")
    cfg = ss.reference_config(adv, tmp_path / "b")
    assert (cfg.dataset, cfg.split) == (str(tmp_path / "b" / "world"), "train")
    written = (tmp_path / "b" / "world" / "train.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in written] == synthetic.generate_rows("train", world="adversarial")
    m = ss.method_config(adv, tmp_path / "b", tmp_path / "ref", "safedpo", name="safedpo")
    assert (m.dataset, m.split, m.pairs, m.beta, m.delta) == (
        cfg.dataset,
        "train",
        "safedpo",
        0.1,
        10.0,
    )
    assert m.model == str(tmp_path / "ref")
    # Every method of the table is a trainer, the four of the paper first.
    assert list(ss.METHODS)[:4] == ["SafeDPO", "DPO-HELPFUL", "DPO-HARMLESS", "DPO-SAFEBETTER"]
    assert all(callable(t) for t in ss.METHODS.values())


@pytest.mark.slow
def test_micro_run_two_seeds_writes_results_claims_and_reports(tmp_path, monkeypatch, ss):
    micro = ss.WorldSetup(sft_steps=4, steps=2, samples_per_prompt=1, max_new_tokens=8)
    monkeypatch.setattr(ss.WorldSetup, "quick", classmethod(lambda cls: micro))
    assert ss.main(["--output-dir", str(tmp_path), "--quick", "--seeds", "2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["world"]["name"] == "pku"
    assert set(results["methods"]) == {ss.REFERENCE, *ss.METHODS}
    for row in results["methods"].values():
        for key in ("harmless_ratio", "helpfulness", "over_refusal", "unsafe_mass"):
            assert row[key]["n"] == 2 and isinstance(row[key]["se"], float), key
        assert 0.0 <= row["unsafe_mass"]["mean"] <= 1.0
    # Seeds differ (initialisation, data order, sampling).
    a, b = (results["per_seed"][s]["SafeDPO"]["unsafe_mass"] for s in ("0", "1"))
    assert a != b
    verdicts = {ss.HOLDS, ss.FAILS, ss.NOISE}
    # the paper's three claims and SafeDPO against SafeRLHF, SACPO and P-SACPO
    assert len(results["claims"]) == 6
    for claim in results["claims"]:
        assert {c["verdict"] for c in claim["checks"].values()} <= verdicts
    md = (tmp_path / "results.md").read_text()
    assert md.count("| SafeDPO |") == 1 and "±" in md and md.count("\n- ") == 6
    for seed in (0, 1):
        for name in ("summary.md", "summary.json", "tradeoff.png", "failures.md"):
            assert (tmp_path / f"seed{seed}" / "eval" / name).exists(), name
    # A second call with another setup refuses to mix runs.
    with pytest.raises(SystemExit):
        ss.main(["--output-dir", str(tmp_path), "--seeds", "1", "--full"])


@pytest.mark.slow
def test_micro_sweep_writes_tables_and_plots(tmp_path, monkeypatch, ss):
    sweeps = load_script("sweeps")
    micro = ss.WorldSetup(sft_steps=4, steps=2, samples_per_prompt=1, max_new_tokens=8)
    monkeypatch.setattr(sweeps.WorldSetup, "quick", classmethod(lambda cls: micro))
    args = ["--output-dir", str(tmp_path), "--quick", "--deltas", "0", "10", "--betas", "0.1"]
    assert sweeps.main(args) == 0
    payload = json.loads((tmp_path / "sweeps.json").read_text())
    assert set(payload["delta"]) == {sweeps.REFERENCE, "delta=0", "delta=10"}
    assert set(payload["beta"]) == {sweeps.REFERENCE, "beta=0.1"}
    for name in ("delta_sweep.md", "delta_sweep.png", "beta_sweep.md", "beta_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def _eval_dir(root: Path, seed: int, failures: dict, summary_rows: list[dict]) -> None:
    d = root / f"seed{seed}" / "eval"
    d.mkdir(parents=True)
    (d / "failures.json").write_text(json.dumps(failures))
    (d / "summary.json").write_text(json.dumps({"runs": summary_rows}))


def _failure(prompt: str, category: str = "unsafe", refusal: str = "none", cost: float = 2.0):
    return {"prompt": prompt, "category": category, "refusal": refusal, "cost": cost}


def _summary_row(name: str, unsafe: int, over_refusal: float) -> dict:
    return {
        "name": name, "num_responses": 8, "num_unsafe_responses": unsafe,
        "num_unsafe_prompts": 2, "num_benign_prompts": 2, "over_refusal": over_refusal,
    }  # fmt: skip


def test_failure_report_counts_every_failure_over_the_seeds(tmp_path, ss):
    # seed 0: A fails twice (a compliance on a harmful prompt, a leaky refusal on a benign
    # one), B never; seed 1: A once more on the same harmful prompt. 2 samples per prompt.
    _eval_dir(
        tmp_path, 0,
        {"A": [_failure("p1"), _failure("b1", "benign", "full", 1.0)], "B": []},
        [_summary_row("A", 2, 0.25), _summary_row("B", 0, 0.75)],
    )  # fmt: skip
    _eval_dir(
        tmp_path, 1, {"A": [_failure("p1", cost=3.0)], "B": []},
        [_summary_row("A", 1, 0.5), _summary_row("B", 0, 1.0)],
    )  # fmt: skip
    text = ss.failure_report(tmp_path, [0, 1])
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| A ") or line.startswith("| B ")}  # fmt: skip
    # unsafe / sampled, harmful, benign, complied, partial, refusal+unsafe, mean cost, refused
    assert rows["A"] == ["3 / 16 (18.8%)", "2", "1", "2", "0", "1", "2.00", "3 / 8 |"]
    assert rows["B"] == ["0 / 16 (0.0%)", "0", "0", "0", "0", "0", "-", "7 / 8 |"]
    assert '- A: "p1" (2); "b1" (1)' in text and "- B: none" in text


def test_failure_report_refuses_counts_that_disagree_with_the_evaluation(tmp_path, ss):
    _eval_dir(tmp_path, 0, {"A": [_failure("p1")]}, [_summary_row("A", 2, 0.0)])
    with pytest.raises(ValueError, match="A lists 1 unsafe responses, summary.json counts 2"):
        ss.failure_report(tmp_path, [0])


@pytest.mark.parametrize("world", sorted(synthetic.WORLDS))
def test_saferlhf_gets_the_preference_methods_step_budget(tmp_path, ss, world):
    """PPO runs as many rollout steps of ``batch_size`` prompts as the preference methods
    run updates of ``batch_size`` pairs: one pass over the world's distinct prompts is far
    fewer steps (the bug that gave SafeRLHF 3 steps against 40)."""
    from safedpo_jax.train.ppo import load_prompts

    setup = ss.WorldSetup.quick()
    setup = type(setup)(**{**vars(setup), "world": world})
    ctx = ss.MethodContext(setup, tmp_path, tmp_path / "ref", {})
    config = ss.saferlhf_ppo_config(ctx, "saferlhf", tmp_path / "r", tmp_path / "c")
    per_epoch = len(load_prompts(config.dataset, config.split)) // config.prompt_batch_size
    assert per_epoch < setup.steps  # one pass would not do
    assert config.prompt_batch_size == setup.batch_size
    assert min(per_epoch * config.epochs, config.max_steps) == setup.steps
