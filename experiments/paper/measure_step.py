"""Measure the train step's rate on the local devices, to check the estimates' assumed MFU.

Builds a random model with a config's architecture (optionally fewer layers, so that a
7B-wide model fits one device), runs the real jitted SafeDPO step (policy + in-step
reference, remat, bf16 over float32, AdamW) on synthetic pairs of the paper's shape
(``--pairs`` per device, ``--length`` tokens, the last 3/4 of each sequence the
response), and reports seconds per step and the MFU by the FLOP formula of
``estimates.py`` (so the measured MFU and the assumed 40% count the same FLOPs).

    python experiments/paper/measure_step.py --architecture PKU-Alignment/alpaca-7b-reproduced \\
        --layers 8 --pairs 16 --length 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from estimates import ACCELERATORS, Shape, load_architectures  # noqa: E402

from safedpo_jax import models, sharding  # noqa: E402
from safedpo_jax.train.config import from_preset  # noqa: E402
from safedpo_jax.train.objectives import StepBatch, to_global  # noqa: E402
from safedpo_jax.train.setup import model_options, setup_step  # noqa: E402


def peak_tflops(device: jax.Device) -> float | None:
    kind = device.device_kind.lower()
    for key, name in (("h100", "H100"), ("v5p", "v5p"), ("v4", "v4")):
        if key in kind:
            return ACCELERATORS[name].peak_tflops
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="PKU-Alignment/alpaca-7b-reproduced")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per device")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=512, help="logprob_chunk_size")
    parser.add_argument("--remat", default="true", choices=["true", "false"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    hf = dict(load_architectures()[args.architecture])
    if args.layers:
        hf["num_hidden_layers"] = args.layers
    devices = jax.device_count()
    config = from_preset(
        "paper",
        model=None,
        model_config=hf,
        batch_size=args.pairs * devices,
        max_length=args.length,
        logprob_chunk_size=args.chunk,
        remat=args.remat == "true",
        max_steps=1000,
    )
    mesh = sharding.make_mesh(1, -1, 1)
    policy = models.init_model(
        models.DecoderConfig.from_hf(hf),
        rngs=nnx.Rngs(0),
        mesh=mesh,
        **model_options(config).kwargs(),
    )
    setup = setup_step(config, policy, mesh, total_steps=1000)
    state, reference = setup.state, setup.reference
    step_fn = setup.compile()

    rng = np.random.default_rng(0)
    b, t = config.batch_size, args.length
    ids = rng.integers(3, hf["vocab_size"], (b, 2, t), dtype=np.int32)
    loss_mask = np.zeros((b, 2, t), bool)
    loss_mask[:, :, t // 4 :] = True
    put = lambda x: to_global(x, mesh)  # noqa: E731
    batch = StepBatch(
        input_ids=put(ids),
        attention_mask=put(np.ones((b, 2, t), np.int32)),
        loss_mask=put(loss_mask),
        unsafe=put(rng.random((b, 2)) < 0.3),
        valid=put(np.ones((b,), bool)),
    )
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        state, metrics = step_fn(state, reference, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step_fn(state, reference, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / args.steps

    shape = Shape.from_hf(hf)
    tokens = b * 2 * t
    model_flops = 4 * shape.forward_flops_per_token(t) * tokens  # policy 3x + reference 1x
    peak = peak_tflops(jax.devices()[0])
    result = {
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "architecture": args.architecture,
        "layers": shape.layers,
        "params": shape.params,
        "pairs_per_device": args.pairs,
        "length": t,
        "remat": config.remat,
        "logprob_chunk_size": args.chunk,
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 4),
        "model_tflop_per_step": round(model_flops / 1e12, 2),
        "mfu": None if peak is None else round(model_flops / step_s / (devices * peak * 1e12), 3),
        "loss": float(metrics["loss"]),
        "jax": jax.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
