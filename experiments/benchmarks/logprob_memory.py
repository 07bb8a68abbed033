"""Peak memory and time of the sequence log-probs: chunked against full logits.

For each vocabulary V and length T, one fresh subprocess per variant computes the value
and gradient (with respect to the hidden states and the unembedding) of summed response
log-probs of ``--rows`` sequences from float32 hidden states ``[rows, T, D]``:

- ``full``: ``losses.sequence_logprobs(hidden @ W)``, the ``[rows, T, V]`` float32 logits
  materialised (as with ``logprob_chunk_size = 0``);
- ``chunk<c>``: ``losses.chunked_sequence_logprobs(hidden, W, chunk_size=c)``, one
  rematerialised ``[rows, c, V]`` block at a time.

Reported per variant: the resident-set high-water mark of the calls after the warm-up
(``VmHWM`` reset after compilation; minus the resident set before the first call, so
inputs and the runtime are left out), XLA's compiled temporary-buffer size
(``memory_analysis().temp_size_in_bytes``, deterministic), and the median time of a
call. Ratios are full over chunked.

    PYTHONPATH=. python experiments/benchmarks/logprob_memory.py            # minutes
    PYTHONPATH=. python experiments/benchmarks/logprob_memory.py --smoke    # seconds

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocabs", default="32000,128256")
    p.add_argument("--lengths", default="512,1024,2048")
    p.add_argument("--rows", type=int, default=2, help="sequences (one pair = 2)")
    p.add_argument("--hidden", type=int, default=256, help="D")
    p.add_argument("--chunks", default="128,512", help="chunk sizes to compare with full")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # "V,T,variant"
    args = p.parse_args(argv)
    if args.smoke:
        args.vocabs, args.lengths, args.hidden, args.chunks = "4096", "256", 64, "64"
    return args


def child(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from safedpo_jax import losses

    v, t, variant = args.child.split(",")
    v, t, rows, d = int(v), int(t), args.rows, args.hidden
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((rows, t, d), np.float32))
    w = jnp.asarray(rng.standard_normal((d, v), np.float32) / np.sqrt(d))
    ids = jnp.asarray(rng.integers(0, v, (rows, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None, :] >= t // 4).repeat(rows, 0)

    if variant == "full":
        logps = lambda h, w: losses.sequence_logprobs(h @ w, ids, mask)  # noqa: E731
    else:
        c = int(variant.removeprefix("chunk"))
        logps = lambda h, w: losses.chunked_sequence_logprobs(  # noqa: E731
            h, w, ids, mask, chunk_size=c
        )
    fn = jax.jit(jax.value_and_grad(lambda h, w: logps(h, w).sum(), argnums=(0, 1)))
    compiled = fn.lower(hidden, w).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    rss_before = C.rss_mib()
    jax.block_until_ready(compiled(hidden, w))  # warm-up
    C.reset_peak_rss()
    times = [
        C.timed(lambda: jax.block_until_ready(compiled(hidden, w))) for _ in range(args.repeats)
    ]
    value = float(compiled(hidden, w)[0])
    C.emit(
        {
            "peak_rss_mib": C.peak_rss_mib(),
            "rss_before_mib": rss_before,
            "extra_rss_mib": C.peak_rss_mib() - rss_before,
            "xla_temp_mib": temp / 2**20,
            "time_s": C.median(times),
            "value": value,
        }
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    variants = ["full"] + [f"chunk{c}" for c in args.chunks.split(",")]
    results: dict[str, Any] = {}
    for v in (int(x) for x in args.vocabs.split(",")):
        for t in (int(x) for x in args.lengths.split(",")):
            key = f"V={v},T={t}"
            row: dict[str, Any] = {
                "full_logits_mib": 4 * args.rows * t * v / 2**20,
            }
            for variant in variants:
                cmd = [__file__, "--child", f"{v},{t},{variant}", "--rows", str(args.rows)]
                cmd += ["--hidden", str(args.hidden), "--repeats", str(args.repeats)]
                try:
                    row[variant] = C.run_child(cmd)
                except RuntimeError as e:  # e.g. out of memory: recorded, not fatal
                    row[variant] = {"error": str(e).splitlines()[-1][:300]}
            full = row["full"]
            values = [row[x]["value"] for x in variants if "value" in row[x]]
            if values:
                row["max_value_rel_diff"] = max(abs(x - values[0]) for x in values) / abs(values[0])
            for variant in variants[1:]:
                chunked = row[variant]
                if "error" in full or "error" in chunked:
                    continue
                row[f"{variant}_rss_ratio"] = full["extra_rss_mib"] / chunked["extra_rss_mib"]
                row[f"{variant}_temp_ratio"] = full["xla_temp_mib"] / chunked["xla_temp_mib"]
                row[f"{variant}_time_ratio"] = chunked["time_s"] / full["time_s"]
            results[key] = row
            print(f"{key}: " + json.dumps(row), flush=True)
    C.emit(
        {
            "rows": args.rows,
            "hidden": args.hidden,
            "results": results,
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
