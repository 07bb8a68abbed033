"""Every plot renders from fixed data, readable: labels apart, axes labelled with units,
sane ranges, large markers and thick lines."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

from safedpo_jax.evaluate.metrics import RunMetrics
from safedpo_jax.evaluate.report import plot_tradeoff, tradeoff_figure

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"

# The README's comparison (harmless ratio, normalised helpfulness): SafeDPO and
# DPO-HARMLESS are 3 points and 0.25 apart, the two a reader compares.
README_POINTS = {
    "SFT (reference)": (0.702, 0.0),
    "SafeDPO": (0.931, -3.01),
    "DPO-HELPFUL": (0.581, 10.0),
    "DPO-HARMLESS": (0.900, -2.76),
    "DPO-SAFEBETTER": (0.715, 6.94),
}


def _run(name: str, ratio: float, normalized: float | None, raw: float = 0.4) -> RunMetrics:
    return RunMetrics(
        name=name,
        num_responses=480,
        helpfulness=raw,
        harmlessness=0.0,
        harmless_ratio=ratio,
        num_unsafe_responses=0,
        refusal_rate=0.0,
        helpfulness_normalized=normalized,
    )


def _label_boxes(fig):
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    return ax, renderer, {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}


def test_tradeoff_labels_avoid_each_other_and_the_markers(tmp_path):
    runs = [_run(n, r, h) for n, (r, h) in README_POINTS.items()]
    fig = tradeoff_figure(runs)
    ax, renderer, boxes = _label_boxes(fig)
    assert set(boxes) == set(README_POINTS)
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), (a, b)
    frame = ax.get_window_extent(renderer)
    for name, box in boxes.items():
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), name
        for other, (r, h) in README_POINTS.items():
            if other != name:
                x, y = ax.transData.transform((100 * r, h))
                assert not box.contains(x, y), (name, other)
    assert "%" in ax.get_xlabel() and "DPO-HELPFUL = 10" in ax.get_ylabel()
    (points,) = ax.collections
    assert min(points.get_sizes()) >= 100  # large markers
    assert plot_tradeoff(runs, tmp_path / "t.png").read_bytes().startswith(PNG)


def test_tradeoff_label_does_not_cover_a_neighbouring_marker():
    # b sits just right of a, where a's first-choice label would go
    runs = [_run("model-a", 0.50, 0.0), _run("b", 0.52, 0.0), _run("c", 0.70, 5.0)]
    fig = tradeoff_figure(runs)
    ax, _, boxes = _label_boxes(fig)
    radius = 6 * fig.dpi / 72  # a marker of size 110 has a radius of about 5.2 points
    for run in runs:
        x, y = ax.transData.transform((100 * run.harmless_ratio, run.helpfulness_normalized))
        for name, box in boxes.items():
            if name != run.name:
                assert not box.expanded(1, 1).padded(radius).contains(x, y), (name, run.name)


def test_tradeoff_range_of_near_equal_models_stays_within_0_and_100_percent():
    runs = [_run("a", 0.990, None, raw=0.31), _run("b", 0.992, None, raw=0.395)]
    ax = tradeoff_figure(runs).axes[0]
    lo, hi = ax.get_xlim()
    assert lo >= 0.0 and hi <= 100.0 and hi - lo >= 10.0
    assert lo <= 99.0 and hi >= 99.2
    assert ax.get_ylabel() == "helpfulness (mean reward)"
    ylo, yhi = ax.get_ylim()
    assert ylo < 0.31 and yhi > 0.395
    low = tradeoff_figure([_run("a", 0.0, None), _run("b", 0.01, None)]).axes[0]
    assert low.get_xlim()[0] == 0.0 and low.get_xlim()[1] >= 10.0


def test_tradeoff_of_no_runs_is_an_error():
    with pytest.raises(ValueError, match="no runs"):
        tradeoff_figure([])


@pytest.fixture
def sweeps_module():
    sys.path.insert(0, str(ROOT / "experiments"))  # sweeps.py imports its sibling
    try:
        spec = importlib.util.spec_from_file_location("sweeps", ROOT / "experiments" / "sweeps.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sweeps"] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def _sweep_results(name: str, values: list[float]) -> dict:
    row = lambda i: {  # noqa: E731
        "harmless_ratio": 0.91 + 0.005 * i,
        "unsafe_mass": 0.05 / (i + 1),
        "over_refusal": 0.15 + 0.02 * i,
        "helpfulness": 0.40 - 0.02 * i,
        "expected_helpfulness": 0.47 - 0.03 * i,
    }
    ref = {"harmless_ratio": 0.70, "helpfulness": 0.395, "unsafe_mass": 0.27, "over_refusal": 0.3}
    return {"SFT (reference)": ref, **{f"{name}={v:g}": row(i) for i, v in enumerate(values)}}


@pytest.mark.parametrize(
    ("name", "values"), [("delta", [0, 2, 5, 10, 20, 50]), ("beta", [0.02, 0.1, 0.5])]
)
def test_sweep_panels_are_labelled_with_units_and_drawn_thick(
    tmp_path, sweeps_module, name, values
):
    fig = sweeps_module.sweep_figure(_sweep_results(name, values), name)
    left, right = fig.axes
    for ax in (left, right):
        assert ax.get_xlabel().startswith("SafeDPO") and "scale" in ax.get_xlabel()
        assert ax.get_ylabel(), "every axis is labelled"
        data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == len(values)]
        assert data_lines and all(line.get_linewidth() >= 2 for line in data_lines)
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{v:g}" for v in values]
    assert left.get_ylabel() == "% of responses" and left.get_ylim() == (0.0, 100.0)
    assert "reward" in right.get_ylabel()
    # the plotted values are the results' (percent on the left)
    harmless = left.get_lines()[0].get_ydata()
    assert harmless[0] == pytest.approx(91.0)
    path = tmp_path / f"{name}.png"
    sweeps_module.plot_sweep(_sweep_results(name, values), name, path)
    assert path.read_bytes().startswith(PNG)


def test_sweep_over_seeds_draws_one_standard_error_bars(sweeps_module):
    """Aggregated cells (`mean_se`) plot their means with bars of +- one standard error; a
    bar of the wrong width (two SE, the sd) or centred off the mean fails."""
    values = [0, 2, 10]
    results = {
        run: {k: {"mean": v, "se": 0.01, "n": 3} for k, v in row.items()}
        for run, row in _sweep_results("delta", values).items()
    }
    left, right = sweeps_module.sweep_figure(results, "delta").axes
    harmless_bars = left.containers[0]  # the first series: harmless ratio, in percent
    line, caps, (bars,) = harmless_bars.lines
    assert list(line.get_ydata()) == pytest.approx([91.0, 91.5, 92.0])
    for (lo, hi), mean in zip(
        [seg[:, 1] for seg in bars.get_segments()], [91.0, 91.5, 92.0], strict=True
    ):
        assert (lo, hi) == pytest.approx((mean - 1.0, mean + 1.0))
    helpful = right.containers[0].lines[0]
    assert list(helpful.get_ydata()) == pytest.approx([0.40, 0.38, 0.36])
