"""The README quotes what the commands print, in the same formatting."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """An experiments/ script as a module (they import their siblings)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        path = ROOT / "experiments" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def test_readme_table_is_the_quick_start_commands_table_of_the_recorded_run():
    """The README's table is the recorded multi-seed run's summary, as the script prints
    it (mean ± standard error), and results.md is that run's output."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("What the comparison prints", 1)[1]
    table = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    recorded = json.loads((ROOT / "experiments/results/synthetic_results.json").read_text())
    ss = _script("synthetic_safety")
    printed = ss.summary_markdown(recorded["methods"], len(recorded["seeds"]))
    printed_table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table == printed_table
    assert printed in (ROOT / "experiments/results/synthetic_results.md").read_text()
    assert "e-0" not in printed  # fixed notation for the exact masses, as the prose quotes them


def test_readme_tuning_tables_are_the_recorded_sweeps():
    """The tuning guide's Delta and beta tables are `sweeps.guide_markdown` of the committed
    sweeps.json, and the committed delta_sweep.md / beta_sweep.md are the same tables."""
    sweeps = _script("sweeps")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tuning Delta and beta", 1)[1].split("\n## ", 1)[0]
    recorded = json.loads((ROOT / "experiments/results/sweeps.json").read_text())
    assert recorded["setup"]["world"] == "pku" and len(recorded["seeds"]) >= 3
    for name in ("delta", "beta"):
        table = sweeps.guide_markdown(recorded[name], name)
        assert table in section, name
        assert table in (ROOT / f"experiments/results/{name}_sweep.md").read_text(), name


def test_readme_compute_bill_tables_are_the_recorded_bill():
    """The README's compute-bill tables are compute_bill.md's (the recorded run), line for line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The compute bill", 1)[1].split("\n## ", 1)[0]
    quoted = [line for line in section.splitlines() if line.startswith("|")]
    recorded = (ROOT / "experiments/results/compute_bill.md").read_text().splitlines()
    tables = [line for line in recorded if line.startswith("|")]
    assert quoted, "no table in the README's compute-bill section"
    start = tables.index(quoted[0])
    assert tables[start : start + len(quoted)] == quoted
