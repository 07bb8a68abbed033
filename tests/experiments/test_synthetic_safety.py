"""The synthetic-world comparison runs end to end (micro budgets) and writes its outputs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
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
