"""What a training run prints: held-out metrics as they are computed, and a closing summary.

Pure formatting (strings from metrics dicts), so the command's output is tested without a
run. Numbers use four significant digits; labels are padded to one width so the columns
line up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

# The metrics worth a glance, in this order, when a run has them (any objective's names;
# the rest stay in metrics.jsonl).
HEADLINE = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "safety/mixed_accuracy",
    "accuracy",
    "auc",
    "safety/auc",
)
LABEL_WIDTH = 14


def number(value: float) -> str:
    """Four significant digits, without scientific notation for ordinary magnitudes.

    >>> number(3.11253), number(0.000123456), number(1883.34), number(2.5e-9)
    ('3.113', '0.0001235', '1883', '2.5e-09')
    """
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -4 or magnitude >= 6:
        return f"{value:.4g}"
    return f"{value:.{max(0, 3 - magnitude)}f}"


def headline(metrics: Mapping[str, float], prefix: str = "") -> str:
    """``name value`` pairs of the `HEADLINE` metrics present (names without ``prefix``).

    >>> headline({"eval/loss": 0.69315, "eval/rewards/accuracies": 0.5, "x": 1}, "eval/")
    'loss 0.6932   rewards/accuracies 0.5000'
    """
    parts = [
        f"{name} {number(metrics[prefix + name])}" for name in HEADLINE if prefix + name in metrics
    ]
    return "   ".join(parts)


def eval_line(step: int, metrics: Mapping[str, float]) -> str:
    """The console line of a held-out evaluation.

    >>> eval_line(20, {"eval/loss": 0.5})
    'held-out      step 20   loss 0.5000'
    """
    return f"{'held-out':<{LABEL_WIDTH}}step {step}   {headline(metrics, 'eval/')}"


def closing_summary(
    *,
    steps: int,
    seconds: float,
    resumed_from: int | None,
    metrics: Mapping[str, float],
    eval_metrics: Mapping[str, float],
    output_dir: str | Path,
    export_dir: str | Path | None,
) -> str:
    """The lines a run ends with: steps, time, throughput, final metrics, where things are.

    >>> print(closing_summary(steps=60, seconds=75.2, resumed_from=None,
    ...     metrics={"loss": 0.41, "tokens_per_s": 2210.4}, eval_metrics={"eval/loss": 0.52},
    ...     output_dir="runs/tiny", export_dir="runs/tiny/hf"))
    done          60 steps in 1 min 15 s, 2210 tokens/s (last log window)
    train         loss 0.4100
    held-out      loss 0.5200
    outputs       runs/tiny/
                    metrics.jsonl    one JSON line per logged step (tensorboard/: TensorBoard)
                    checkpoints/     the same command resumes from the newest
                    hf/              the policy, for transformers and python -m safedpo_jax.evaluate
    """
    out = Path(output_dir)
    run = f"{steps} steps in {duration(seconds)}"
    if resumed_from is not None:
        run += f" (resumed from step {resumed_from})"
    if "tokens_per_s" in metrics:
        run += f", {metrics['tokens_per_s']:.0f} tokens/s (last log window)"
    rows = [("done", run)]
    if metrics:
        rows.append(("train", headline(metrics)))
    if eval_metrics:
        rows.append(("held-out", headline(eval_metrics, "eval/")))
    rows.append(("outputs", f"{out}/"))
    lines = [f"{label:<{LABEL_WIDTH}}{text}" for label, text in rows]
    files = [
        ("metrics.jsonl", "one JSON line per logged step (tensorboard/: TensorBoard)"),
        ("checkpoints/", "the same command resumes from the newest"),
    ]
    if export_dir is not None:
        export = Path(export_dir)
        name = export.relative_to(out) if export.is_relative_to(out) else export
        files.append(
            (f"{name}/", "the policy, for transformers and python -m safedpo_jax.evaluate")
        )
    lines += [f"{'':<{LABEL_WIDTH + 2}}{name:<17}{what}" for name, what in files]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``.

    >>> duration(42.4), duration(185), duration(7625)
    ('42 s', '3 min 05 s', '2 h 07 min')
    """
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
