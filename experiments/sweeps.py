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

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from synthetic_safety import (  # noqa: E402  (a sibling script)
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


def plot_sweep(results: dict[str, dict[str, Any]], name: str, path: Path) -> None:
    """Harmless ratio / unsafe mass and helpfulness against the swept value."""
    rows = [(float(k.split("=")[1]), v) for k, v in results.items() if k != REFERENCE]
    xs = [x for x, _ in rows]
    ref = results[REFERENCE]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["harmless_ratio"] for _, r in rows], "o-", label="harmless ratio (sampled)")
    left.plot(xs, [1 - r["unsafe_mass"] for _, r in rows], "s--", label="1 - unsafe mass (exact)")
    left.axhline(ref["harmless_ratio"], color="gray", lw=0.8, label="SFT reference (sampled)")
    left.set_ylabel("harmlessness")
    right.plot(xs, [r["helpfulness"] for _, r in rows], "o-", label="helpfulness (sampled)")
    right.plot(xs, [r["expected_helpfulness"] for _, r in rows], "s--", label="helpfulness (exact)")
    right.plot(xs, [r["over_refusal"] for _, r in rows], "^:", label="over-refusal (sampled)")
    right.axhline(ref["helpfulness"], color="gray", lw=0.8, label="SFT reference (sampled)")
    for ax in (left, right):
        ax.set_xlabel(f"SafeDPO {name}")
        if name == "delta":
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=-0.2, right=max(xs) * 1.3)
        else:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SafeDPO {name} sweep, synthetic safety world")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
