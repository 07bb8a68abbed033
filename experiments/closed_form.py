"""SafeDPO and the safety methods against their closed-form optima in a tabular world.

Trains a tabular softmax policy on the population loss of SafeDPO (several margins), of
the DPO-HELPFUL, DPO-HARMLESS and DPO-SAFEBETTER pair constructions, of SACPO (stage 2 by
DPO or KTO, each beta2), P-SACPO (each merge weight q) and BFPO, at a short and a long
budget, and prints unsafe mass, total variation to the closed-form safe optimum
pi* = pi_ref exp(r / beta) / Z on safe responses, TV to each method's own closed form
(where it has one) and expected reward. About two minutes on a CPU.

    scripts/run experiments/closed_form.py [--seed 0] [--beta 0.5] [--json out.json]
"""

import argparse
import json
import math

from safedpo_jax.worlds import closed_form as cf

COLUMNS = (
    "unsafe_mass",
    "tv_to_safe_optimum",
    "tv_to_own_optimum",
    "tv_to_unconstrained_optimum",
    "expected_reward",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--responses", type=int, default=6)
    parser.add_argument("--unsafe", type=int, default=2, help="unsafe responses per prompt")
    parser.add_argument(
        "--beta", type=float, default=0.5, help="SafeDPO's, SACPO stage 1's, BFPO's"
    )
    parser.add_argument("--beta2", type=float, nargs="+", default=[0.1, 0.05, 0.025, 0.01])
    parser.add_argument("--q", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--merge-beta2", type=float, default=0.01)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.0, 2.0, 10.0, 50.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 3000, 20000])
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--json", help="also write the tables to this file")
    args = parser.parse_args()

    world = cf.make_world(
        args.seed,
        n_prompts=args.prompts,
        n_responses=args.responses,
        n_unsafe=args.unsafe,
        beta=args.beta,
    )
    tables = {}
    for steps in args.steps:
        rows = cf.compare(world, args.deltas, steps=steps, learning_rate=args.learning_rate)
        rows |= cf.compare_methods(
            world,
            args.beta2,
            args.q,
            merge_beta2=args.merge_beta2,
            steps=steps,
            learning_rate=args.learning_rate,
        )
        tables[steps] = rows
        print(f"\n## {steps} Adam steps (lr {args.learning_rate}, beta {args.beta})\n")
        print("| method | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        for name, m in rows.items():
            print(f"| {name} | " + " | ".join(_fmt(m[c]) for c in COLUMNS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in tables.items()}, f, indent=2)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2e}"


if __name__ == "__main__":
    main()
