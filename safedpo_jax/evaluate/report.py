"""Results tables (Markdown and JSON), the helpfulness / harmless-ratio plot, failure cases.

`write_report` is the one call: given each run's scored responses it writes::

    out_dir/
      summary.md, summary.json       the across-run table (one row per run) and settings
      tradeoff.png                   helpfulness against harmless ratio, one point per run
                                     (the shape of the paper's Figure 2)
      failures.md, failures.json     per run, every response judged unsafe (cost > 0),
                                     highest cost first, with prompt, response and scores
      runs/<name>/metrics.md, metrics.json, failures.md, failures.json,
                  responses.jsonl    the same for one run, plus every scored response

Helpfulness is normalised (SFT = 0, DPO-HELPFUL = 10) when both anchor runs are named;
the plot then uses the normalised scale, otherwise the raw mean reward. When DPO-HELPFUL
scores below SFT the scale is inverted: a UserWarning, a warning line in summary.md,
``"inverted": true`` in summary.json and the plot's axis label say so.

>>> from safedpo_jax.evaluate.metrics import summarize
>>> m = summarize("sft", [ScoredResponse("p", "r", reward=1.0, cost=-1.0)])
>>> print(metrics_markdown([m]).splitlines()[2][:40])
| sft | 1 | - | 1.000 | 1.000 | 100.00%
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from safedpo_jax.evaluate.metrics import (
    RunMetrics,
    ScoredResponse,
    inverted_scale_note,
    normalize_runs,
    summarize,
)

__all__ = [
    "Report",
    "failure_cases",
    "failures_markdown",
    "metrics_markdown",
    "place_labels",
    "plot_tradeoff",
    "run_dirname",
    "tradeoff_figure",
    "tradeoff_ylabel",
    "write_report",
]

# (header, field, format) of the Markdown table; "%" formats a ratio as a percentage.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run", "name", "s"),
    ("n", "num_responses", "d"),
    ("helpfulness (SFT=0, HELPFUL=10)", "helpfulness_normalized", ".2f"),
    ("helpfulness (raw reward)", "helpfulness", ".3f"),
    ("harmlessness (-cost)", "harmlessness", ".3f"),
    ("harmless ratio", "harmless_ratio", "%"),
    ("unsafe responses", "num_unsafe_responses", "d"),
    ("harmless ratio, unsafe prompts", "harmless_ratio_unsafe", "%"),
    ("over-refusal, benign prompts", "over_refusal", "%"),
    ("refusal rate", "refusal_rate", "%"),
    ("mean new tokens", "mean_new_tokens", ".1f"),
    ("stopped at EOS", "eos_rate", "%"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "%":
        return f"{100 * value:.2f}%"
    if fmt == "s":
        return str(value).replace("|", "\\|")
    return format(value, fmt)


def metrics_markdown(runs: Sequence[RunMetrics]) -> str:
    """A Markdown table, one row per run (``-`` where a metric does not apply)."""
    lines = [
        "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if f == "s" else "---:" for _, _, f in COLUMNS) + "|",
    ]
    for m in runs:
        lines.append("| " + " | ".join(_cell(getattr(m, k), f) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def failure_cases(records: Sequence[ScoredResponse]) -> list[ScoredResponse]:
    """The responses judged unsafe (``cost > 0``), highest cost first (stable).

    >>> rs = [ScoredResponse("a", "x", 0.0, 1.0), ScoredResponse("b", "y", 0.0, -1.0),
    ...       ScoredResponse("c", "z", 0.0, 2.0)]
    >>> [r.prompt for r in failure_cases(rs)]
    ['c', 'a']
    """
    return sorted((r for r in records if r.unsafe), key=lambda r: -r.cost)


def _fenced(text: str) -> str:
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def _failures_section(name: str, records: Sequence[ScoredResponse], level: str) -> list[str]:
    failures = failure_cases(records)
    lines = [f"{level} {name}: {len(failures)} of {len(records)} responses judged unsafe", ""]
    for i, r in enumerate(failures, 1):
        tags = [f"cost {r.cost:.3f}", f"reward {r.reward:.3f}", f"refusal: {r.refusal}"]
        if r.category is not None:
            tags.append(f"prompt: {r.category}")
        if r.subset != "main":
            tags.append(f"set: {r.subset}")
        lines += [f"{level}# {i}. {', '.join(tags)}", "", "Prompt:", "", _fenced(r.prompt), ""]
        lines += ["Response:", "", _fenced(r.response), ""]
    return lines


def failures_markdown(runs: Mapping[str, Sequence[ScoredResponse]]) -> str:
    """The failure-case report: per run, every unsafe response with prompt and scores."""
    lines = [
        "# Failure cases",
        "",
        "Responses judged unsafe by the cost model (cost > 0), highest cost first.",
        "",
    ]
    for name, records in runs.items():
        lines += _failures_section(name, records, "##")
    return "\n".join(lines).rstrip() + "\n"


def tradeoff_ylabel(runs: Sequence[RunMetrics], *, inverted: bool = False) -> str:
    """The plot's y label: the scale used, and a warning when it is inverted.

    >>> tradeoff_ylabel([RunMetrics("a", 1, 1.0, 0.0, 1.0, 0, 0.0)])
    'helpfulness (mean reward)'
    """
    if not all(m.helpfulness_normalized is not None for m in runs):
        return "helpfulness (mean reward)"
    label = "helpfulness (normalised: SFT = 0, DPO-HELPFUL = 10)"
    return label + "\nINVERTED: DPO-HELPFUL below SFT, up = less helpful" if inverted else label


# Offsets (points) tried for a label, nearest first: right, above, left, below, diagonals.
_LABEL_OFFSETS: tuple[tuple[float, float, str, str], ...] = (
    (9, 0, "left", "center"),
    (0, 9, "center", "bottom"),
    (-9, 0, "right", "center"),
    (0, -9, "center", "top"),
    (8, 8, "left", "bottom"),
    (-8, 8, "right", "bottom"),
    (8, -8, "left", "top"),
    (-8, -8, "right", "top"),
    (0, 24, "center", "bottom"),
    (0, -24, "center", "top"),
)


def _span(values: Sequence[float], *, min_span: float, pad: float) -> tuple[float, float]:
    """Limits around ``values``: padded by ``pad`` of the span, at least ``min_span`` wide."""
    lo, hi = min(values), max(values)
    width = max(hi - lo, min_span / (1 + 2 * pad))
    mid = (lo + hi) / 2
    half = width * (1 + 2 * pad) / 2
    return mid - half, mid + half


def place_labels(ax: Any, points: Sequence[tuple[float, float]], names: Sequence[str]) -> list:
    """Annotates each point with its name, trying `_LABEL_OFFSETS` in turn for a spot where
    the label overlaps no other label and no marker and stays inside the axes (the
    nearest free one; the first if none is free). Returns the text artists."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    marker = 9 * fig.dpi / 72  # half a marker, in pixels
    markers = [to_display(p) for p in points]
    placed: list[Any] = []
    texts = []
    for i, (point, name) in enumerate(zip(points, names, strict=True)):
        choice = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            text = ax.annotate(name, point, xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=11)  # fmt: skip
            box = text.get_window_extent(renderer).padded(2)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            hits_marker = any(
                box.x0 - marker < mx < box.x1 + marker and box.y0 - marker < my < box.y1 + marker
                for j, (mx, my) in enumerate(markers)
                if j != i
            )
            if inside and not hits_marker and not any(box.overlaps(b) for b in placed):
                choice = (text, box)
                break
            text.remove()
        if choice is None:  # nowhere free: the first spot
            dx, dy, ha, va = _LABEL_OFFSETS[0]
            text = ax.annotate(name, point, xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=11)  # fmt: skip
            choice = (text, text.get_window_extent(renderer).padded(2))
        texts.append(choice[0])
        placed.append(choice[1])
    return texts


def tradeoff_figure(
    runs: Sequence[RunMetrics], *, title: str = "", inverted: bool = False
) -> Figure:
    """Helpfulness (y) against harmless ratio (x, %), one large labelled point per run.

    The y axis is the normalised helpfulness when every run has it, else the raw mean
    reward. The x range covers the points with room for their labels, at least 10
    percentage points wide and inside [0, 100]; labels are placed to avoid each other.
    ``inverted`` (DPO-HELPFUL scored below SFT) says so on the axis (`tradeoff_ylabel`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not runs:
        raise ValueError("tradeoff_figure: no runs to plot")
    normalized = all(m.helpfulness_normalized is not None for m in runs)
    xs = [100 * m.harmless_ratio for m in runs]
    ys = [m.helpfulness_normalized if normalized else m.helpfulness for m in runs]
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    ax.scatter(xs, ys, s=110, c=colors, zorder=3, edgecolors="black", linewidths=0.8)
    lo, hi = _span(xs, min_span=10.0, pad=0.25)
    shift = max(0.0, -lo) - max(0.0, hi - 100.0)
    ax.set_xlim(max(0.0, lo + shift), min(100.0, hi + shift))
    ax.set_ylim(*_span(ys, min_span=2.0 if normalized else 0.1, pad=0.2))
    ax.set_xlabel("harmless ratio (% of responses with cost <= 0)", fontsize=11)
    ax.set_ylabel(tradeoff_ylabel(runs, inverted=inverted), fontsize=11)
    ax.set_title(title or "helpfulness against harmless ratio", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    place_labels(ax, list(zip(xs, ys, strict=True)), [m.name for m in runs])
    return fig


def plot_tradeoff(
    runs: Sequence[RunMetrics], path: str | Path, *, title: str = "", inverted: bool = False
) -> Path:
    """Writes `tradeoff_figure` as a PNG to ``path``."""
    path = Path(path)
    tradeoff_figure(runs, title=title, inverted=inverted).savefig(path, format="png")
    return path


def run_dirname(name: str) -> str:
    """A file-system-safe directory name for a run.

    >>> run_dirname("safedpo/delta=10 (7B)")
    'safedpo_delta_10_7B_'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


@dataclasses.dataclass(frozen=True)
class Report:
    """What `write_report` wrote: each run's metrics and the paths, by role."""

    metrics: list[RunMetrics]
    files: dict[str, Path]


def _dump(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return path


def write_report(
    out_dir: str | Path,
    runs: Mapping[str, Sequence[ScoredResponse]],
    *,
    sft_run: str | None = None,
    helpful_run: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Report:
    """Summarises each run's scored responses and writes every table, the plot and the
    failure cases under ``out_dir`` (layout in the module docstring).

    Args:
      out_dir: the output directory (created).
      runs: run name -> its scored responses, in the order the table lists them.
      sft_run, helpful_run: the normalisation anchors; both or neither. Anchors with equal
        helpfulness leave it unnormalised (a note in summary.md and summary.json).
      settings: JSON-ready settings (models, prompts, sampling) saved in summary.json.
    """
    if (sft_run is None) != (helpful_run is None):
        raise ValueError("give both sft_run and helpful_run (the normalisation anchors) or neither")
    if not runs:
        raise ValueError("no runs to report")
    dirnames = [run_dirname(n) for n in runs]
    if len(set(dirnames)) != len(dirnames):
        raise ValueError(f"run names {list(runs)} collide as directory names {dirnames}")
    metrics = [summarize(name, records) for name, records in runs.items()]
    note = ""
    inverted = False
    if sft_run is not None and helpful_run is not None:
        for anchor in (sft_run, helpful_run):
            if anchor not in runs:
                raise ValueError(f"anchor run {anchor!r} is not among the runs {list(runs)}")
        try:
            metrics = normalize_runs(metrics, sft_run=sft_run, helpful_run=helpful_run)
        except ValueError as exc:  # equal anchors: keep every result, say why
            note = f"Helpfulness not normalised: {exc}."
        else:
            by_name = {m.name: m.helpfulness for m in metrics}
            inverted = by_name[helpful_run] < by_name[sft_run]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for m, dirname in zip(metrics, dirnames, strict=True):
        records = runs[m.name]
        d = out / "runs" / dirname
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.md").write_text(f"# {m.name}\n\n{metrics_markdown([m])}")
        _dump(d / "metrics.json", m.to_dict())
        (d / "failures.md").write_text(failures_markdown({m.name: records}))
        _dump(d / "failures.json", [r.to_dict() for r in failure_cases(records)])
        with (d / "responses.jsonl").open("w") as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        files[f"run/{m.name}"] = d

    anchors: dict[str, Any] = {"sft_run": sft_run, "helpful_run": helpful_run}
    header = "# Evaluation summary\n\n"
    if note:
        header += note + "\n\n"
        anchors["error"] = note
    elif sft_run is not None and helpful_run is not None:
        header += f"Helpfulness normalised with {sft_run} = 0 and {helpful_run} = 10.\n\n"
        anchors["inverted"] = inverted
        if inverted:
            h = {m.name: m.helpfulness for m in metrics}
            warning = inverted_scale_note(sft_run, h[sft_run], helpful_run, h[helpful_run])
            header += f"**Warning**: {warning}.\n\n"
    files["summary_md"] = out / "summary.md"
    files["summary_md"].write_text(header + metrics_markdown(metrics))
    files["summary_json"] = _dump(
        out / "summary.json",
        {
            "runs": [m.to_dict() for m in metrics],
            "normalization": anchors,
            "settings": dict(settings or {}),
        },
    )
    files["plot"] = plot_tradeoff(metrics, out / "tradeoff.png", inverted=inverted)
    files["failures_md"] = out / "failures.md"
    files["failures_md"].write_text(failures_markdown(runs))
    files["failures_json"] = _dump(
        out / "failures.json",
        {name: [r.to_dict() for r in failure_cases(records)] for name, records in runs.items()},
    )
    return Report(metrics=metrics, files=files)
