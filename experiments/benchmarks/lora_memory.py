"""Peak memory and step time of a LoRA SafeDPO step against full fine-tuning, and 7B/13B estimates.

Measured (this CPU): one fresh subprocess per variant and round, rounds interleaved
(full, lora, full, lora, ...) so that a shared machine's load falls on both alike:

- ``full``: every weight trains (float32 master weights, AdamW moments) and the in-step
  reference is a second float32 copy of the model (`setup_step` with ``reference=``), as
  a full fine-tuning run from the same checkpoint holds it;
- ``lora<r>``: rank-r adapters on q/k/v/o/gate/up/down (float32), the frozen base in
  ``--base-dtype``; the reference is the same base with the adapters' initial values.

Per variant: the resident set after building the models (``weights``), after the optimizer
state exists (``setup``), the high-water mark of the steps after the warm-up (``peak``,
`_common.reset_peak_rss` after compilation), and the median step time; the ratios are
full over LoRA, per round, then the median.

Estimated (no measurement; the formulas and assumptions of ``experiments/paper/estimates.py``
with the paper's SafeDPO fields, remat, ``logprob_chunk_size`` 512, and gradient
accumulation down to one pair per device per microbatch): per-device memory of full
fine-tuning (float32 master weights, grads, AdamW, an in-step float32 reference, an
accumulator) against LoRA (the frozen base in bf16 or float32, only the adapters with
gradients, AdamW state and an accumulator, no reference copy), for Llama-2-7B (the
paper's Alpaca-7B) and Llama-2-13B on one 80 GB H100, one v5e host (8 x 16 GiB) and one
v5p host (4 x 95 GiB).

    PYTHONPATH=. python experiments/benchmarks/lora_memory.py            # minutes
    PYTHONPATH=. python experiments/benchmarks/lora_memory.py --smoke    # seconds

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import _common as C

sys.path.insert(0, str(C.ROOT / "experiments" / "paper"))
import estimates as E  # noqa: E402

# Weights dominate memory at this size and a step takes seconds on 2 cores: 67M parameters
# (embedding and head 12.3M each), 1 pair of 64 tokens.
BENCH_SIZE = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
}
SMOKE_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=16000)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--base-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per child")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # "full" or "lora"
    args = p.parse_args(argv)
    if args.smoke:
        args.vocab, args.length, args.rank, args.steps, args.rounds = 512, 16, 4, 1, 1
    return args


def child(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from safedpo_jax import models, sharding
    from safedpo_jax.models import lora
    from safedpo_jax.train import objectives as objectives_lib
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    C.reset_peak_rss()
    start = C.rss_mib()
    size = SMOKE_SIZE if args.smoke else BENCH_SIZE
    hf = C.llama_config(size, vocab_size=args.vocab)
    mesh = sharding.make_mesh(1, 1, 1)
    is_lora = args.child == "lora"
    base_dtype = jnp.bfloat16 if (is_lora and args.base_dtype == "bfloat16") else jnp.float32
    dc = models.DecoderConfig.from_hf(hf)

    def build(seed: int) -> Any:
        return models.init_model(
            dc, rngs=nnx.Rngs(seed), mesh=mesh, dtype=jnp.float32, param_dtype=base_dtype
        )

    policy = build(0)
    reference = None
    if is_lora:
        lora.add_lora(
            policy,
            lora.LoRAConfig(rank=args.rank, alpha=2.0 * args.rank),
            rngs=nnx.Rngs(1),
            mesh=mesh,
        )
    else:
        reference = build(1)  # full fine-tuning holds a second, frozen copy
    jax.block_until_ready(nnx.state(policy))
    weights = C.rss_mib()
    config = from_preset(
        "tiny",
        model_config=hf,
        pairs="safedpo",
        batch_size=args.pairs,
        max_length=args.length,
        warmup_ratio=0.0,
        learning_rate=1e-4,
    )
    setup = setup_step(config, policy, mesh, reference=reference, total_steps=100)
    del policy, reference
    jax.block_until_ready(setup.state)
    after_setup = C.rss_mib()
    fn = setup.compile()
    b, t = args.pairs, args.length
    rng = np.random.default_rng(0)
    loss_mask = np.zeros((b, 2, t), bool)
    loss_mask[:, :, t // 4 :] = True
    batch = objectives_lib.StepBatch(
        input_ids=jnp.asarray(rng.integers(3, args.vocab, (b, 2, t)).astype(np.int32)),
        attention_mask=jnp.ones((b, 2, t), jnp.int32),
        loss_mask=jnp.asarray(loss_mask),
        unsafe=jnp.asarray(rng.random((b, 2)) < 0.3),
        valid=jnp.ones((b,), bool),
        ref_logps=None,
    )
    state = setup.state

    def one() -> None:
        nonlocal state
        with jax.set_mesh(mesh):
            state, metrics = fn(state, setup.reference, batch)
        metrics["loss"].block_until_ready()

    compile_s = C.timed(one)
    C.reset_peak_rss()
    times = [C.timed(one) for _ in range(args.steps)]
    trainable = sum(x.size for x in jax.tree.leaves(setup.state.params))
    frozen = sum(x.size for x in jax.tree.leaves(setup.policy.rest))
    return {
        "variant": "full" if not is_lora else f"lora{args.rank}",
        "start_mib": round(start, 1),
        "weights_mib": round(weights, 1),
        "setup_mib": round(after_setup, 1),
        "peak_mib": round(C.peak_rss_mib(), 1),
        "step_s": round(C.median(times), 3),
        "compile_s": round(compile_s, 2),
        "trainable_params": int(trainable),
        "frozen_params": int(frozen),
    }


# ----------------------------------------------------------------------------- estimates
LORA_TARGET_DIMS = ("q", "k", "v", "o", "gate", "up", "down")
HOSTS = {
    # name: (chips, GiB per chip)
    "1x H100 80GB": (1, 80e9 / 2**30),
    "v5e host (8 x 16 GiB)": (8, 16.0),
    "v5p host (4 x 95 GiB)": (4, 95.0),
}


def adapter_params(shape: E.Shape, rank: int) -> int:
    """Adapter parameters of rank ``rank`` on q/k/v/o/gate/up/down of every layer."""
    d, q, kv, f = (
        shape.hidden,
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
        shape.intermediate,
    )
    per_layer = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)
    return shape.layers * rank * per_layer


def estimate(
    hf: dict[str, Any], chips: int, *, lora_rank: int | None, base_bytes: int
) -> dict[str, float]:
    """Per-device GiB of one SafeDPO step (paper fields) on ``chips`` devices (all FSDP)."""
    paper = json.loads((E.CONFIG_DIR / "alpaca7b_delta.json").read_text())["common"]
    fields = {
        **paper,
        "pairs": "safedpo",
        "mesh_fsdp": -1,
        "remat": True,
        "logprob_chunk_size": 512,
    }
    fields["micro_batches"] = fields["batch_size"] // chips  # one pair per device
    pod = E.Pod("x", E.ACCELERATORS["H100"], chips)
    full = E.train_estimate(hf, fields, pod, E.TRAIN_ROWS)
    shape = E.Shape.from_hf(hf)
    gib = 2**30
    activations = full["activations_gib"]
    if lora_rank is None:
        return {"states_gib": full["states_gib"], "total_gib": full["memory_gib"]}
    a = adapter_params(shape, lora_rank)
    states = shape.params * base_bytes + a * (4 + 4 + 8 + 4)  # base; adapters, grads, Adam, acc
    states_gib = states / chips / gib
    # gathered layers are in the compute dtype either way; activations are unchanged
    return {"states_gib": states_gib, "total_gib": states_gib + activations, "adapter_params": a}


def estimates_table() -> dict[str, Any]:
    archs = E.load_architectures()
    out: dict[str, Any] = {}
    for label, key in (
        ("7B", "PKU-Alignment/alpaca-7b-reproduced"),
        ("13B", "meta-llama/Llama-2-13b-hf"),
    ):
        hf = archs[key]
        for host, (chips, per_chip) in HOSTS.items():
            row = {}
            variants = {
                "full": dict(lora_rank=None, base_bytes=4),
                "lora16_fp32_base": dict(lora_rank=16, base_bytes=4),
                "lora16_bf16_base": dict(lora_rank=16, base_bytes=2),
            }
            for name, kw in variants.items():
                e = estimate(hf, chips, **kw)
                need = e["total_gib"] * 1.2  # 20% headroom, as estimates.py says
                row[name] = {
                    "per_device_gib": round(e["total_gib"], 1),
                    "fits": bool(need <= per_chip),
                }
            row["device_gib"] = round(per_chip, 1)
            out[f"{label} on {host}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    base = [sys.argv[0], "--vocab", str(args.vocab), "--pairs", str(args.pairs)]
    base += ["--length", str(args.length), "--rank", str(args.rank), "--steps", str(args.steps)]
    base += ["--base-dtype", args.base_dtype] + (["--smoke"] if args.smoke else [])
    rounds = []
    for r in range(args.rounds):
        order = ("full", "lora") if r % 2 == 0 else ("lora", "full")
        got = {v: C.run_child([*base, "--child", v]) for v in order}
        rounds.append(got)
        print(json.dumps({"round": r, **got}), flush=True)
    ratios = {
        key: round(C.median([g["full"][key] / g["lora"][key] for g in rounds]), 2)
        for key in ("peak_mib", "setup_mib", "step_s")
    }
    result = {
        "machine": C.machine(),
        "size": SMOKE_SIZE if args.smoke else BENCH_SIZE,
        "vocab": args.vocab,
        "pairs": args.pairs,
        "length": args.length,
        "rounds": rounds,
        "full_over_lora": ratios,
        "estimates": estimates_table(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
