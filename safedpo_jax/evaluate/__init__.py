"""Evaluation: generation, scoring, the paper's metrics, tables, plot and failure cases.

The path of one run::

    exported model + prompt set
      -> generation.generate      batched KV-cache sampling, jitted, sharded  [B, N] tokens
      -> decode                   response texts
      -> scoring (Scorer)         reward and cost per (prompt, response)
      -> refusal.RefusalMatcher   full / partial / no refusal per response
      -> metrics.ScoredResponse   one record per response
      -> metrics.summarize        RunMetrics: helpfulness, harmlessness, harmless ratio,
                                  over-refusal, harmless ratio on unsafe prompts
      -> report.write_report      tables (Markdown, JSON), tradeoff.png, failure cases

Modules: `safedpo_jax.evaluate.metrics`, `safedpo_jax.evaluate.refusal`,
`safedpo_jax.evaluate.scoring`, `safedpo_jax.evaluate.report`,
`safedpo_jax.evaluate.generation`, `safedpo_jax.evaluate.runner` (one run: prompts,
generation, scoring) and `safedpo_jax.evaluate.cli` (``python -m safedpo_jax.evaluate``,
the whole path over exported models). Training is never imported.
"""

from safedpo_jax.evaluate.metrics import (
    RunMetrics,
    ScoredResponse,
    harmless_ratio,
    harmlessness,
    helpfulness,
    normalize_helpfulness,
    normalize_runs,
    summarize,
)
from safedpo_jax.evaluate.refusal import DEFAULT_MATCHER, RefusalMatcher
from safedpo_jax.evaluate.report import (
    Report,
    failure_cases,
    failures_markdown,
    metrics_markdown,
    plot_tradeoff,
    write_report,
)
from safedpo_jax.evaluate.runner import Prompt, evaluate_run, load_prompts
from safedpo_jax.evaluate.scoring import (
    ModelScorer,
    Oracle,
    Scorer,
    function_scorer,
    oracle_scorers,
    resolve_oracle,
)

__all__ = [
    "DEFAULT_MATCHER",
    "ModelScorer",
    "Prompt",
    "RefusalMatcher",
    "Report",
    "RunMetrics",
    "ScoredResponse",
    "Scorer",
    "evaluate_run",
    "failure_cases",
    "failures_markdown",
    "function_scorer",
    "harmless_ratio",
    "harmlessness",
    "helpfulness",
    "load_prompts",
    "metrics_markdown",
    "normalize_helpfulness",
    "normalize_runs",
    "oracle_scorers",
    "Oracle",
    "resolve_oracle",
    "plot_tradeoff",
    "summarize",
    "write_report",
]
