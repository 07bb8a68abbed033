"""The README's "Bring your own model and data" walkthrough runs as written, on tiny local
stand-ins: a random tiny Llama saved as a Hugging Face directory (``my_model``), tiny
random score models (``my_reward``, ``my_cost``) and 48 rows of the embedded sample in
the PKU-SafeRLHF schema (``my_data/train.jsonl``, ``my_data/test.jsonl``). Only budget
flags are appended (steps, batch, length, generation length)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Bring your own model and data"

# Appended to each command (a later flag wins): a budget for 2 CPU cores, nothing else.
BUDGET = {
    "safedpo_jax.data": [],
    "safedpo_jax.train": [
        "--max-steps", "2", "--batch-size", "8", "--max-length", "64", "--dtype", "float32",
        "--no-remat", "--eval-batches", "1", "--log-every", "1",
    ],
    "safedpo_jax.evaluate": ["--max-prompts", "4", "--max-new-tokens", "4", "--no-progress"],
}  # fmt: skip


def walkthrough_commands() -> list[list[str]]:
    """The fenced commands of the README section, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README's {SECTION!r} has no bash block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def test_walkthrough_has_the_documented_shape():
    commands = walkthrough_commands()
    modules = [c[2] for c in commands]
    assert [c[:2] for c in commands] == [["python", "-m"]] * 4
    assert modules == [
        "safedpo_jax.data",
        "safedpo_jax.train",
        "safedpo_jax.train",
        "safedpo_jax.evaluate",
    ]
    assert commands[1][-2:] == [">", "my_run.yaml"] and "--print-config" in commands[1]
    assert commands[2][3:] == ["--config", "my_run.yaml"]


def _stand_ins(root: Path) -> dict[str, Path]:
    from flax import nnx

    from safedpo_jax import models
    from safedpo_jax.data import load_tokenizer

    tok = load_tokenizer("sample")
    config = dict(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    paths = {name: root / name for name in ("my_model", "my_reward", "my_cost", "my_data")}
    policy = models.CausalLM(models.DecoderConfig(**config), rngs=nnx.Rngs(0))
    models.save_pretrained(policy, paths["my_model"])
    tok.save_pretrained(paths["my_model"])
    for seed, name in enumerate(("my_reward", "my_cost"), start=1):
        score_config = models.DecoderConfig(**config, architectures=("LlamaForScore",))
        models.save_pretrained(models.ScoreModel(score_config, rngs=nnx.Rngs(seed)), paths[name])
        tok.save_pretrained(paths[name])
    paths["my_data"].mkdir()
    sample = ROOT / "safedpo_jax" / "data" / "sample"
    for split, n in (("train", 32), ("test", 16)):
        with (sample / f"{split}.jsonl").open() as f:
            rows = list(itertools.islice(f, n))
        (paths["my_data"] / f"{split}.jsonl").write_text("".join(rows))
    return paths


def _run(argv: list[str]) -> tuple[int, str]:
    from safedpo_jax.data import cli as data_cli
    from safedpo_jax.evaluate import cli as eval_cli
    from safedpo_jax.train import __main__ as train_main

    mains = {
        "safedpo_jax.data": data_cli.main,
        "safedpo_jax.train": train_main.main,
        "safedpo_jax.evaluate": eval_cli.main,
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = mains[argv[2]](argv[3:])
    return status, out.getvalue()


@pytest.mark.slow
def test_walkthrough_commands_run_on_tiny_stand_ins(tmp_path, monkeypatch):
    paths = _stand_ins(tmp_path)
    monkeypatch.chdir(tmp_path)  # runs/ and my_run.yaml land here, as from the repo root
    outputs: list[str] = []
    for command in walkthrough_commands():
        argv, redirect = command, None
        if ">" in command:
            argv, redirect = command[: command.index(">")], command[command.index(">") + 1]
        argv = [str(paths.get(a, a)) for a in argv]
        if redirect is None:
            argv += BUDGET[argv[2]]
        status, printed = _run(argv)
        assert status == 0, (command, printed)
        if redirect is not None:
            (tmp_path / redirect).write_text(printed)
        outputs.append(printed)

    data_summary = outputs[0].splitlines()
    assert json.loads(data_summary[-1])["rows"] == 32
    config = (tmp_path / "my_run.yaml").read_text()
    assert f"model: {paths['my_model']}" in config and "delta: 10.0" in config
    run = tmp_path / "runs" / "my-safedpo"
    assert "done          2 steps" in outputs[2] and "outputs       runs/my-safedpo/" in outputs[2]
    assert "held-out" in outputs[2]
    assert (run / "hf" / "config.json").exists() and (run / "metrics.jsonl").exists()
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8
    summary = json.loads((tmp_path / "runs" / "my-eval" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["reference", "safedpo"]
    for name in ("summary.md", "tradeoff.png", "failures.md"):
        assert (tmp_path / "runs" / "my-eval" / name).exists(), name
