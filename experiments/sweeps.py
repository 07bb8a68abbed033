"""Delta and beta sweeps of SafeDPO in the synthetic safety world: the tuning guide's data.

    scripts/run experiments/sweeps.py --output-dir runs/sweeps [--quick]

Trains the SFT reference once (as `synthetic_safety.py` does), then SafeDPO with every
Delta in ``--deltas`` (beta 0.1) and every beta in ``--betas`` (Delta 10), all with the
same budget, and evaluates each exactly (unsafe mass, expected helpfulness over the known
response sets) and by sampling (harmless ratio, helpfulness, over-refusal). Writes
``sweeps.json``, ``delta_sweep.md`` / ``.png`` and ``beta_sweep.md`` / ``.png``.
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
    evaluate_policies,
    results_markdown,
    train_method,
    train_reference,
)


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


def sweep_figure(results: dict[str, dict[str, Any]], name: str) -> Figure:
    """Left: safety and over-refusal (% of responses); right: helpfulness (mean oracle
    reward); both against the swept value, with the SFT reference as a dashed line."""
    rows = [(float(k.split("=")[1]), v) for k, v in results.items() if k != REFERENCE]
    xs = [x for x, _ in rows]
    ref = results[REFERENCE]
    style = dict(lw=2.4, ms=8)
    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    pct = lambda key: [100 * r[key] for _, r in rows]  # noqa: E731
    left.plot(xs, pct("harmless_ratio"), "o-", color="C0", label="harmless ratio (sampled)",
              **style)  # fmt: skip
    left.plot(xs, [100 * (1 - r["unsafe_mass"]) for _, r in rows], "s--", color="C1",
              label="safe mass, 1 - unsafe mass (exact)", **style)  # fmt: skip
    left.plot(xs, pct("over_refusal"), "^:", color="C2", label="over-refusal, benign (sampled)",
              **style)  # fmt: skip
    left.axhline(100 * ref["harmless_ratio"], color="C0", lw=1.2, ls="--", alpha=0.6,
                 label="SFT reference, harmless ratio")  # fmt: skip
    left.set_ylabel("% of responses", fontsize=11)
    left.set_ylim(0, 100)
    left.set_title("safety and over-refusal", fontsize=12)
    right.plot(xs, [r["helpfulness"] for _, r in rows], "o-", color="C3",
               label="helpfulness (sampled)", **style)  # fmt: skip
    right.plot(xs, [r["expected_helpfulness"] for _, r in rows], "s--", color="C4",
               label="helpfulness (exact)", **style)  # fmt: skip
    right.axhline(ref["helpfulness"], color="C3", lw=1.2, ls="--", alpha=0.6,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0, 2, 5, 10, 20, 50])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup = dataclasses.replace(WorldSetup.quick() if args.quick else WorldSetup(), seed=args.seed)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    setup_file = out / "setup.json"
    if setup_file.exists() and json.loads(setup_file.read_text()) != dataclasses.asdict(setup):
        parser.error(f"{out} holds runs of another setup ({setup_file}); use another directory")
    setup_file.write_text(json.dumps(dataclasses.asdict(setup), indent=2))

    reference = train_reference(setup, out)
    payload: dict[str, Any] = {"setup": dataclasses.asdict(setup)}
    for name, values in (("delta", args.deltas), ("beta", args.betas)):
        results = sweep(setup, out, reference, name, values)
        payload[name] = results
        table = results_markdown(results)
        (out / f"{name}_sweep.md").write_text(table)
        plot_sweep(results, name, out / f"{name}_sweep.png")
        print(f"\n## {name} sweep\n\n{table}")
    (out / "sweeps.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
