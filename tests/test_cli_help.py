"""Every flag of every command explains itself in --help: a description, and the default
where there is one."""

from __future__ import annotations

import argparse

import pytest

from safedpo_jax.data import cli as data_cli
from safedpo_jax.evaluate import cli as eval_cli
from safedpo_jax.train import ppo
from safedpo_jax.train.config import build_parser

PARSERS = {
    "train": build_parser,
    "evaluate": eval_cli.parser,
    "data": data_cli.parser,
    "ppo": ppo._parser,
}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_a_description_and_its_default(command):
    parser = PARSERS[command]()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 5, (command, action.dest)
        shown = parser._get_formatter()._get_help_string(action)
        default = action.default
        if action.required and action.option_strings:  # a positional is required anyway
            assert "[required]" in shown, (command, action.dest)
        elif default not in (None, False, argparse.SUPPRESS) and default != []:
            assert "default" in shown, (command, action.dest)
        assert " ".join(shown.split()) in text, (command, action.dest)


def test_zero_defaults_are_shown():
    text = " ".join(eval_cli.parser().format_help().split())
    assert "sampling temperature; 0 = greedy [default: 0.0]" in text
    assert "sampling seed [default: 0]" in text


def test_data_command_booleans_negate():
    p = data_cli.parser()
    assert p.parse_args(["sample", "--keep-both-unsafe"]).keep_both_unsafe is True
    assert p.parse_args(["sample", "--no-keep-both-unsafe"]).keep_both_unsafe is False
    assert p.parse_args(["sample"]).keep_both_unsafe is False


def test_ppo_flags_show_their_defaults():
    text = " ".join(ppo._parser().format_help().split())
    assert "per-token KL penalty against the reference" in text
    assert "[default: 0.01]" in text and "[default: cosine]" in text


def test_every_ppo_config_field_has_its_help_line():
    import dataclasses

    for field in dataclasses.fields(ppo.PPOConfig):
        assert len(field.metadata.get("help", "")) > 5, field.name
