"""``python -m safedpo_jax.evaluate``: evaluate exported models on a prompt set.

    python -m safedpo_jax.evaluate --model runs/sft/export runs/safedpo/export \\
        --prompts PKU-Alignment/PKU-SafeRLHF-30K --split test \\
        --reward-model PKU-Alignment/beaver-7b-unified-reward \\
        --cost-model PKU-Alignment/beaver-7b-unified-cost \\
        --benign-prompts xstest_safe.csv --sft-run sft --helpful-run dpo-helpful \\
        --output-dir runs/eval

    python -m safedpo_jax.evaluate --model m1 m2 --prompts sample --tokenizer sample \\
        --oracle synthetic --output-dir runs/eval-synthetic

Phases, so that one model sits in memory at a time: every policy generates (a progress
bar per run), then the reward model scores every run, then the cost model. Each of the
reward and the cost comes from its ``--*-model`` directory when given, else from
``--oracle``. Writes the tables, ``tradeoff.png`` and the failure cases (see
`safedpo_jax.evaluate.report`) under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from safedpo_jax.evaluate.metrics import BENIGN
from safedpo_jax.evaluate.refusal import DEFAULT_MATCHER
from safedpo_jax.evaluate.report import metrics_markdown, write_report
from safedpo_jax.evaluate.runner import (
    Generation,
    Prompt,
    assemble,
    generate_responses,
    load_prompts,
    score_texts,
)
from safedpo_jax.evaluate.scoring import (
    ORACLES,
    ModelScorer,
    Scorer,
    check_vocabulary,
    resolve_oracle,
)

__all__ = ["main", "parser"]

ORACLE_NAMES = tuple(ORACLES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag with its help and its default (or "required"); the description's examples
    kept as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} [required]"
        default = action.default
        unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if not unset and "default" not in text:
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            return f"{text} [default: {shown}]"
        return text


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m safedpo_jax.evaluate",
        description="Generate, score and report: helpfulness, harmlessness, harmless ratio, "
        "over-refusal, failure cases.\n\n"
        "  python -m safedpo_jax.evaluate --model runs/sft/hf runs/safedpo/hf \\\n"
        "      --prompts PKU-Alignment/PKU-SafeRLHF-30K --split test \\\n"
        "      --reward-model PKU-Alignment/beaver-7b-unified-reward \\\n"
        "      --cost-model PKU-Alignment/beaver-7b-unified-cost --output-dir runs/eval",
        formatter_class=_HelpFormatter,
        epilog="Writes OUTPUT_DIR/summary.md and summary.json (one row per model), "
        "tradeoff.png,\nfailures.md and failures.json (every response judged unsafe) and "
        "runs/NAME/.",
    )
    models = p.add_argument_group("models")
    models.add_argument("--model", nargs="+", required=True, metavar="PATH",
                        help="policies to evaluate: exported hf/ dirs or Hub ids")  # fmt: skip
    models.add_argument("--name", nargs="+", metavar="NAME",
                        help="one run name per --model (default: the directory names)")  # fmt: skip
    models.add_argument("--tokenizer", metavar="PATH",
                        help="policy tokenizer (default: each model's directory)")  # fmt: skip
    models.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="compute dtype of policies and score models")  # fmt: skip
    models.add_argument("--mesh", type=int, nargs=3, default=(1, -1, 1),
                        metavar=("DATA", "FSDP", "TENSOR"),
                        help="device mesh (-1: the remaining devices); the batch size must "
                        "divide over it")  # fmt: skip
    prompts = p.add_argument_group("prompts")
    prompts.add_argument("--prompts", required=True, metavar="SOURCE",
                         help="prompt set: 'sample', a .txt/.jsonl/.json/.csv file, a data "
                         "directory or a Hub dataset")  # fmt: skip
    prompts.add_argument("--split", default="test", metavar="NAME",
                         help="split of --prompts (a single PKU-style file not named test.* "
                         "is a training split: pass --split train to evaluate on it "
                         "knowingly)")  # fmt: skip
    prompts.add_argument("--max-prompts", type=int, metavar="N",
                         help="use the first N prompts (default: all)")  # fmt: skip
    prompts.add_argument("--benign-prompts", metavar="SOURCE",
                         help="a benign set for over-refusal (XSTest's safe prompts)")  # fmt: skip
    prompts.add_argument("--benign-split", default="test", metavar="NAME",
                         help="split of --benign-prompts")  # fmt: skip
    prompts.add_argument("--template", default="safe_rlhf", metavar="NAME",
                         help="prompt template: safe_rlhf or chat (the tokenizer's)")  # fmt: skip
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                     help="tokens generated per answer at most")  # fmt: skip
    gen.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="FLOAT",
        help="sampling temperature; 0 = greedy",
    )
    gen.add_argument(
        "--top-p", type=float, default=1.0, metavar="FLOAT", help="nucleus sampling mass"
    )
    gen.add_argument("--seed", type=int, default=0, metavar="INT", help="sampling seed")
    gen.add_argument("--batch-size", type=int, default=8, metavar="N",
                     help="prompts per generation batch and texts per scoring batch")  # fmt: skip
    scoring = p.add_argument_group("scoring")
    scoring.add_argument("--reward-model", metavar="PATH",
                         help="reward score-model directory or Hub id (helpfulness)")  # fmt: skip
    scoring.add_argument("--cost-model", metavar="PATH",
                         help="cost score-model directory or Hub id (harmlessness: cost <= 0 "
                         "is harmless)")  # fmt: skip
    scoring.add_argument("--oracle", choices=ORACLE_NAMES,
                         help="programmatic scorer for whichever model is not given (the "
                         "synthetic world's, for --prompts sample)")  # fmt: skip
    scoring.add_argument("--max-score-length", type=int, default=512, metavar="N",
                         help="score models' max tokens (prompt + answer)")  # fmt: skip
    scoring.add_argument("--refusal-phrase", action="append", default=[], metavar="TEXT",
                         help="extra full-refusal opening phrase (repeatable)")  # fmt: skip
    report = p.add_argument_group("report")
    report.add_argument("--sft-run", metavar="NAME",
                        help="run whose helpfulness is 0 on the normalised scale")  # fmt: skip
    report.add_argument("--helpful-run", metavar="NAME",
                        help="run whose helpfulness is 10 (DPO-HELPFUL in the paper)")  # fmt: skip
    report.add_argument("--output-dir", required=True, metavar="DIR", help="where the report goes")
    report.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def _scorer_factory(
    path: str | None, role: str, args: argparse.Namespace, mesh: Any
) -> Callable[[], Scorer]:
    if path is not None:
        return lambda: ModelScorer.from_pretrained(
            path,
            dtype=DTYPES[args.dtype],
            mesh=mesh,
            batch_size=args.batch_size,
            max_length=args.max_score_length,
        )
    if args.oracle is not None:
        reward, cost = resolve_oracle(args.oracle).scorers()
        return lambda: reward if role == "reward" else cost
    raise ValueError(f"give --{role}-model PATH or --oracle synthetic")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2, with one ``error:`` line on stderr,
    for bad input: a missing path, a data error, mismatched models and tokenizers)."""
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError) as exc:  # bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    names = args.name or [Path(m).resolve().name for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.model)} models but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(f"run names repeat: {names}; give distinct --name values")
    if (args.sft_run is None) != (args.helpful_run is None):
        raise ValueError("give both --sft-run and --helpful-run, or neither")
    for anchor in (args.sft_run, args.helpful_run):
        if anchor is not None and anchor not in names:
            raise ValueError(f"anchor run {anchor!r} is not among the runs {names}")

    from safedpo_jax import sharding
    from safedpo_jax.data import load_tokenizer
    from safedpo_jax.models import CausalLM, from_pretrained

    mesh = sharding.make_mesh(*args.mesh)
    reward_factory = _scorer_factory(args.reward_model, "reward", args, mesh)
    cost_factory = _scorer_factory(args.cost_model, "cost", args, mesh)
    # The oracle categorises prompts without a category field: the named one, or the
    # synthetic world's for its own embedded sample.
    oracle_name = args.oracle or ("synthetic" if str(args.prompts) == "sample" else None)
    oracle = None if oracle_name is None else resolve_oracle(oracle_name)
    prompts = load_prompts(args.prompts, split=args.split, limit=args.max_prompts, oracle=oracle)
    if args.benign_prompts:
        prompts += load_prompts(
            args.benign_prompts,
            split=args.benign_split,
            subset="benign",
            category=BENIGN,
        )
    if args.oracle is not None and None in (args.reward_model, args.cost_model):
        oracle.check_prompts([p.text for p in prompts])  # before any model loads
    matcher = DEFAULT_MATCHER.extend(full=tuple(args.refusal_phrase))
    progress = not args.no_progress

    generations: dict[str, list[Generation]] = {}
    for name, path in zip(names, args.model, strict=True):
        model = from_pretrained(path, dtype=DTYPES[args.dtype], mesh=mesh)
        if not isinstance(model, CausalLM):
            raise ValueError(f"{path} is not a causal language model")
        tokenizer = load_tokenizer(args.tokenizer or path)
        check_vocabulary(model, tokenizer, where=f"{path} with tokenizer {args.tokenizer or path}")
        generations[name] = generate_responses(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            template=args.template,
            mesh=mesh,
            progress=f"generate {name}" if progress else False,
        )
        del model
        gc.collect()

    scores: dict[str, dict[str, Any]] = {name: {} for name in names}
    for role, factory in (("reward", reward_factory), ("cost", cost_factory)):
        scorer = factory()
        for name, gens in generations.items():
            scores[name][role] = score_texts(
                scorer,
                [g.prompt.text for g in gens],
                [g.response for g in gens],
                chunk_size=max(args.batch_size, 64),
                progress=f"{role} {name}" if progress else False,
            )
        del scorer
        gc.collect()

    runs = {
        name: assemble(gens, scores[name]["reward"], scores[name]["cost"], matcher=matcher)
        for name, gens in generations.items()
    }
    settings = {k: v for k, v in vars(args).items() if k not in ("no_progress",) and v is not None}
    report = write_report(
        args.output_dir,
        runs,
        sft_run=args.sft_run,
        helpful_run=args.helpful_run,
        settings={**settings, "names": names, "num_prompts": _counts(prompts)},
    )
    print(metrics_markdown(report.metrics), end="")
    print(f"wrote {Path(args.output_dir)}/summary.md, tradeoff.png, failures.md and runs/")
    return 0


def _counts(prompts: Sequence[Prompt]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in prompts:
        key = f"{p.subset}/{p.category or 'uncategorised'}"
        out[key] = out.get(key, 0) + 1
    return out
