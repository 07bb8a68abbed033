"""MFU of the DPO train step for a 1B-parameter Llama-shaped model on one GPU (H100 / H200).

The model: hidden 2048, 16 layers, 32 query and 8 key/value heads of width 64, SwiGLU
width 8192, a 128256-token vocabulary with tied embeddings (Llama 3.2 1B's shape), random
weights: 1.236B parameters, all of them matmul weights (the tied head counts once).
Compute in bf16 over float32 master parameters (``dtype="bfloat16"``,
``param_dtype="float32"``; AdamW moments float32), the frozen reference stored in bf16;
cuDNN flash attention (``attention_impl="cudnn"``); ``precision=None``: the models'
default ``"highest"`` pins float32 matmuls to full float32, which a bf16 run does not
want (`gpu_checks.py` times what it costs); no rematerialisation by default. The step is
the library's (`setup_step`, DPO "helpful" pairs, reference in the step, global-norm
clipping, AdamW) on random ids with no padding; the log-probs chunk automatically
(4 rows x 2048 x 128256 float32 logits take 4 GiB: 16 chunks of 128 positions, 256 MiB each).

FLOPs as `_common.train_flops` counts them (``8 N`` per token with the reference in the
step, attention over all T^2 scores: the boolean causal-and-padding mask reaches cuDNN as
a bias, so no block is skipped); MFU against the dense bf16 peak of the datasheet
(989 TFLOP/s for H100 SXM and H200; ``--peak-tflops``) and against the bf16 matmul rate
`gpu_checks.py` measures on the card.

    PYTHONPATH=. python experiments/benchmarks/gpu_mfu.py             # GPU: ~3-4 minutes
    PYTHONPATH=. python experiments/benchmarks/gpu_mfu.py --smoke     # CPU: seconds

It runs the checks of `gpu_checks.py` first (``--no-checks`` skips them), then each
configuration ``pairs x tokens`` while the time budget lasts (an out-of-memory
configuration is reported and skipped). Should the cuDNN check fail with an error, the
configurations run with XLA attention and rematerialised blocks instead, and the JSON
says so (``attention_impl``, ``remat``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from typing import Any

import _common as C
import gpu_checks

ONE_B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
SMOKE = {
    **ONE_B,
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="2x2048,4x2048", help="pairs x tokens, in order")
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--remat", default="false", help="false, true or a checkpoint policy name")
    p.add_argument("--attention", default="cudnn", help="attention_impl: cudnn or xla")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 datasheet peak")
    p.add_argument("--budget-s", type=float, default=150.0, help="start no config after this")
    p.add_argument("--no-checks", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a tiny model on any backend")
    args = p.parse_args(argv)
    if args.smoke:
        args.configs, args.steps, args.warmup, args.attention = "2x32", 2, 1, "xla"
    return args


def run_config(spec: str, hf: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from safedpo_jax import models, sharding
    from safedpo_jax.train import objectives as steps
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    b, t = (int(x) for x in spec.split("x"))
    remat = {"false": False, "true": True}.get(args.remat, args.remat)
    mesh = sharding.make_mesh(1, 1, 1)
    config = models.DecoderConfig.from_hf(hf)
    common = {"mesh": mesh, "attention_impl": args.attention, "precision": None}
    start = time.perf_counter()
    policy = models.init_model(
        config,
        rngs=nnx.Rngs(0),
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        remat=remat,
        **common,
    )
    reference = models.init_model(
        config, rngs=nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, **common
    )
    train_config = from_preset(
        "paper",
        model=None,
        model_config=hf,
        pairs="helpful",
        batch_size=b,
        max_length=t,
        dtype="bfloat16",
        param_dtype="float32",
        remat=bool(remat),
        attention_impl=args.attention,
        learning_rate=1e-5,
        warmup_ratio=0.0,
    )
    setup = setup_step(train_config, policy, mesh, reference=reference, total_steps=1000)
    del policy, reference
    init_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    loss_mask = np.zeros((b, 2, t), bool)
    loss_mask[:, :, t // 4 :] = True
    batch = steps.StepBatch(
        input_ids=jnp.asarray(rng.integers(3, hf["vocab_size"], (b, 2, t)), jnp.int32),
        attention_mask=jnp.ones((b, 2, t), jnp.int32),
        loss_mask=jnp.asarray(loss_mask),
        unsafe=jnp.zeros((b, 2), bool),
        valid=jnp.ones((b,), bool),
    )
    fn = setup.compile()
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = fn.lower(setup.state, setup.reference, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, ref_params = setup.state, setup.reference
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, ref_params, batch)
        losses.append(float(metrics["loss"]))  # a host sync
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = C.median(times)
    flops = C.train_flops(hf, 2 * b, t, reference=True)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    mem = {}
    if memory is not None:
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
            mem[k.replace("_in_bytes", "_gib")] = getattr(memory, k, 0) / 2**30
    device_mem = jax.devices()[0].memory_stats() or {}
    return {
        "pairs": b,
        "length": t,
        "tokens_per_step": 2 * b * t,
        "params": n_params,
        "matmul_params": C.matmul_params(hf),
        "init_s": init_s,
        "compile_s": compile_s,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": 2 * b * t / step_s,
        "model_tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu_vs_datasheet": flops / step_s / 1e12 / args.peak_tflops,
        "losses": losses,
        "xla_memory": mem,
        "peak_bytes_in_use_gib": device_mem.get("peak_bytes_in_use", 0) / 2**30,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    checks = {} if args.no_checks else gpu_checks.run_checks(args.smoke)
    measured_peak = (checks.get("matmuls") or {}).get("bfloat16_default_tflops")
    if args.attention == "cudnn" and "error" in checks.get("logits", {}):
        # cuDNN attention does not run here: measure with XLA attention instead (its
        # [B, N, T, T] scores need rematerialised blocks to fit), and say so.
        print("cuDNN attention failed its check: falling back to XLA attention + remat")
        args.attention, args.remat = "xla", "true"
    hf = SMOKE if args.smoke else ONE_B
    configs: dict[str, Any] = {}
    for spec in args.configs.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            configs[spec] = {"skipped": "time budget"}
            continue
        try:
            r = run_config(spec, hf, args)
            if measured_peak:
                r["mfu_vs_measured"] = r["achieved_tflops"] / measured_peak
            configs[spec] = r
        except Exception as e:  # out of memory and the like: reported, next config
            configs[spec] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            traceback.print_exc()
        print(f"config {spec}: " + json.dumps(configs[spec]), flush=True)
    done = {k: v for k, v in configs.items() if "mfu_vs_datasheet" in v}
    best = max(done, key=lambda k: done[k]["mfu_vs_datasheet"]) if done else None
    C.emit(
        {
            "mfu": done[best]["mfu_vs_datasheet"] if best else None,
            "achieved_tflops": done[best]["achieved_tflops"] if best else None,
            "best_config": best,
            "peak_tflops_datasheet": args.peak_tflops,
            "peak_tflops_measured": measured_peak,
            "attention_impl": args.attention,
            "remat": args.remat,
            "configs": configs,
            "checks": checks,
            "total_s": time.perf_counter() - t0,
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
