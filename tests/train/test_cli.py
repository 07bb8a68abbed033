"""The trainer's command line: --help from the field docs, booleans, --config files and
--print-config (a printed config fed back reproduces the run's config)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from safedpo_jax.train import __main__ as train_main
from safedpo_jax.train.config import (
    GROUPS,
    PRESETS,
    TrainConfig,
    build_parser,
    format_config,
    from_preset,
    load_config_file,
    parse_args,
)

FIELDS = dataclasses.fields(TrainConfig)


def _help_text() -> str:
    return " ".join(build_parser().format_help().split())  # unwrapped


def test_every_field_has_a_help_line_and_a_group():
    for field in FIELDS:
        assert field.metadata.get("group") in GROUPS, field.name
        assert len(field.metadata.get("help", "")) > 10, field.name


def test_help_lists_every_flag_with_its_doc_group_and_default_preset_value():
    text = _help_text()
    for field in FIELDS:
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(field.metadata["help"].split()) in text, field.name
    for group in GROUPS:
        assert f"{group}: {' '.join(GROUPS[group].split())}" in text
    # defaults shown are the default preset's (paper): lr 1e-06 and remat true
    assert "peak learning rate [float; default: 1e-06]" in text
    assert "--remat, --no-remat" in text
    assert "backward pass [default: true]" in text
    assert "{preference,sft,reward,cost,kto,bfpo}" in text
    # grouped: --beta is listed under objective, after the data group's --pairs
    assert text.index("objective:") < text.index("--beta FLOAT") < text.index("optimisation:")


def test_booleans_take_flag_no_flag_and_an_explicit_value():
    base = ["--preset", "tiny"]
    assert parse_args([*base, "--remat"])[0].remat is True
    assert parse_args([*base, "--remat", "--no-remat"])[0].remat is False
    assert parse_args([*base, "--no-export"])[0].export is False
    assert parse_args([*base, "--keep-both-unsafe", "true"])[0].keep_both_unsafe is True
    assert parse_args([*base, "--keep-both-unsafe", "false"])[0].keep_both_unsafe is False
    assert parse_args(base)[0].export is True


def test_negated_boolean_rejects_a_value(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--preset", "tiny", "--no-remat=true"])
    assert "--no-remat takes no value" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_printed_config_read_back_is_the_same_config(tmp_path, preset, fmt):
    config = from_preset(preset, beta=0.25, remat=True, max_steps=7, ref_model=None)
    path = tmp_path / f"run.{fmt}"
    path.write_text(format_config(config, fmt))
    assert parse_args(["--config", str(path)])[0] == config


def test_print_config_command_output_fed_back_reproduces_the_run(tmp_path, capsys):
    argv = ["--preset", "tiny", "--learning-rate", "3e-4", "--no-export", "--eval-split", "none"]
    assert train_main.main([*argv, "--print-config"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    expected = parse_args(argv)[0]
    assert expected.learning_rate == 3e-4 and expected.eval_split is None
    assert parse_args(["--config", str(path)])[0] == expected
    assert train_main.main([*argv, "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == dataclasses.asdict(expected)


def test_order_is_preset_then_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nbeta: 0.3\ndelta: 2\nmax_steps: 5\n")
    config = parse_args(["--config", str(path), "--delta", "4"])[0]
    assert config.dataset == "sample"  # from the file's preset
    assert (config.beta, config.delta, config.max_steps) == (0.3, 4.0, 5)
    assert isinstance(config.delta, float)
    # a --preset flag beats the file's preset key
    assert parse_args(["--config", str(path), "--preset", "paper"])[0].dataset != "sample"


def test_yaml_strings_are_parsed_as_the_command_line_would(tmp_path):
    path = tmp_path / "run.yaml"
    # PyYAML reads 1e-6 (no dot) as a string; none/null and yes/no as the flags spell them
    path.write_text("learning_rate: 1e-6\nref_model: none\nremat: 'yes'\nmax_steps: '12'\n")
    values = load_config_file(path)
    assert values == {"learning_rate": 1e-6, "ref_model": None, "remat": True, "max_steps": 12}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("betta: 0.1\n", "'betta' is not a TrainConfig field"),
        ("beta: high\n", "beta: expected float, got 'high'"),
        ("max_steps: 1.5\n", "max_steps: expected int or none, got 1.5"),
        ("remat: 1.0\n", "remat: expected bool, got 1.0"),
        ("beta: true\n", "beta: expected float, got True"),
        ("pairs: safe-dpo\n", "pairs must be one of"),
        ("- beta\n", "expected a mapping of field: value"),
        ("preset: huge\n", "preset 'huge' unknown"),
    ],
)
def test_bad_config_files_name_the_file_and_the_field(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert message in err
    if "must be one of" not in message:
        assert str(path) in err


def test_config_file_kinds(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text("beta = 0.1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(toml)])
    assert "give a .yaml, .yml or .json file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    assert "cannot read it" in capsys.readouterr().err
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"preset": "tiny", "learning_rate": 1e-5, "remat": True}))
    config = parse_args(["--config", str(js)])[0]
    assert (config.learning_rate, config.remat, config.dataset) == (1e-5, True, "sample")


def test_paper_experiment_configs_hold_config_file_settings(tmp_path):
    """The experiment configs' ``common`` and per-run blocks are --config mappings (the
    trainer's runs; a merge or PPO-Lagrangian stage takes its own command's flags)."""
    root = Path(__file__).resolve().parents[2] / "experiments" / "paper" / "configs"
    files = sorted(root.glob("*.json"))
    assert files
    for file in files:
        data = json.loads(file.read_text())
        runs = [(n, b) for n, b in data["runs"].items() if b.get("stage", "train") == "train"]
        for name, block in [("common", data["common"]), *runs]:
            path = tmp_path / f"{file.stem}_{name}.json"
            path.write_text(json.dumps(block))
            load_config_file(path)  # raises on an unknown field or a wrong type


@pytest.mark.slow
def test_a_run_prints_the_summary_evaluations_and_no_backend_noise(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # let jax probe
    argv = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "8", "--eval-batches", "1",
            "--eval-every", "1", "--log-every", "1", "--no-export",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "safedpo_jax.train", *argv],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Unable to initialize backend" not in proc.stdout + proc.stderr
    assert "Generating train split" not in proc.stdout + proc.stderr
    assert "pairs kept:" in out  # the data summary
    assert "held-out      step 1   loss" in out and "held-out      step 2   loss" in out
    assert "done          2 steps in" in out
    assert f"outputs       {tmp_path / 'run'}/" in out and "hf/" not in out
    lines = [line for line in out.splitlines() if line.startswith(("done ", "train ", "held-out "))]
    assert len(lines) == 5  # done, train, held-out x 3 (steps 1 and 2, and the summary's)
    assert all(line[13] == " " and line[14] != " " for line in lines)  # one value column
