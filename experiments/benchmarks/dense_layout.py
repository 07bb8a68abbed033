"""Why the models' projections are 2-D matmuls: a SwiGLU MLP's forward and backward, timed
with ``btd,df->btf`` einsums (the former layout) and with the batch and time axes
flattened into rows first (`safedpo_jax.models.decoder._dense`).

On XLA's CPU backend the weight gradient of an einsum over ``[b, t, d]`` contracts two
axes, and XLA inserts transposing copies of the activations before that matmul; over
flattened rows it contracts one and runs as a plain matmul. Rounds alternate the two
layouts and the 2048^3 matmul peak; figures are medians and fractions of the peak.

    PYTHONPATH=. python experiments/benchmarks/dense_layout.py            # a minute
    PYTHONPATH=. python experiments/benchmarks/dense_layout.py --smoke    # seconds

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import _common as C


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="32,64,512,1536", help="b, t, d, f (the 25M model)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.rounds = "4,16,32,64", 2

    import jax
    import jax.numpy as jnp

    from safedpo_jax.models.decoder import _dense

    b, t, d, f = (int(x) for x in args.shape.split(","))
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (b, t, d), jnp.float32)
    w = {
        "gate": jax.random.normal(keys[1], (d, f)) / d**0.5,
        "up": jax.random.normal(keys[2], (d, f)) / d**0.5,
        "down": jax.random.normal(keys[3], (f, d)) / f**0.5,
    }

    def einsum_mlp(w, x):
        gate = jnp.einsum("btd,df->btf", x, w["gate"])
        up = jnp.einsum("btd,df->btf", x, w["up"])
        return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w["down"])

    def rows_mlp(w, x):
        return _dense(jax.nn.silu(_dense(x, w["gate"])) * _dense(x, w["up"]), w["down"])

    variants = {
        name: jax.jit(jax.value_and_grad(lambda w, x, fn=fn: jnp.sum(fn(w, x) ** 2)))
        for name, fn in (("einsum_btd", einsum_mlp), ("rows_2d", rows_mlp))
    }
    values = {k: fn(w, x) for k, fn in variants.items()}
    grads_equal = all(
        bool(jnp.allclose(a, c, rtol=1e-4, atol=1e-4))
        for a, c in zip(
            jax.tree.leaves(values["einsum_btd"]), jax.tree.leaves(values["rows_2d"]), strict=True
        )
    )
    flops = 6 * b * t * 3 * d * f
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(C.matmul_peak_gflops())
        for name, fn in variants.items():
            times[name].append(C.timed_cpu(lambda fn=fn: jax.block_until_ready(fn(w, x))))
    peak = C.median([p for p, _ in peaks])
    result = {"shape": {"b": b, "t": t, "d": d, "f": f}, "peak_gflops": peak}
    for name, runs in times.items():
        s = C.median([wall for wall, _ in runs])
        gflops = flops / s / 1e9
        result[name] = {"s": s, "gflops": gflops, "fraction_of_peak": gflops / peak}
    result["speedup"] = result["einsum_btd"]["s"] / result["rows_2d"]["s"]
    result["grads_equal"] = grads_equal
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    C.emit(result | {"machine": info})


if __name__ == "__main__":
    main()
