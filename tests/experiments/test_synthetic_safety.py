"""The synthetic-world comparison runs end to end (micro budgets) and writes its outputs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    sys.path.insert(0, str(ROOT / "experiments"))  # sweeps.py imports its sibling
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_micro_run_writes_results_table_plot_and_failures(tmp_path, monkeypatch):
    ss = load_script("synthetic_safety")
    micro = ss.WorldSetup(sft_steps=4, steps=2, samples_per_prompt=1, max_new_tokens=8)
    monkeypatch.setattr(ss.WorldSetup, "quick", classmethod(lambda cls: micro))
    assert ss.main(["--output-dir", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["methods"]) == {ss.REFERENCE, *ss.METHODS}
    for row in results["methods"].values():
        for key in ("harmless_ratio", "helpfulness", "over_refusal", "unsafe_mass"):
            assert isinstance(row[key], float), key
        assert 0.0 <= row["unsafe_mass"] <= 1.0
    assert (tmp_path / "results.md").read_text().count("\n") == 2 + len(results["methods"])
    for name in ("summary.md", "summary.json", "tradeoff.png", "failures.md"):
        assert (tmp_path / "eval" / name).exists(), name
    # A second call with another setup refuses to mix runs.
    with pytest.raises(SystemExit):
        ss.main(["--output-dir", str(tmp_path)])


@pytest.mark.slow
def test_micro_sweep_writes_tables_and_plots(tmp_path, monkeypatch):
    ss = load_script("synthetic_safety")
    sweeps = load_script("sweeps")
    micro = ss.WorldSetup(sft_steps=4, steps=2, samples_per_prompt=1, max_new_tokens=8)
    monkeypatch.setattr(ss.WorldSetup, "quick", classmethod(lambda cls: micro))
    monkeypatch.setattr(sweeps, "WorldSetup", ss.WorldSetup)
    args = ["--output-dir", str(tmp_path), "--quick", "--deltas", "0", "10", "--betas", "0.1"]
    assert sweeps.main(args) == 0
    payload = json.loads((tmp_path / "sweeps.json").read_text())
    assert set(payload["delta"]) == {ss.REFERENCE, "delta=0", "delta=10"}
    assert set(payload["beta"]) == {ss.REFERENCE, "beta=0.1"}
    for name in ("delta_sweep.md", "delta_sweep.png", "beta_sweep.md", "beta_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0, name
