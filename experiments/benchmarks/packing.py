"""Padding-free packing against the padded batch, through the trainer's one step.

The same pairs two ways through `safedpo_jax.train.setup.setup_step`'s compiled step (the
SafeDPO preference objective, the reference in the step, AdamW; forward of both models,
backward of the policy, the update):

- padded: the `PairBatch` right-padded to the bucket of its longest sequence
  (`default_bucket_lengths(max_length)`, as the data pipeline does), ``[B, 2, T]``;
- packed: ``--pack-length T`` (the same bucket length): the objective's ``device_batch``
  packs the sequences into rows of T tokens with segment ids (first-fit decreasing, rows
  rounded up to 2^k or 3 * 2^k), the step reads per-pair log-probs from segments.

Length distribution (PKU-SafeRLHF-like; the dataset itself is not on this machine):
prompt lengths lognormal with median 24 tokens (sigma 0.7), response lengths lognormal with
median 90 (sigma 0.8), each clipped to [4, 400], sequences cut at ``--max-length`` 512:
a long tail of a few long answers over many short ones, which is what makes padding cost.
Random token ids and safety labels; a Llama of ``--size``, float32, one CPU device. Rounds
alternate padded and packed; figures are medians. The first step's metrics (same initial
parameters) must agree: ``max_loss_abs_diff`` and the gradient norms.

    PYTHONPATH=. python experiments/benchmarks/packing.py          # minutes
    PYTHONPATH=. python experiments/benchmarks/packing.py --smoke  # seconds

The last line is one JSON object: ``speedup`` (packed over padded real tokens per
second), the fill of both layouts, the first-step losses and gradient norms.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import _common as C
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.pairs, args.max_length, args.vocab, args.rounds = "tiny", 4, 64, 678, 1
    return args


def ragged_pairs(args: argparse.Namespace) -> Any:
    """A `PairBatch` of ``--pairs`` pairs with PKU-SafeRLHF-like lengths."""
    from safedpo_jax.data.batches import PairBatch, bucket_length, default_bucket_lengths

    rng = np.random.default_rng(args.seed)
    b, cap = args.pairs, args.max_length
    scale = cap / 512
    prompt = np.clip(rng.lognormal(np.log(24 * scale), 0.7, b), 4, 400 * scale).astype(int)
    response = np.clip(rng.lognormal(np.log(90 * scale), 0.8, (b, 2)), 4, 400 * scale)
    lengths = np.minimum(prompt[:, None] + response.astype(int), cap)
    t = bucket_length(int(lengths.max()), default_bucket_lengths(cap))
    pos = np.arange(t)
    mask = pos[None, None] < lengths[..., None]
    ids = np.where(mask, rng.integers(3, args.vocab, (b, 2, t)), 0).astype(np.int32)
    return PairBatch(
        input_ids=ids,
        attention_mask=mask.astype(np.int32),
        loss_mask=mask & (pos[None, None] >= prompt[:, None, None]),
        unsafe=rng.random((b, 2)) < 0.4,
        pair_index=np.arange(b, dtype=np.int32),
        valid=np.ones(b, bool),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from safedpo_jax import models, sharding
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    hf = C.llama_config(args.size, vocab_size=args.vocab)
    config = models.DecoderConfig.from_hf(hf)
    mesh = sharding.make_mesh(1, 1, 1)
    host = ragged_pairs(args)
    t = host.input_ids.shape[-1]

    def build(seed: int) -> Any:
        return models.init_model(config, rngs=nnx.Rngs(seed), mesh=mesh, dtype=jnp.float32)

    sides: dict[str, dict[str, Any]] = {}
    for name, pack in (("padded", 0), ("packed", t)):
        cfg = from_preset(
            "tiny", model_config=hf, pairs="safedpo", batch_size=args.pairs,
            max_length=args.max_length, pack_length=pack, warmup_ratio=0.0, dtype="float32",
        )  # fmt: skip
        setup = setup_step(cfg, build(0), mesh, reference=build(1), total_steps=100)
        batch = setup.objective.device_batch(host, mesh, None)
        side = {"setup": setup, "fn": setup.compile(), "batch": batch, "state": setup.state}

        def one(side: dict[str, Any] = side) -> dict[str, Any]:
            with jax.set_mesh(mesh):
                side["state"], metrics = side["fn"](
                    side["state"], side["setup"].reference, side["batch"]
                )
            return jax.device_get(metrics)

        side["one"] = one
        first: list[dict[str, Any]] = []
        side["compile_s"] = C.timed(lambda one=one, first=first: first.append(one()))
        side["first"] = first[0]
        side["shape"] = list(batch.input_ids.shape)
        sides[name] = side
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            times[name].append(C.timed(side["one"]))
    real = int(host.attention_mask.sum())
    med = {k: C.median(v) for k, v in times.items()}
    first = {k: s["first"] for k, s in sides.items()}
    size = {k: int(np.prod(s["shape"])) for k, s in sides.items()}
    result = {
        "size": args.size,
        "pairs": args.pairs,
        "vocab": args.vocab,
        "row_length": t,
        "real_tokens": real,
        "padded_shape": sides["padded"]["shape"],
        "packed_shape": sides["packed"]["shape"],
        "padded_fill": real / size["padded"],
        "packed_fill": real / size["packed"],
        "padded_s": med["padded"],
        "packed_s": med["packed"],
        "padded_tokens_per_s": real / med["padded"],
        "packed_tokens_per_s": real / med["packed"],
        "speedup": med["padded"] / med["packed"],
        "loss_padded": float(first["padded"]["loss"]),
        "loss_packed": float(first["packed"]["loss"]),
        "max_loss_abs_diff": abs(float(first["padded"]["loss"]) - float(first["packed"]["loss"])),
        "grad_norm_padded": float(first["padded"]["grad_norm"]),
        "grad_norm_packed": float(first["packed"]["grad_norm"]),
        "tokens_metric": {k: float(v["tokens"]) for k, v in first.items()},
        "compile_s": {k: s["compile_s"] for k, s in sides.items()},
        "times": times,
        "machine": info,
        "load_avg_1m_end": C.machine()["load_avg_1m"],
    }
    C.emit(result)


if __name__ == "__main__":
    main()
