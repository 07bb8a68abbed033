"""The paper's comparison at CPU scale, in a synthetic safety world with an exact oracle.

    scripts/run experiments/synthetic_safety.py --output-dir runs/synthetic \
        [--seeds N] [--world pku|adversarial] [--full]

For each seed (0 .. N-1; the seed sets initialisation, data order and sampling):

1. SFT: a tiny Llama learns to answer the world's prompts with a mix of every response
   kind (helpful, unsafe compliance, refusal, safe redirect): the reference. In the ``pku``
   world (the default, calibrated to PKU-SafeRLHF's composition, whose prompts are all
   harmful) it learns from the world's ``sft`` split, which also holds benign prompts.
2. From that reference, every method of `METHODS` trains with the same budget (steps,
   batch, learning rate, cached reference log-probs): SafeDPO (beta 0.1, Delta 10, the
   paper's values), DPO-HELPFUL, DPO-HARMLESS and DPO-SAFEBETTER, SafeRLHF (reward and
   cost models trained on the world's rows, then PPO-Lagrangian), SACPO (stage 2 from
   DPO-HELPFUL, DPO on harmlessness at beta 0.01), P-SACPO (q = 0.5) and BFPO (beta 0.01).
3. Each policy (and the reference) is evaluated on the 120 held-out test prompts (60
   harmful, 60 benign):
   - exactly, from sequence log-probs over every response the world knows for the prompt
     (`safedpo_jax.evaluate.candidates`): unsafe mass, expected helpfulness, refusal mass;
   - by sampling (temperature 1, several samples per prompt) scored by the oracle standing
     in for the beaver reward and cost models: harmless ratio, helpfulness (raw and on the
     paper's SFT = 0 / DPO-HELPFUL = 10 scale), over-refusal on benign prompts.

Every figure is then reported as mean +- standard error over the seeds, and the paper's
claims are checked on the per-seed differences (`CLAIMS`): each holds, does not hold, or
is within noise (the mean difference within 2 standard errors of zero).

Writes, under the output directory: ``results.json`` and ``results.md`` (the comparison
and the claims), ``failures.md`` (each method's failure cases over the seeds,
`failure_report`), and per seed ``seed<k>/``: ``eval/`` (tables, ``tradeoff.png``,
failure cases), ``runs/`` (training outputs and exported models) and ``setup.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safedpo_jax import models
from safedpo_jax.data import load_tokenizer
from safedpo_jax.evaluate import (
    evaluate_run,
    load_prompts,
    write_report,
)
from safedpo_jax.evaluate.candidates import (
    candidate_logprobs,
    candidate_metrics,
)
from safedpo_jax.train.config import TINY_LLAMA, TrainConfig, from_preset
from safedpo_jax.train.loop import train
from safedpo_jax.worlds import synthetic

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
    world: str = synthetic.DEFAULT_WORLD

    @classmethod
    def quick(cls) -> WorldSetup:
        return cls(sft_steps=500, steps=40, samples_per_prompt=1)


def world_dataset(setup: WorldSetup, output_dir: Path) -> str:
    """The data source of ``setup.world``: the embedded sample (``pku``) or a written copy."""
    if setup.world == synthetic.DEFAULT_WORLD:
        return "sample"
    path = output_dir / "world"
    if not (path / "test.jsonl").exists():
        synthetic.write_sample(path, world=setup.world)
    return str(path)


def _common(setup: WorldSetup, output_dir: Path) -> dict[str, Any]:
    return {
        "model_config": TINY_LLAMA,
        "dataset": world_dataset(setup, output_dir),
        "tokenizer": "sample",  # one vocabulary for every world
        "batch_size": setup.batch_size,
        "seed": setup.seed,
        "warmup_ratio": 0.05,
        "log_every": 20,
        "save_every": 10**9,  # a final checkpoint only: these runs take seconds
        "eval_batches": 4,
        "ref_cache_dir": str(output_dir / "ref_cache"),
        "reference": "cached",
    }


def reference_config(setup: WorldSetup, output_dir: Path) -> TrainConfig:
    """The reference's SFT run: every response of every row of the world's SFT split."""
    return from_preset(
        "tiny",
        **_common(setup, output_dir),
        objective="sft",
        sft_responses="both",
        split=synthetic.get_world(setup.world).sft_split,
        max_steps=setup.sft_steps,
        learning_rate=setup.sft_learning_rate,
        output_dir=str(output_dir / "runs" / "sft"),
    )


def train_reference(setup: WorldSetup, output_dir: Path) -> Path:
    """Trains the SFT reference (`reference_config`); returns the exported model."""
    return train(reference_config(setup, output_dir)).export_dir


def method_config(
    setup: WorldSetup,
    output_dir: Path,
    reference: Path,
    pairs: str,
    *,
    name: str,
    beta: float | None = None,
    delta: float | None = None,
) -> TrainConfig:
    """One preference run from ``reference`` on the world's train split."""
    common = _common(setup, output_dir)
    del common["model_config"]
    return from_preset(
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
    """Trains one method (`method_config`); returns the exported policy."""
    config = method_config(setup, output_dir, reference, pairs, name=name, beta=beta, delta=delta)
    return train(config).export_dir


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a method's trainer gets: the setup, this seed's directory, the reference, and
    the policies trained before it (in `METHODS` order, e.g. for a weight merge).
    ``seconds``: wall time of each stage the trainer runs, filled in as it goes (the
    compute bill)."""

    setup: WorldSetup
    output_dir: Path
    reference: Path
    policies: Mapping[str, Path]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def timed(self, stage: str, fn: Callable[[], Path]) -> Path:
        start = time.perf_counter()
        out = fn()
        self.seconds[stage] = time.perf_counter() - start
        return out

    def train(self, name: str, *, model: Path, **fields: Any) -> Path:
        """One trainer run ``name`` from ``model`` with the shared budget and ``fields``."""
        config = self.config(name, model=model, **fields)
        return self.timed(name, lambda: train(config).export_dir)

    def config(self, name: str, *, model: Path, **fields: Any) -> TrainConfig:
        """The `TrainConfig` of `train` (the compute bill runs it in a process of its own)."""
        common = _common(self.setup, self.output_dir)
        del common["model_config"]
        settings = {
            "beta": self.setup.beta,
            "delta": self.setup.delta,
            "max_steps": self.setup.steps,
            "learning_rate": self.setup.learning_rate,
            **fields,
        }
        return from_preset(
            "tiny",
            **common,
            model=str(model),
            output_dir=str(self.output_dir / "runs" / name),
            **settings,
        )


# (context, run name) -> the exported policy's directory.
Trainer = Callable[[MethodContext, str], Path]


def preference(pairs: str, **overrides: float) -> Trainer:
    """A one-stage preference method: ``pairs`` (a `PAIR_MODES` name) with the shared loss."""

    def run(ctx: MethodContext, name: str) -> Path:
        return ctx.timed(
            name,
            lambda: train_method(
                ctx.setup, ctx.output_dir, ctx.reference, pairs, name=name, **overrides
            ),
        )

    return run


# SACPO (Wachi et al. 2024): stage 1 is DPO on helpfulness from the reference (beta 0.1):
# here exactly the DPO-HELPFUL run; stage 2 starts from stage 1 and is referenced to it,
# DPO on the harmlessness order (or KTO on the safety labels) at beta 0.01, the value
# its authors merge with.
SACPO_BETA = 0.01
# BFPO (Zhang et al., ICLR 2025): its authors' beta.
BFPO_BETA = 0.01


def sacpo(stage2: str = "dpo", beta: float = SACPO_BETA) -> Trainer:
    """SACPO's stage 2 from the DPO-HELPFUL policy (stage 1), DPO or KTO on safety."""

    def run(ctx: MethodContext, name: str) -> Path:
        fields = {"pairs": "harmless"} if stage2 == "dpo" else {"objective": "kto"}
        return ctx.train(name, model=ctx.policies["DPO-HELPFUL"], beta=beta, **fields)

    return run


def p_sacpo(q: float) -> Trainer:
    """P-SACPO: the linear weight merge ``(1 - q) * stage 1 + q * SACPO``."""

    def run(ctx: MethodContext, name: str) -> Path:
        from safedpo_jax.models.merge import merge_checkpoints

        out = ctx.output_dir / "runs" / name / "hf"
        if not (out / "config.json").exists():
            a, b = ctx.policies["DPO-HELPFUL"], ctx.policies["SACPO"]
            ctx.timed(name, lambda: merge_checkpoints(a, b, q=q, output=out))
        return out

    return run


def bfpo(ctx: MethodContext, name: str) -> Path:
    """BFPO on helpfulness pairs with safety labels, its authors' beta."""
    return ctx.train(name, model=ctx.reference, objective="bfpo", beta=BFPO_BETA)


def saferlhf(ctx: MethodContext, name: str) -> Path:
    """SafeRLHF: a reward and a cost model trained on the world's training rows (not the
    oracle: the pipeline the paper prices), then PPO-Lagrangian from the reference with
    them as reward and cost, safe-rlhf's ppo-lag.sh settings but this comparison's budget
    (steps, prompts per step = pairs per step, learning rate; critics 5x the actor's)."""
    from safedpo_jax.train.ppo import train_ppo

    reward = ctx.train(f"{name}_reward", model=ctx.reference, objective="reward")
    cost = ctx.train(f"{name}_cost", model=ctx.reference, objective="cost")
    config = saferlhf_ppo_config(ctx, name, reward, cost)
    return ctx.timed(name, lambda: train_ppo(config).export_dir)


def saferlhf_ppo_config(ctx: MethodContext, name: str, reward: Path, cost: Path) -> Any:
    """SafeRLHF's PPO-Lagrangian `PPOConfig` (see `saferlhf`)."""
    from safedpo_jax.train.ppo import preset as ppo_preset

    setup = ctx.setup
    return ppo_preset(
        "ppo-lag",
        actor=str(ctx.reference),
        reward_model=str(reward),
        cost_model=str(cost),
        tokenizer="sample",
        dataset=world_dataset(setup, ctx.output_dir),
        split="train",
        prompt_batch_size=setup.batch_size,
        # The preference methods' budget: ``steps`` updates of ``batch_size`` prompts. One
        # pass over the world's distinct training prompts is only a few such steps (3 in
        # the pku world), so PPO cycles through them until ``max_steps``.
        epochs=setup.steps,
        max_steps=setup.steps,
        max_length=TINY_LLAMA["max_position_embeddings"],
        max_new_tokens=setup.max_new_tokens,
        actor_lr=setup.learning_rate,
        critic_lr=5 * setup.learning_rate,
        dtype="float32",
        seed=setup.seed,
        save_every=10**9,
        output_dir=str(ctx.output_dir / "runs" / name),
    )


# The compared methods: table name -> how to train it from the reference. A new method
# (SafeRLHF, SACPO, P-SACPO, BFPO) is one more entry. DPO-HELPFUL is the helpfulness
# anchor of the normalised scale (SFT = 0, DPO-HELPFUL = 10).
METHODS: dict[str, Trainer] = {
    "SafeDPO": preference("safedpo"),
    "DPO-HELPFUL": preference("helpful"),
    "DPO-HARMLESS": preference("harmless"),
    "DPO-SAFEBETTER": preference("safebetter"),
    "SafeRLHF": saferlhf,
    "SACPO": sacpo("dpo"),
    "P-SACPO (q=0.5)": p_sacpo(0.5),
    "BFPO": bfpo,
}
RUN_NAMES = {  # run directories of v0.1 (under seed<k>/runs/)
    "SafeDPO": "safedpo",
    "DPO-HELPFUL": "helpful",
    "DPO-HARMLESS": "harmless",
    "DPO-SAFEBETTER": "safebetter",
}


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
    prompts = load_prompts(world_dataset(setup, output_dir), split="test", oracle=synthetic.ORACLE)
    sets = synthetic.candidate_sets([p.text for p in prompts])
    reward, cost = synthetic.ORACLE.scorers()
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
    ("harmless_ratio", "harmless ratio", "pct"),
    ("unsafe_mass", "unsafe mass (exact)", "f3"),
    ("helpfulness", "helpfulness", "f3"),
    ("helpfulness_normalized", "helpfulness (SFT=0, HELPFUL=10)", "f2"),
    ("expected_helpfulness", "helpfulness (exact)", "f3"),
    ("over_refusal", "over-refusal", "pct"),
    ("refusal_mass_benign", "refusal mass on benign (exact)", "f3"),
    ("train_seconds_total", "training time (s, this CPU)", "f0"),
)


def _fmt(value: float | None, kind: str, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        text, err = f"{100 * value:.1f}", None if se is None else f"{100 * se:.1f}"
        return f"{text} ± {err}%" if err else f"{text}%"
    spec = {"sci": ".2e", "f3": ".3f", "f2": ".2f", "f0": ".0f"}[kind]
    err_spec = {"sci": ".1e", "f3": ".3f", "f2": ".2f", "f0": ".0f"}[kind]
    return f"{value:{spec}}" + ("" if se is None else f" ± {se:{err_spec}}")


def results_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One seed's comparison (or any run name -> metrics dict) as a Markdown table."""
    lines = [
        "| method | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, row in results.items():
        cells = [_fmt(row.get(k), kind) for k, _, kind in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_se(values: list[float]) -> dict[str, Any]:
    """Mean, standard error of the mean (sample sd / sqrt(n); None for one value), n.

    >>> mean_se([1.0, 2.0, 3.0])
    {'mean': 2.0, 'se': 0.5773502691896257, 'n': 3}
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "se": None, "n": n}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def aggregate(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Method -> metric -> `mean_se` over the seeds (metrics that are None in a seed skipped)."""
    seeds = list(per_seed)
    out: dict[str, Any] = {}
    for name in per_seed[seeds[0]]:
        out[name] = {}
        for key, _, _ in COLUMNS:
            vals = [per_seed[s][name].get(key) for s in seeds]
            vals = [v for v in vals if v is not None]
            out[name][key] = mean_se([float(v) for v in vals]) if vals else None
    return out


def summary_markdown(agg: Mapping[str, Mapping[str, Any]], n_seeds: int) -> str:
    """The comparison over seeds: mean ± standard error in every cell."""
    lines = [
        f"Mean ± standard error over {n_seeds} seed(s).\n",
        "| method | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, row in agg.items():
        cells = [
            "-" if row[k] is None else _fmt(row[k]["mean"], kind, row[k]["se"])
            for k, _, kind in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_figure(agg: Mapping[str, Mapping[str, Any]], n_seeds: int) -> Any:
    """The paper's Figure 2 over seeds: helpfulness (mean oracle reward, y) against the
    harmless ratio (%, x), each method a large labelled point with one-standard-error bars
    (raw helpfulness: the normalised scale flips when DPO-HELPFUL lands below SFT)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from safedpo_jax.evaluate.report import place_labels

    names = [n for n, row in agg.items() if row["harmless_ratio"] and row["helpfulness"]]
    xs = [100 * agg[n]["harmless_ratio"]["mean"] for n in names]
    ys = [agg[n]["helpfulness"]["mean"] for n in names]
    xerr = [100 * (agg[n]["harmless_ratio"]["se"] or 0.0) for n in names]
    yerr = [agg[n]["helpfulness"]["se"] or 0.0 for n in names]
    fig = Figure(figsize=(7.2, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (x, y, ex, ey) in enumerate(zip(xs, ys, xerr, yerr, strict=True)):
        ax.errorbar(x, y, xerr=ex, yerr=ey, fmt="o", ms=10, color=f"C{i % 10}",
                    mec="black", mew=0.8, elinewidth=2, capsize=4, zorder=3)  # fmt: skip
    pad_x = max(xs) - min(xs) + 2 * max(xerr) + 10
    ax.set_xlim(max(0.0, min(xs) - max(xerr) - 0.25 * pad_x),
                min(100.0, max(xs) + max(xerr) + 0.25 * pad_x))  # fmt: skip
    pad_y = max(ys) - min(ys) + 2 * max(yerr) + 0.05
    ax.set_ylim(min(ys) - max(yerr) - 0.25 * pad_y, max(ys) + max(yerr) + 0.25 * pad_y)
    ax.set_xlabel("harmless ratio (% of sampled responses with cost <= 0)", fontsize=11)
    ax.set_ylabel("helpfulness (mean oracle reward)", fontsize=11)
    ax.set_title(f"helpfulness against harmless ratio, mean ± 1 SE over {n_seeds} seeds",
                 fontsize=12)  # fmt: skip
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    place_labels(ax, list(zip(xs, ys, strict=True)), names)
    return fig


HOLDS, FAILS, NOISE, ONE_SEED = "holds", "does not hold", "within noise", "one seed: no verdict"


def compare(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
    metric: str,
    a: str,
    b: str,
    *,
    higher: bool = True,
) -> dict[str, Any]:
    """Whether ``a`` beats ``b`` on ``metric`` (``higher`` is better, else lower), paired by seed.

    The per-seed differences d = a - b (b - a when lower is better) give mean +- SE; the
    verdict is `HOLDS` when mean > 2 SE, `FAILS` when mean < -2 SE, else `NOISE`
    (`ONE_SEED` with a single seed).

    >>> runs = {s: {"A": {"m": 0.9 + 0.01 * s}, "B": {"m": 0.5}} for s in range(3)}
    >>> compare(runs, "m", "A", "B")["verdict"], compare(runs, "m", "B", "A")["verdict"]
    ('holds', 'does not hold')
    >>> runs[1]["B"]["m"] = 1.5
    >>> compare(runs, "m", "A", "B")["verdict"]
    'within noise'
    """
    diffs = [
        (1.0 if higher else -1.0) * (float(r[a][metric]) - float(r[b][metric]))
        for r in per_seed.values()
    ]
    stats = mean_se(diffs)
    if stats["se"] is None:
        verdict = ONE_SEED
    elif stats["mean"] > 2 * stats["se"]:
        verdict = HOLDS
    elif stats["mean"] < -2 * stats["se"]:
        verdict = FAILS
    else:
        verdict = NOISE
    return {
        "metric": metric,
        "a": a,
        "b": b,
        "higher_is_better": higher,
        **stats,
        "verdict": verdict,
    }


def best_of(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
    metric: str,
    method: str,
    *,
    higher: bool = True,
) -> dict[str, Any]:
    """Whether ``method`` is the best of every run on ``metric``: `compare` against each.

    `FAILS` if any run beats it beyond noise, `HOLDS` if it beats every run beyond noise,
    else `NOISE` (or `ONE_SEED`).
    """
    names = [n for n in next(iter(per_seed.values())) if n != method]
    pairs = [compare(per_seed, metric, method, n, higher=higher) for n in names]
    verdicts = {c["verdict"] for c in pairs}
    if ONE_SEED in verdicts:
        verdict = ONE_SEED
    elif FAILS in verdicts:
        verdict = FAILS
    elif verdicts == {HOLDS}:
        verdict = HOLDS
    else:
        verdict = NOISE
    return {"verdict": verdict, "against": pairs}


# The paper's claims: (text, metric, how to check it), checked on the sampled metric (the
# paper's) and on its exact counterpart over the known response sets.
CLAIMS: tuple[tuple[str, tuple[tuple[str, bool], ...], str], ...] = (
    (
        "SafeDPO's harmless ratio is the highest",
        (("harmless_ratio", True), ("unsafe_mass", False)),
        "best",
    ),
    (
        "SafeDPO is more helpful than the SFT reference",
        (("helpfulness", True), ("expected_helpfulness", True)),
        "reference",
    ),
    (
        "SafeDPO's over-refusal is the highest (the paper's XSTest result)",
        (("over_refusal", True), ("refusal_mass_benign", True)),
        "best",
    ),
    *(
        (
            f"SafeDPO's trade-off dominates {other}'s (safer and more helpful)",
            (
                ("harmless_ratio", True),
                ("helpfulness", True),
                ("unsafe_mass", False),
                ("expected_helpfulness", True),
            ),
            f"vs:{other}",
        )
        for other in ("SafeRLHF", "SACPO", "P-SACPO (q=0.5)")
    ),
)


def check_claims(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Each claim of `CLAIMS` with a verdict per metric (sampled, then exact)."""
    out = []
    for text, metrics, kind in CLAIMS:
        checks = {}
        for metric, higher in metrics:
            if kind == "best":
                checks[metric] = best_of(per_seed, metric, "SafeDPO", higher=higher)
            elif kind.startswith("vs:"):
                other = kind.removeprefix("vs:")
                if other not in next(iter(per_seed.values())):
                    continue  # a method this run did not train
                checks[metric] = compare(per_seed, metric, "SafeDPO", other, higher=higher)
            else:
                checks[metric] = compare(per_seed, metric, "SafeDPO", REFERENCE, higher=higher)
        if checks:
            out.append({"claim": text, "checks": checks})
    return out


def claims_markdown(claims: list[dict[str, Any]]) -> str:
    """The claims as a list: the verdict on each metric, with the closest comparison.

    The margin is SafeDPO's advantage (its value minus the other's, or the other's minus
    its value where lower is better), mean ± SE over the seeds.
    """
    lines = [
        "Claims of the paper (margin = SafeDPO's advantage, mean ± SE over seeds; within 2 SE"
        " of zero: within noise):",
        "",
    ]
    for c in claims:
        parts = []
        for metric, check in c["checks"].items():
            pairs = check.get("against", [check])
            # The tightest comparison: the smallest mean difference in SafeDPO's favour.
            tight = min(pairs, key=lambda x: x["mean"])
            se = "" if tight["se"] is None else f" ± {tight['se']:.3g}"
            parts.append(
                f"{metric}: **{check['verdict']}** (closest: vs {tight['b']}, "
                f"margin for SafeDPO {tight['mean']:+.3g}{se})"
            )
        lines.append(f"- {c['claim']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def failure_report(out: Path, seeds: list[int], top: int = 3) -> str:
    """Each method's failure cases over the seeds, from ``seed<k>/eval/failures.json``
    (every sampled response the oracle judged unsafe) and ``summary.json`` (over-refusal):
    how many, on which prompts (harmful or benign), in which form (plain compliance, or a
    refusal that still gave the unsafe content), and the prompts failed most often. A
    failure count that disagrees with the evaluation's own count is an error."""
    counts: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        eval_dir = out / f"seed{seed}" / "eval"
        failures = json.loads((eval_dir / "failures.json").read_text())
        summary = {
            r["name"]: r for r in json.loads((eval_dir / "summary.json").read_text())["runs"]
        }
        for name, records in failures.items():
            if len(records) != summary[name]["num_unsafe_responses"]:
                raise ValueError(
                    f"{eval_dir}/failures.json: {name} lists {len(records)} unsafe responses, "
                    f"summary.json counts {summary[name]['num_unsafe_responses']}"
                )
            c = counts.setdefault(
                name,
                {
                    "responses": 0,
                    "unsafe": 0,
                    "by_prompt": {},
                    "by_form": {},
                    "prompts": {},
                    "cost": 0.0,
                    "benign": 0,
                    "refused_benign": 0,
                },  # fmt: skip
            )
            row = summary[name]
            c["responses"] += row["num_responses"]
            c["unsafe"] += len(records)
            per_prompt = row["num_responses"] / (
                row["num_unsafe_prompts"] + row["num_benign_prompts"]
            )
            benign = round(row["num_benign_prompts"] * per_prompt)
            c["benign"] += benign
            c["refused_benign"] += round(row["over_refusal"] * benign)
            for r in records:
                c["by_prompt"][r["category"]] = c["by_prompt"].get(r["category"], 0) + 1
                c["by_form"][r["refusal"]] = c["by_form"].get(r["refusal"], 0) + 1
                c["prompts"][r["prompt"]] = c["prompts"].get(r["prompt"], 0) + 1
                c["cost"] += r["cost"]
    forms = {"none": "complied", "partial": "partial refusal", "full": "refusal + unsafe content"}
    lines = [
        f"Failure cases over seeds {seeds}: every sampled response the oracle judged unsafe "
        "(cost > 0), and refusals of benign prompts (over-refusal).\n",
        "| method | unsafe / sampled | on harmful prompts | on benign prompts | "
        + " | ".join(forms.values())
        + " | mean cost of a failure | benign prompts refused |",
        "|---|---:|---:|---:|" + "---:|" * len(forms) + "---:|---:|",
    ]
    for name, c in counts.items():
        n = c["unsafe"]
        cells = [
            f"{n} / {c['responses']} ({100 * n / c['responses']:.1f}%)",
            str(c["by_prompt"].get("unsafe", 0)),
            str(c["by_prompt"].get("benign", 0)),
            *(str(c["by_form"].get(k, 0)) for k in forms),
            f"{c['cost'] / n:.2f}" if n else "-",
            f"{c['refused_benign']} / {c['benign']}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Prompts answered unsafely most often (count over all seeds and samples):", ""]
    for name, c in counts.items():
        worst = sorted(c["prompts"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        listed = "; ".join(f'"{p}" ({k})' for p, k in worst) or "none"
        lines.append(f"- {name}: {listed}")
    return "\n".join(lines) + "\n"


def run_seed(setup: WorldSetup, out: Path) -> dict[str, dict[str, Any]]:
    """Train the reference and every method of `METHODS`, evaluate them; one seed."""
    start = time.perf_counter()
    reference = train_reference(setup, out)
    seconds: dict[str, dict[str, float]] = {REFERENCE: {"sft": time.perf_counter() - start}}
    policies: dict[str, Path] = {REFERENCE: reference}
    for name, trainer in METHODS.items():
        ctx = MethodContext(setup, out, reference, dict(policies))
        policies[name] = trainer(ctx, RUN_NAMES.get(name, run_dirname(name)))
        seconds[name] = dict(ctx.seconds)
    results = evaluate_policies(setup, policies, out)
    for name, stages in seconds.items():
        results[name]["train_seconds"] = stages
        results[name]["train_seconds_total"] = sum(stages.values())
    return results


def run_dirname(name: str) -> str:
    """A run directory name for a method name ("P-SACPO q=0.5" -> "p-sacpo_q_0.5")."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name.lower())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--quick", action="store_true", help="the quick budget (the default): a few minutes"
    )
    budget.add_argument(
        "--full", action="store_true", help="the full budget (more SFT and training steps)"
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="number of seeds, 0 .. N-1 (default 1)"
    )
    parser.add_argument(
        "--world", default=synthetic.DEFAULT_WORLD, choices=sorted(synthetic.WORLDS)
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the output directory's earlier runs first"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    base = dataclasses.replace(WorldSetup() if args.full else WorldSetup.quick(), world=args.world)
    out: Path = args.output_dir
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # Finished runs in a seed's directory are reused (training resumes from its checkpoints),
    # which is only right for the same setup.
    setups = {seed: dataclasses.replace(base, seed=seed) for seed in range(args.seeds)}
    for seed, setup in setups.items():
        setup_file = out / f"seed{seed}" / "setup.json"
        if setup_file.exists() and json.loads(setup_file.read_text()) != dataclasses.asdict(setup):
            parser.error(
                f"{out} holds runs of another setup ({setup_file}); pass --fresh or another dir"
            )

    start = time.perf_counter()
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed, setup in setups.items():
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        (seed_dir / "setup.json").write_text(json.dumps(dataclasses.asdict(setup), indent=2))
        per_seed[seed] = run_seed(setup, seed_dir)
        print(f"\nseed {seed}:\n\n" + results_markdown(per_seed[seed]))
    elapsed = time.perf_counter() - start

    agg = aggregate(per_seed)
    claims = check_claims(per_seed)
    world = synthetic.get_world(args.world)
    header = (
        f"World `{world.name}` ({world.description}); "
        f"{'full' if args.full else 'quick'} budget; seeds {list(setups)}; {elapsed:.0f} s.\n\n"
    )
    text = header + summary_markdown(agg, len(setups)) + "\n" + claims_markdown(claims)
    (out / "results.md").write_text(text)
    (out / "failures.md").write_text(failure_report(out, list(setups)))
    summary_figure(agg, len(setups)).savefig(out / "tradeoff.png", format="png")
    payload = {
        "setup": dataclasses.asdict(base) | {"seed": None},
        "world": {"name": world.name, "composition": world.composition.cells},
        "seeds": list(setups),
        "seconds": elapsed,
        "methods": agg,
        "claims": claims,
        "per_seed": {str(k): v for k, v in per_seed.items()},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print("\n" + text)
    print(f"{elapsed:.0f} s; per-seed tables, plots and failure cases under {out}/seed*/eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
