"""The light install: scripts/run installs only what a command needs, pinned by
constraints.txt; torch and TRL are not dependencies of the library."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_torch_and_trl_are_extras_not_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("[")[0] for r in reqs}  # noqa: E731
    assert not names(project["dependencies"]) & {"torch", "trl", "pytest"}
    assert {"pytest", "torch", "trl"} <= names(project["optional-dependencies"]["test"])  # peers
    assert "trl" in names(project["optional-dependencies"]["bench"])


def test_constraints_pin_every_dependency_and_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    wanted += project["optional-dependencies"]["bench"]
    for req in wanted:
        name = req.split(">")[0].split("=")[0].split("[")[0].lower().replace("_", "-")
        assert name in pinned, name


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python logs its arguments instead of running them."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    python = venv / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    python.chmod(0o755)
    env = {**os.environ, "SAFEDPO_VENV": str(venv), "SAFEDPO_PYTHON": sys.executable}

    def run(*args: str) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        subprocess.run([str(ROOT / "scripts/run"), *args], env=env, check=True,
                       capture_output=True)  # fmt: skip
        return log.read_text().splitlines()[len(before) :]

    return run, venv


def _installs(calls: list[str]) -> list[str]:
    return [c.split("-e ", 1)[1] for c in calls if "pip install" in c and "-e " in c]


def test_scripts_run_installs_only_the_extras_a_command_needs(fake_venv):
    run, venv = fake_venv
    calls = run("experiments/synthetic_safety.py", "--quick")
    assert _installs(calls) == [". -c constraints.txt"]
    assert calls[-1] == "experiments/synthetic_safety.py --quick"
    assert _installs(run("-m", "safedpo_jax.train", "--help")) == []  # nothing more needed
    assert _installs(run("-m", "pytest", "-q")) == [".[test] -c constraints.txt"]
    assert _installs(run("-m", "pytest")) == []
    bench = run("experiments/benchmarks/vs_trl.py")
    assert _installs(bench) == [".[test,bench] -c constraints.txt"]
    assert _installs(run("-m", "pytest")) == [] and _installs(run("experiments/sweeps.py")) == []
    # what is installed stays installed: extending a bench-only environment for pytest
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    ).hexdigest()
    stamp = venv / ".safedpo-installed"
    stamp.write_text(f"{digest} bench\n")
    assert _installs(run("-m", "pytest")) == [".[bench,test] -c constraints.txt"]
    # a changed pyproject.toml or constraints.txt rebuilds with what the command needs
    stamp.write_text("0" * 64 + " test,bench\n")
    assert _installs(run("-m", "pytest")) == [".[test] -c constraints.txt"]
