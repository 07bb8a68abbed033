"""The paper's comparison at CPU scale, in a synthetic safety world with an exact oracle.

    scripts/run experiments/synthetic_safety.py --output-dir runs/synthetic [--quick]

1. SFT: a tiny Llama learns to answer the embedded sample's prompts with a mix of every
   response kind (helpful, unsafe compliance, refusal, safe redirect): the reference.
2. From that reference, SafeDPO (beta 0.1, Delta 10, the paper's values), DPO-HELPFUL,
   DPO-HARMLESS and DPO-SAFEBETTER train with the same budget (steps, batch, learning
   rate, cached reference log-probs).
3. Each policy (and the reference) is evaluated on the 120 held-out test prompts (60
   harmful, 60 benign):
   - exactly, from sequence log-probs over every response the world knows for the prompt
     (`safedpo_jax.evaluate.candidates`): unsafe mass, expected helpfulness, refusal mass;
   - by sampling (temperature 1, several samples per prompt) scored by the oracle standing
     in for the beaver reward and cost models: harmless ratio, helpfulness (raw and on the
     paper's SFT = 0 / DPO-HELPFUL = 10 scale), over-refusal on benign prompts.
4. Writes, under the output directory: ``results.json`` and ``results.md`` (the
   comparison), ``eval/`` (per-run tables, ``tradeoff.png``, failure cases), ``runs/``
   (training outputs and exported models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from safedpo_jax import models
from safedpo_jax.data import load_tokenizer, synthetic
from safedpo_jax.evaluate import (
    evaluate_run,
    load_prompts,
    oracle_scorers,
    write_report,
)
from safedpo_jax.evaluate.candidates import (
    candidate_logprobs,
    candidate_metrics,
    synthetic_candidate_sets,
)
from safedpo_jax.train.config import TINY_LLAMA, from_preset
from safedpo_jax.train.loop import train

METHODS: dict[str, str] = {
    "SafeDPO": "safedpo",
    "DPO-HELPFUL": "helpful",
    "DPO-HARMLESS": "harmless",
    "DPO-SAFEBETTER": "safebetter",
}
REFERENCE = "SFT (reference)"


@dataclasses.dataclass(frozen=True)
class WorldSetup:
    """Budgets and hyperparameters of one comparison (the defaults are the full run)."""

    sft_steps: int = 800
    sft_learning_rate: float = 3e-3
    steps: int = 60
    learning_rate: float = 2e-4
    beta: float = 0.1
    delta: float = 10.0
    batch_size: int = 32
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def quick(cls) -> WorldSetup:
        return cls(sft_steps=500, steps=40, samples_per_prompt=1)


def _common(setup: WorldSetup, output_dir: Path) -> dict[str, Any]:
    return {
        "model_config": TINY_LLAMA,
        "batch_size": setup.batch_size,
        "seed": setup.seed,
        "warmup_ratio": 0.05,
        "log_every": 20,
        "save_every": 10**9,  # a final checkpoint only: these runs take seconds
        "eval_batches": 4,
        "ref_cache_dir": str(output_dir / "ref_cache"),
        "reference": "cached",
    }


def train_reference(setup: WorldSetup, output_dir: Path) -> Path:
    """SFT on every response of every training row; returns the exported model."""
    config = from_preset(
        "tiny",
        **_common(setup, output_dir),
        objective="sft",
        sft_responses="both",
        max_steps=setup.sft_steps,
        learning_rate=setup.sft_learning_rate,
        output_dir=str(output_dir / "runs" / "sft"),
    )
    return train(config).export_dir


def train_method(
    setup: WorldSetup,
    output_dir: Path,
    reference: Path,
    pairs: str,
    *,
    name: str,
    beta: float | None = None,
    delta: float | None = None,
) -> Path:
    """Trains one method from ``reference``; returns the exported policy."""
    common = _common(setup, output_dir)
    del common["model_config"]
    config = from_preset(
        "tiny",
        **common,
        model=str(reference),
        pairs=pairs,
        beta=setup.beta if beta is None else beta,
        delta=setup.delta if delta is None else delta,
        max_steps=setup.steps,
        learning_rate=setup.learning_rate,
        output_dir=str(output_dir / "runs" / name),
    )
    return train(config).export_dir


def evaluate_policies(
    setup: WorldSetup,
    policies: dict[str, Path],
    output_dir: Path,
    *,
    anchors: bool = True,
    report_dir: str = "eval",
) -> dict[str, dict[str, Any]]:
    """Exact and sampled metrics of each policy on the test prompts; writes ``report_dir``."""
    tokenizer = load_tokenizer("sample")
    prompts = load_prompts("sample", split="test")
    sets = synthetic_candidate_sets([p.text for p in prompts])
    reward, cost = oracle_scorers(synthetic.oracle)
    records, exact = {}, {}
    for name, path in policies.items():
        model = models.from_pretrained(path)
        exact[name] = candidate_metrics(sets, candidate_logprobs(model, tokenizer, sets))
        records[name] = []
        for k in range(setup.samples_per_prompt):
            records[name] += evaluate_run(
                model,
                tokenizer,
                prompts,
                reward=reward,
                cost=cost,
                max_new_tokens=setup.max_new_tokens,
                temperature=setup.temperature,
                seed=setup.seed * 1000 + k,
                batch_size=60,
            )
    report = write_report(
        output_dir / report_dir,
        records,
        sft_run=REFERENCE if anchors and REFERENCE in records else None,
        helpful_run="DPO-HELPFUL" if anchors and REFERENCE in records else None,
        settings={
            "setup": dataclasses.asdict(setup),
            "policies": {k: str(v) for k, v in policies.items()},
        },
    )
    results = {}
    for run in report.metrics:
        e = exact[run.name]
        results[run.name] = {
            "harmless_ratio": run.harmless_ratio,
            "helpfulness": run.helpfulness,
            "helpfulness_normalized": run.helpfulness_normalized,
            "harmlessness": run.harmlessness,
            "harmless_ratio_unsafe_prompts": run.harmless_ratio_unsafe,
            "over_refusal": run.over_refusal,
            "unsafe_mass": e["unsafe_mass"],
            "unsafe_mass_unsafe_prompts": e["unsafe_mass_unsafe"],
            "expected_helpfulness": e["expected_helpfulness"],
            "refusal_mass_benign": e["refusal_mass_benign"],
            "set_mass": e["set_mass"],
            "num_responses": run.num_responses,
        }
    return results


COLUMNS = (
    ("harmless_ratio", "harmless ratio", "{:.1%}"),
    ("unsafe_mass", "unsafe mass (exact)", "{:.3f}"),
    ("helpfulness", "helpfulness", "{:.3f}"),
    ("helpfulness_normalized", "helpfulness (SFT=0, HELPFUL=10)", "{:.2f}"),
    ("expected_helpfulness", "helpfulness (exact)", "{:.3f}"),
    ("over_refusal", "over-refusal", "{:.1%}"),
    ("refusal_mass_benign", "refusal mass on benign (exact)", "{:.3f}"),
)


def results_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "| method | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, row in results.items():
        cells = ["-" if row[k] is None else fmt.format(row[k]) for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="smaller budgets (a few minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fresh", action="store_true", help="delete the output directory's earlier runs first"
    )
    args = parser.parse_args(argv)
    setup = dataclasses.replace(WorldSetup.quick() if args.quick else WorldSetup(), seed=args.seed)
    out: Path = args.output_dir
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # Finished runs in the directory are reused (training resumes from its checkpoints),
    # which is only right for the same setup.
    setup_file = out / "setup.json"
    wanted = dataclasses.asdict(setup)
    if setup_file.exists() and json.loads(setup_file.read_text()) != wanted:
        parser.error(
            f"{out} holds runs of another setup ({setup_file}); pass --fresh or another dir"
        )
    setup_file.write_text(json.dumps(wanted, indent=2))

    start = time.perf_counter()
    policies = {REFERENCE: train_reference(setup, out)}
    for name, pairs in METHODS.items():
        policies[name] = train_method(setup, out, policies[REFERENCE], pairs, name=pairs)
    results = evaluate_policies(setup, policies, out)
    elapsed = time.perf_counter() - start

    table = results_markdown(results)
    (out / "results.md").write_text(table)
    payload = {"setup": dataclasses.asdict(setup), "seconds": elapsed, "methods": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print("\n" + table)
    print(f"{elapsed:.0f} s; tables, plot and failure cases under {out / 'eval'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
