"""Cached reference log-probs against the reference in the step: the step-time ratio.

Two compiled steps of the library (`_common.RandomBatchStep`) per size: one runs the frozen
reference's forward pass in the step (``reference="in_step"``), the other reads the
reference log-probs from the batch (``reference="cached"``, computed once before
training). Steps alternate round by round; the ratio is of median step times. By the
FLOP count the cached step does ``6 N`` of ``8 N`` per token (about 0.75) plus attention.
The one-off cost of caching, the reference's forward over one batch, is timed too.

    PYTHONPATH=. python experiments/benchmarks/reference_cache.py            # minutes
    PYTHONPATH=. python experiments/benchmarks/reference_cache.py --smoke    # seconds

The last line is one JSON object: per size ``ratio`` (cached / in-step step time).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import _common as C

VOCAB = 678  # the sample tokenizer's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny=32x64,small=16x64", help="size=pairs x tokens")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.rounds = "tiny=4x32", 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    results: dict[str, Any] = {}
    for item in args.sizes.split(","):
        size, shape = item.split("=")
        in_step = C.RandomBatchStep(shape, size, VOCAB)
        cached = C.RandomBatchStep(shape + ":cached", size, VOCAB)
        ref_fn = in_step.setup.reference_logps()
        ref_params, batch = in_step.setup.reference, in_step.batch
        forward = lambda: ref_fn(ref_params, batch).block_until_ready()  # noqa: B023
        forward()  # compile
        times: dict[str, list[float]] = {"in_step": [], "cached": [], "ref_forward": []}
        for _ in range(args.rounds):
            times["in_step"].append(C.timed(in_step))
            times["cached"].append(C.timed(cached))
            times["ref_forward"].append(C.timed(forward))
        med = {k: C.median(v) for k, v in times.items()}
        results[size] = {
            "shape": shape,
            "in_step_s": med["in_step"],
            "cached_s": med["cached"],
            "ratio": med["cached"] / med["in_step"],
            "speedup": med["in_step"] / med["cached"],
            "flop_ratio": cached.flops / in_step.flops,
            "ref_forward_per_batch_s": med["ref_forward"],
        }
        print(f"{size}: " + json.dumps(results[size]), flush=True)
    C.emit({"results": results, "machine": info})


if __name__ == "__main__":
    main()
