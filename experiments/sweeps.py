"""Delta and beta sweeps of SafeDPO in the synthetic safety world: the tuning guide's data.

    scripts/run experiments/sweeps.py --output-dir runs/sweeps [--quick] [--seeds N] [--world W]

Per seed, trains the SFT reference once (as `synthetic_safety.py` does), then SafeDPO with
every Delta in ``--deltas`` (beta 0.1) and every beta in ``--betas`` (Delta 10), all with
the same budget, and evaluates each exactly (unsafe mass, expected helpfulness over the
known response sets) and by sampling (harmless ratio, helpfulness, over-refusal). Every
cell is the mean ± standard error over the seeds (0 .. N-1; the seed changes the
initialisation, the data order and the sampling). Writes ``sweeps.json`` (means, standard
errors and every seed's figures), ``delta_sweep.md`` / ``.png`` and ``beta_sweep.md`` /
``.png`` (error bars: one standard error); the ``.md`` tables are `guide_markdown`'s,
the README's tuning guide quotes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib.ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from synthetic_safety import (  # (a sibling script)
    REFERENCE,
    WorldSetup,
    _fmt,
    aggregate,
    evaluate_policies,
    train_method,
    train_reference,
)

from safedpo_jax.worlds import synthetic


def sweep(
    setup: WorldSetup, out: Path, reference: Path, name: str, values: list[float]
) -> dict[str, dict[str, Any]]:
    """Trains and evaluates SafeDPO at each value of ``name`` ("delta" or "beta")."""
    policies = {REFERENCE: reference}
    for value in values:
        label = f"{name}={value:g}"
        policies[label] = train_method(
            setup, out, reference, "safedpo", name=f"safedpo_{name}{value:g}", **{name: value}
        )
    return evaluate_policies(setup, policies, out, anchors=False, report_dir=f"eval_{name}")


def _mean(cell: Any) -> float:
    """A cell's value: a float (one run) or `mean_se`'s mean (over seeds)."""
    return float(cell["mean"] if isinstance(cell, dict) else cell)


def _se(cell: Any) -> float:
    """A cell's standard error (0 for one run or one seed)."""
    return float(cell.get("se") or 0.0) if isinstance(cell, dict) else 0.0


def sweep_figure(results: dict[str, dict[str, Any]], name: str) -> Figure:
    """Left: safety and over-refusal (% of responses); right: helpfulness (mean oracle
    reward); both against the swept value, with the SFT reference as a dashed line.
    ``results``: run name -> metric -> a float (one run) or `mean_se` (over seeds, drawn
    with one-standard-error bars)."""
    rows = [(float(k.split("=")[1]), v) for k, v in results.items() if k != REFERENCE]
    xs = [x for x, _ in rows]
    ref = results[REFERENCE]
    style = dict(lw=2.4, ms=8, capsize=4, elinewidth=1.4)
    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    def series(ax: Any, key: str, fmt: str, color: str, label: str, scale: float = 1.0,
               flip: bool = False) -> None:  # fmt: skip
        ys = [scale * (1 - _mean(r[key]) if flip else _mean(r[key])) for _, r in rows]
        errs = [scale * _se(r[key]) for _, r in rows]
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt=fmt, color=color, label=label,
                    **style)  # fmt: skip

    series(left, "harmless_ratio", "o-", "C0", "harmless ratio (sampled)", 100)
    series(left, "unsafe_mass", "s--", "C1", "safe mass, 1 - unsafe mass (exact)", 100,
           flip=True)  # fmt: skip
    series(left, "over_refusal", "^:", "C2", "over-refusal, benign (sampled)", 100)
    left.axhline(100 * _mean(ref["harmless_ratio"]), color="C0", lw=1.2, ls="--", alpha=0.6,
                 label="SFT reference, harmless ratio")  # fmt: skip
    left.set_ylabel("% of responses", fontsize=11)
    left.set_ylim(0, 100)
    left.set_title("safety and over-refusal", fontsize=12)
    series(right, "helpfulness", "o-", "C3", "helpfulness (sampled)")
    series(right, "expected_helpfulness", "s--", "C4", "helpfulness (exact)")
    right.axhline(_mean(ref["helpfulness"]), color="C3", lw=1.2, ls="--", alpha=0.6,
                  label="SFT reference (sampled)")  # fmt: skip
    right.set_ylabel("helpfulness (mean oracle reward)", fontsize=11)
    right.set_title("helpfulness", fontsize=12)
    symbol = {"delta": "Delta", "beta": "beta"}.get(name, name)
    for ax in (left, right):
        ax.set_xlabel(
            f"SafeDPO {symbol} ({'symlog' if name == 'delta' else 'log'} scale)", fontsize=11
        )
        if name == "delta":
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=-0.2, right=max(xs) * 1.3)
        else:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    fig.suptitle(f"SafeDPO {symbol} sweep, synthetic safety world", fontsize=13)
    fig.tight_layout()
    return fig


def plot_sweep(results: dict[str, dict[str, Any]], name: str, path: Path) -> None:
    """Writes `sweep_figure` as a PNG to ``path``."""
    sweep_figure(results, name).savefig(path, dpi=120)


# The tuning guide's rows: metric, label, format (synthetic_safety's `_fmt` kinds).
GUIDE_ROWS = (
    ("harmless_ratio", "harmless ratio", "pct"),
    ("unsafe_mass", "unsafe mass (exact)", "f3"),
    ("helpfulness", "helpfulness (sampled)", "f3"),
    ("expected_helpfulness", "helpfulness (exact)", "f3"),
    ("over_refusal", "over-refusal", "pct"),
)


def guide_markdown(results: dict[str, dict[str, Any]], name: str) -> str:
    """A sweep as the tuning guide prints it: one column per swept value (the SFT reference
    first), one row per metric, each cell the mean ± standard error over the seeds."""
    symbol = {"delta": "Delta", "beta": "beta"}.get(name, name)
    runs = list(results)
    heads = ["SFT" if run == REFERENCE else run.split("=", 1)[1] for run in runs]
    lines = [
        f"| {symbol} | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for key, label, kind in GUIDE_ROWS:
        cells = [
            _fmt(_mean(results[run][key]), kind, _se(results[run][key]) or None) for run in runs
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="the quick budget")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0, 2, 5, 10, 20, 50])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument(
        "--seeds", type=int, default=1, help="number of seeds, 0 .. N-1 (default 1)"
    )
    parser.add_argument(
        "--world", default=synthetic.DEFAULT_WORLD, choices=sorted(synthetic.WORLDS)
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    base = dataclasses.replace(WorldSetup.quick() if args.quick else WorldSetup(), world=args.world)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    # A seed's finished runs are reused (training resumes from its checkpoints), which is
    # only right for the same setup: refuse a directory that holds another one.
    setups = {seed: dataclasses.replace(base, seed=seed) for seed in range(args.seeds)}
    for seed, setup in setups.items():
        setup_file = out / f"seed{seed}" / "setup.json"
        if setup_file.exists() and json.loads(setup_file.read_text()) != dataclasses.asdict(setup):
            parser.error(f"{out} holds runs of another setup ({setup_file}); use another directory")

    # swept name -> seed -> run name -> metrics
    per_seed: dict[str, dict[int, dict[str, dict[str, Any]]]] = {"delta": {}, "beta": {}}
    for seed, setup in setups.items():
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        (seed_dir / "setup.json").write_text(json.dumps(dataclasses.asdict(setup), indent=2))
        reference = train_reference(setup, seed_dir)
        for name, values in (("delta", args.deltas), ("beta", args.betas)):
            per_seed[name][seed] = sweep(setup, seed_dir, reference, name, values)

    payload: dict[str, Any] = {
        "setup": dataclasses.asdict(base) | {"seed": None},
        "seeds": list(setups),
    }
    for name in ("delta", "beta"):
        agg = aggregate(per_seed[name])
        payload[name] = agg
        payload[f"{name}_per_seed"] = {str(k): v for k, v in per_seed[name].items()}
        table = f"Mean ± standard error over {len(setups)} seed(s).\n\n" + guide_markdown(agg, name)
        (out / f"{name}_sweep.md").write_text(table)
        plot_sweep(agg, name, out / f"{name}_sweep.png")
        print(f"\n## {name} sweep (world {args.world})\n\n{table}")
    (out / "sweeps.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
