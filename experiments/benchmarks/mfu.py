"""Model FLOPs utilisation of the DPO train step: achieved FLOP/s over the matmul peak.

The step is the library's (`safedpo_jax.train.setup.setup_step` + its compiled step,
``pairs="helpful"``, AdamW, clipping), on the 25M-parameter Llama of `_common.SIZES`
("small", hidden 512, 8 layers, the sample tokenizer's 678-token vocabulary) in float32,
fed random token ids with no padding (every position is real work). FLOPs are counted
analytically (`_common.train_flops`: ``6 N`` per token for the policy's forward and
backward over chosen and rejected, ``2 N`` per token for the in-step reference forward,
plus attention's matmuls; norms, softmax, log-softmax and the optimizer not counted).

The peak is dense float32 matmul throughput through XLA (2048^3) measured in the same
run, interleaved with the steps: every round times the peak, then one step of each
configuration; MFU = (FLOPs / median step time) / median peak. Beside it, the same ratio
by process CPU time (``mfu_cpu_time``: FLOPs over CPU seconds per core, against the peak
measured the same way), which stays put when other processes share the cores.

    PYTHONPATH=. python experiments/benchmarks/mfu.py            # a few minutes
    PYTHONPATH=. python experiments/benchmarks/mfu.py --smoke    # seconds

The last line is one JSON object: ``mfu`` (the best configuration), ``peak_gflops``, and
per configuration the step time, achieved GFLOP/s and MFU.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import _common as C

VOCAB = 678  # the sample tokenizer's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument(
        "--configs",
        default="16x64,8x128,4x256,16x128",
        help="pairs x tokens per step; a suffix :remat, :chunk<N> or :cached changes it",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.configs, args.rounds = "tiny", "2x16:remat", 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    steps = [C.RandomBatchStep(spec, args.size, VOCAB) for spec in args.configs.split(",")]
    peaks: list[tuple[float, float]] = []
    for r in range(args.rounds):
        peaks.append(C.matmul_peak_gflops())
        for s in steps:
            s.times.append(C.timed_cpu(s))
        print(
            f"round {r}: peak {peaks[-1][0]:.0f} GFLOP/s, steps "
            + ", ".join(f"{s.spec} {s.times[-1][0]:.3f}s" for s in steps),
            flush=True,
        )
    peak = C.median([w for w, _ in peaks])
    peak_cpu = C.median([c for _, c in peaks])
    cores = os.cpu_count()
    configs: dict[str, Any] = {}
    for s in steps:
        t = C.median([w for w, _ in s.times])
        t_cpu = C.median([c for _, c in s.times]) / cores
        configs[s.spec] = {
            "pairs": s.b,
            "length": s.t,
            "step_s": t,
            "step_cpu_s_per_core": t_cpu,
            "compile_s": s.compile_s,
            "model_gflop": s.flops / 1e9,
            "achieved_gflops": s.flops / t / 1e9,
            "mfu": s.flops / t / 1e9 / peak,
            "mfu_cpu_time": s.flops / t_cpu / 1e9 / peak_cpu,
            "tokens_per_s": 2 * s.b * s.t / t,
        }
    best = max(configs, key=lambda k: configs[k]["mfu"])
    C.emit(
        {
            "mfu": configs[best]["mfu"],
            "best_config": best,
            "peak_gflops": peak,
            "peak_gflops_range": [min(w for w, _ in peaks), max(w for w, _ in peaks)],
            "peak_gflops_cpu_time": peak_cpu,
            "mfu_cpu_time": configs[best]["mfu_cpu_time"],
            "params": C.matmul_params(steps[0].hf) + VOCAB * steps[0].hf["hidden_size"],
            "matmul_params": C.matmul_params(steps[0].hf),
            "configs": configs,
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
