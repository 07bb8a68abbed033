"""``python -m safedpo_jax.data``: load a preference source and print what it yields.

    python -m safedpo_jax.data SOURCE [--split SPLIT] [--pairs MODE] [--tokenizer PATH]
        [--max-length N] [--template T] [--config NAME] [--safety-label {is_safe,severity}]
        [--on-error {raise,drop}] [--keep-both-unsafe] [--cache-dir DIR]

Prints the human-readable summary, then ONE last line holding the summary as a JSON
object (``rows``, ``pairs``, ``swapped``, ``truncated``, ``dropped``, ...). Without
``--tokenizer`` nothing is tokenised (``truncated`` is null), except for ``SOURCE`` =
``sample``, which uses the sample tokenizer. Bad input exits with status 2 and a
one-paragraph message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from safedpo_jax.data.pairs import PAIR_CONSTRUCTIONS, build_pairs
from safedpo_jax.data.pipeline import load_preference_data
from safedpo_jax.data.rows import SAMPLE, DataError, load_rows

__all__ = ["main", "parser"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag with its help and its default."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == argparse.SUPPRESS
        return text if unset or action.required else f"{text} [default: {default}]"


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m safedpo_jax.data",
        description="Load PKU-SafeRLHF-style preference data and summarise the pairs: rows "
        "read, pairs kept,\nswapped by SafeDPO's T, dropped (by reason) and truncated; the "
        "last line is the summary as JSON.\n\n"
        "  python -m safedpo_jax.data sample --pairs safedpo\n"
        "  python -m safedpo_jax.data my_data --split train --tokenizer my_model --max-length 512",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("source", help="'sample', a local file or directory, or a Hub dataset name")
    p.add_argument("--split", default="train", metavar="NAME", help="split to read")
    p.add_argument("--pairs", default="safedpo", choices=sorted(PAIR_CONSTRUCTIONS),
                   help="pair construction (SafeDPO or a DPO baseline)")  # fmt: skip
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer name or path, to count truncation ('sample' for the embedded "
                   "one; default: none, no tokenising)")  # fmt: skip
    p.add_argument("--max-length", type=int, default=512, metavar="N",
                   help="prompt + response tokens (with --tokenizer)")  # fmt: skip
    p.add_argument("--template", default="safe_rlhf", metavar="NAME",
                   help="safe_rlhf, chat, or a '{prompt}' string")  # fmt: skip
    p.add_argument("--config", metavar="NAME",
                   help="dataset config (alpaca-7b of PKU-Alignment/PKU-SafeRLHF)")  # fmt: skip
    p.add_argument("--safety-label", default="is_safe", choices=["is_safe", "severity"],
                   help="safety from the is_response_*_safe columns or from severity")  # fmt: skip
    p.add_argument("--on-error", default="raise", choices=["raise", "drop"],
                   help="a bad row is an error, or dropped and counted")  # fmt: skip
    p.add_argument("--keep-both-unsafe", action=argparse.BooleanOptionalAction, default=False,
                   help="safedpo: keep pairs of two unsafe responses [default: no]")  # fmt: skip
    p.add_argument("--cache-dir", metavar="DIR", help="datasets cache directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parser().parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    tokenizer = args.tokenizer or (SAMPLE if args.source == SAMPLE else None)
    options = dict(
        safety_label=args.safety_label,
        on_error=args.on_error,
        keep_both_unsafe=args.keep_both_unsafe,
    )
    try:
        if tokenizer is None:
            raw = load_rows(
                args.source, split=args.split, config=args.config, cache_dir=args.cache_dir
            )
            _, summary = build_pairs(raw, args.pairs, **options)
        else:
            _, summary = load_preference_data(
                args.source,
                split=args.split,
                pairs=args.pairs,
                tokenizer=tokenizer,
                max_length=args.max_length,
                template=args.template,
                config=args.config,
                cache_dir=args.cache_dir,
                **options,
            )
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.to_text())
    print(summary.to_json())
    return 0
