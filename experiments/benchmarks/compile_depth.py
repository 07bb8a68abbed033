"""Compile time against depth: the layer scan against the unrolled loop.

Part 1 (abstract, nothing allocated): the library's DPO train step (`make_step` with the
preference objective, AdamW, the reference in the step, rematerialised blocks) for a
paper-scale architecture (``experiments/paper/architectures.json``) at several depths,
lowered and compiled on a mesh of 8 fake CPU devices (``fsdp=8``) from
`jax.ShapeDtypeStruct` inputs carrying their shardings, each in a fresh process. Reported
per depth and layout: lowering and compilation seconds, by wall clock and by process CPU
time (``*_cpu_s``: what this process got of the shared cores, the figure that contention
distorts least), and the size of the optimised HLO text. The scanned
and unrolled layouts alternate within a depth, so load drifts hit both alike.

Part 2 (concrete, one device): the step time of a small model (``_common.SIZES``) both
ways, the two steps alternating round by round; the ratio is of medians.

    PYTHONPATH=. python experiments/benchmarks/compile_depth.py           # minutes
    PYTHONPATH=. python experiments/benchmarks/compile_depth.py --smoke   # seconds

The last line is one JSON object: ``compile`` (per architecture and depth, per layout)
and ``step`` (``unrolled_over_scanned``: the unrolled step time over the scanned one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

if "--child-step" not in sys.argv:  # the abstract part: 8 fake devices, set before jax loads
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import _common as C

ARCHS = C.ROOT / "experiments" / "paper" / "architectures.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="PKU-Alignment/alpaca-7b-reproduced")
    p.add_argument("--depths", default="4,8,16,32")
    p.add_argument("--unrolled-max-depth", type=int, default=32)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--step-size", default="small")
    p.add_argument("--step-shape", default="4x128")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # arch:depth:layout, one measurement
    p.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.depths, args.tokens, args.pairs = "1", 32, 8
        args.step_size, args.step_shape, args.rounds = "tiny", "2x32", 1
    return args


def abstract_compile(hf: dict[str, Any], *, scan: bool, pairs: int, tokens: int) -> dict[str, Any]:
    """Lowering and compilation seconds of the DPO step for ``hf``, from abstract inputs."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from safedpo_jax import models, sharding
    from safedpo_jax.models.options import Model
    from safedpo_jax.train import step as steps
    from safedpo_jax.train.objectives import StepBatch
    from safedpo_jax.train.objectives.preference import PreferenceObjective

    config = models.DecoderConfig.from_hf(hf)
    mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
    abstract = nnx.eval_shape(
        lambda: models.CausalLM(config, rngs=nnx.Rngs(0), remat=True, scan_layers=scan)
    )
    policy = Model.split(abstract)
    shardings = sharding.state_shardings(policy.params, mesh)

    def sds(x: Any, s: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    params = jax.tree.map(sds, policy.params, shardings)
    schedule = optax.constant_schedule(1e-6)
    optimizer = optax.adamw(schedule)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_state = optax.tree_utils.tree_map_params(
        optimizer,
        lambda a, s: sds(a, s),
        opt_abstract,
        shardings,
        transform_non_params=lambda a: sds(a, replicated),
    )
    state = steps.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params,
        opt_state=opt_state,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
    )
    reference = policy.with_params(params)
    b2t = sharding.batch_sharding(mesh, 3)
    b2 = sharding.batch_sharding(mesh, 2)
    shape = (pairs, 2, tokens)
    batch = StepBatch(
        input_ids=jax.ShapeDtypeStruct(shape, jnp.int32, sharding=b2t),
        attention_mask=jax.ShapeDtypeStruct(shape, jnp.int32, sharding=b2t),
        loss_mask=jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=b2t),
        unsafe=jax.ShapeDtypeStruct((pairs, 2), jnp.bool_, sharding=b2),
        valid=jax.ShapeDtypeStruct((pairs,), jnp.bool_, sharding=sharding.batch_sharding(mesh, 1)),
    )
    step = steps.make_step(PreferenceObjective(), policy, optimizer, schedule)
    fn = jax.jit(step, donate_argnums=(0,))
    with jax.set_mesh(mesh):
        lowered: list[Any] = []
        lowering = C.timed_cpu(lambda: lowered.append(fn.lower(state, reference, batch)))
        compiled: list[Any] = []
        compiling = C.timed_cpu(lambda: compiled.append(lowered[0].compile()))
    return {
        "lowering_s": round(lowering[0], 2),
        "compile_s": round(compiling[0], 2),
        "total_s": round(lowering[0] + compiling[0], 2),
        "lowering_cpu_s": round(lowering[1], 2),
        "compile_cpu_s": round(compiling[1], 2),
        "total_cpu_s": round(lowering[1] + compiling[1], 2),
        "hlo_chars": len(compiled[0].as_text()),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def child(args: argparse.Namespace, spec: str) -> None:
    """One measurement in this (fresh) process: ``arch:depth:scan|unrolled``."""
    arch, depth, layout = spec.rsplit(":", 2)
    archs = json.loads(ARCHS.read_text())
    hf = {**archs[arch], "num_hidden_layers": int(depth)} if arch in archs else None
    if hf is None:  # a benchmark size (the smoke run)
        hf = C.llama_config(arch, vocab_size=678, num_hidden_layers=int(depth))
    C.emit(abstract_compile(hf, scan=layout == "scan", pairs=args.pairs, tokens=args.tokens))


def step_times(args: argparse.Namespace) -> dict[str, Any]:
    """Median step seconds of the small model, scanned and unrolled, alternating rounds."""
    steps = {
        "scan": C.RandomBatchStep(args.step_shape, args.step_size, 678),
        "unrolled": C.RandomBatchStep(args.step_shape + ":unrolled", args.step_size, 678),
    }
    times: dict[str, list[float]] = {"scan": [], "unrolled": []}
    for _ in range(args.rounds):
        for layout, bench in steps.items():
            times[layout].append(C.timed(bench))
    med = {k: C.median(v) for k, v in times.items()}
    return {
        "size": args.step_size,
        "shape": args.step_shape,
        "scan_s": med["scan"],
        "unrolled_s": med["unrolled"],
        "unrolled_over_scanned": med["unrolled"] / med["scan"],
        "compile_scan_s": steps["scan"].compile_s,
        "compile_unrolled_s": steps["unrolled"].compile_s,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args, args.child)
        return
    if args.child_step:
        C.emit(step_times(args))
        return
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    archs = ["tiny"] if args.smoke else args.archs.split(",")
    compile_results: dict[str, Any] = {}
    for arch in archs:
        for depth in (int(d) for d in args.depths.split(",")):
            row = {}
            for layout in ("scan", "unrolled"):
                if layout == "unrolled" and depth > args.unrolled_max_depth:
                    continue
                extra = ["--smoke"] if args.smoke else []
                extra += ["--pairs", str(args.pairs), "--tokens", str(args.tokens)]
                row[layout] = C.run_child([__file__, *extra, "--child", f"{arch}:{depth}:{layout}"])
            compile_results[f"{arch}:{depth}"] = row
            print(f"{arch} depth {depth}: " + json.dumps(row), flush=True)
    os.environ.pop("XLA_FLAGS", None)
    extra = ["--smoke"] if args.smoke else []
    extra += ["--step-size", args.step_size, "--step-shape", args.step_shape]
    step = C.run_child([__file__, *extra, "--rounds", str(args.rounds), "--child-step"])
    print("step: " + json.dumps(step), flush=True)
    C.emit({"compile": compile_results, "step": step, "machine": info})


if __name__ == "__main__":
    main()
