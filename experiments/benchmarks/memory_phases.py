"""Peak memory per phase (load, compile, step) against TRL at real vocabularies.

The issue's shape: a random Llama (hidden 512, MLP 1536, 4 layers, 8 heads), 4 pairs of
129 tokens, float32, AdamW, the reference in the step; vocabularies 32,000, 128,256 and
151,936. Both sides load the same Hugging Face checkpoints (policy and a second random
reference, written by `transformers` beforehand) and train on the same random token ids.
The pairs are the embedded sample's first helpful pairs at T = 129, as vs_trl.py feeds
both sides (token ids below 678: the vocabulary only sizes the embedding, head and
logits). One fresh subprocess per side and vocabulary; before each phase the resident-set
high-water mark is reset (`_common.reset_peak_rss`), after it the phase's peak and the
resident set are read:

- ours: ``imports``; ``load`` (`from_pretrained` of policy and reference); ``setup``
  (`setup_step`: the AdamW state); ``compile`` (the step lowered and compiled ahead of
  time, with XLA's own buffer accounting, ``memory_analysis``); ``step1`` (the first
  step); ``steps`` (the remaining steps).
- TRL (vs_trl.py's `make_trl`: sigmoid loss, no activation checkpointing, float32):
  ``imports``; ``load+setup`` (`from_pretrained` twice and `DPOTrainer`); ``step1`` (its
  first step, which also creates the AdamW state); ``steps`` (the remaining steps).

XLA's own buffer accounting (``xla_mib``, abstract compiles in the parent process): the
step's temp buffers with the automatic log-prob chunking, 16-position chunks and full
logits, the step's arguments and temp with cached reference log-probs, and the policy
loss's temp forward only and with its gradient. Each phase also records what its peak
was made of (``at_peak_mib``: anonymous and file-backed resident pages, glibc's heap; the
largest of 50 ms samples) and which checkpoint pages stay mapped
(``safetensors_rss_mib``: `from_pretrained` in transformers maps the files).
``--xla-only`` runs just that part. Beside the measurement, the accounting in bytes:
weights (policy, reference), gradients, AdamW moments, and the ``[2B, T, V]`` float32
logits a full log-softmax materialises.

    PYTHONPATH=. python experiments/benchmarks/memory_phases.py          # ~10 minutes
    PYTHONPATH=. python experiments/benchmarks/memory_phases.py --smoke  # tiny, ours only

The last line is one JSON object: per vocabulary, per side, per phase ``peak_mib`` and
``rss_mib``, and ``accounting_mib``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

DIMS = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocabs", default="32000,128256,151936")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--tokens", type=int, default=129)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--xla-only", action="store_true", help="only the XLA buffer breakdown")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.vocabs, args.pairs, args.tokens, args.steps, args.no_trl = "1000", 2, 17, 2, True
    return args


class Phases:
    """Peak and current RSS per named phase (the high-water mark reset before each)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.t = time.perf_counter()
        C.reset_peak_rss()
        self.sampler = C.PeakSampler()

    def end(self, name: str, **extra: Any) -> None:
        now = time.perf_counter()
        self.rows[name] = {
            "peak_mib": round(C.peak_rss_mib(), 1),
            "rss_mib": round(C.rss_mib(), 1),
            "seconds": round(now - self.t, 2),
            # what the resident set was made of: the largest 50 ms sample, and at the end
            "at_peak_mib": self.sampler.reset(),
            "after_mib": C.memory_breakdown_mib(),
            # checkpoint pages still mapped (memory-mapped safetensors), by file
            "safetensors_rss_mib": {
                "/".join(Path(k).parts[-2:]): v
                for k, v in C.mapped_files_rss_mib(".safetensors").items()
            },
            **extra,
        }
        C.reset_peak_rss()
        self.sampler.reset()
        self.t = time.perf_counter()


def accounting(config: dict[str, Any], rows: int, tokens: int) -> dict[str, float]:
    """Bytes of what a float32 DPO step with AdamW and an in-step reference must hold, MiB."""
    d, f, n_layers, v = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
    )
    per_layer = 4 * d * d + 3 * d * f + 2 * d
    params = n_layers * per_layer + 2 * v * d + d  # untied embedding and head
    mib = 4 / 2**20
    return {
        "params_millions": round(params / 1e6, 2),
        "weights_policy": round(params * mib, 1),
        "weights_reference": round(params * mib, 1),
        "gradients": round(params * mib, 1),
        "adam_moments": round(2 * params * mib, 1),
        "persistent_total": round(5 * params * mib, 1),
        "logits_2BTV": round(rows * tokens * v * mib, 1),
    }


def sample_batches(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    """The sample's first helpful pairs at T = ``--tokens`` (as vs_trl.py feeds both sides)."""
    from vs_trl import host_batches, load_pairs

    tokenizer, ds = load_pairs("helpful", args.tokens, args.steps * args.pairs)
    return tokenizer, ds, host_batches(ds, args.pairs, args.tokens, args.steps)


def child_ours(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    ph = Phases()
    import jax

    from safedpo_jax import models, sharding
    from safedpo_jax.train import objectives as steps_lib
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    _, _, batches = sample_batches(args)
    ph.end("imports")
    mesh = sharding.make_mesh(1, 1, 1)
    load = lambda name: models.from_pretrained(weights / name, mesh=mesh)  # noqa: E731
    policy, reference = load("policy"), load("reference")
    ph.end("load")
    config = from_preset(
        "tiny",
        model=str(weights / "policy"),
        pairs="helpful",
        beta=0.1,
        batch_size=args.pairs,
        max_length=args.tokens,
        **C.OPTIMIZER_FIELDS,
    )
    setup = setup_step(config, policy, mesh, reference=reference, total_steps=args.steps)
    del policy, reference
    ph.end("setup")
    fn = setup.compile(reference_in_step=True)
    state = setup.state
    first = steps_lib.pair_step_batch(batches[0], mesh)
    with jax.set_mesh(mesh):
        compiled = fn.lower(state, setup.reference, first).compile()
    analysis = compiled.memory_analysis()
    xla = {
        name: round(getattr(analysis, f"{name}_size_in_bytes") / 2**20, 1)
        for name in ("argument", "output", "alias", "temp", "generated_code")
    }
    ph.end("compile", xla_mib=xla)
    initial = jax.tree.leaves(setup.policy.params)
    losses = []
    for i, host in enumerate(batches):
        with jax.set_mesh(mesh):
            batch = steps_lib.pair_step_batch(host, mesh)
            state, metrics = compiled(state, setup.reference, batch)
        losses.append(float(metrics["loss"]))
        if i == 0:
            # the donated initial parameters are gone (no second copy of the policy)
            ph.end("step1", initial_params_deleted=all(x.is_deleted() for x in initial))
    ph.end("steps")
    return {"phases": ph.rows, "losses": losses}


def child_trl(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    ph = Phases()
    import torch
    import transformers
    from transformers import TrainerCallback
    from vs_trl import make_trl, trl_dataset

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    tokenizer, ds, _ = sample_batches(args)
    dataset = trl_dataset(ds, tokenizer, args.steps * args.pairs)
    ph.end("imports")
    with tempfile.TemporaryDirectory() as out:
        b, t = args.pairs, args.tokens
        trainer = make_trl(weights, tokenizer, dataset, "in_step", b, t, args.steps, out)
        ph.end("load+setup")
        losses: list[float] = []

        class Mark(TrainerCallback):
            def on_step_end(self, a: Any, state: Any, *x: Any, **k: Any) -> None:
                if state.global_step == 1:
                    ph.end("step1")

            def on_log(self, a: Any, state: Any, c: Any, logs: Any = None, **k: Any) -> None:
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        trainer.add_callback(Mark())
        trainer.train()
    ph.end("steps")
    return {"phases": ph.rows, "losses": losses}


def xla_breakdown(args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """XLA's temp buffers (MiB) of abstract compiles, nothing allocated: the whole step at
    several log-prob chunk sizes (0 = full logits), and the policy's loss alone, forward
    only and with its gradient."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from safedpo_jax import models, sharding
    from safedpo_jax.train import objectives as steps_lib
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.objectives.preference import PreferenceObjective
    from safedpo_jax.train.setup import setup_step

    hf = C.llama_config(DIMS, vocab_size=vocab)
    dc = models.DecoderConfig.from_hf(hf)
    mesh = sharding.make_mesh(1, 1, 1)
    b, t = args.pairs, args.tokens
    sds = jax.ShapeDtypeStruct
    batch = steps_lib.StepBatch(
        input_ids=sds((b, 2, t), jnp.int32),
        attention_mask=sds((b, 2, t), jnp.int32),
        loss_mask=sds((b, 2, t), bool),
        unsafe=sds((b, 2), bool),
        valid=sds((b,), bool),
    )
    mib = lambda n: round(n / 2**20, 1)  # noqa: E731
    out: dict[str, Any] = {"step_temp_by_chunk": {}}
    policy = models.init_model(dc, rngs=nnx.Rngs(0), mesh=mesh)
    for chunk in (None, 16, 0):
        config = from_preset("tiny", model_config=hf, pairs="helpful", batch_size=b,
                             max_length=t, logprob_chunk_size=chunk)  # fmt: skip
        setup = setup_step(config, policy, mesh, reference=policy, total_steps=10)
        fn = setup.compile(reference_in_step=True)
        with jax.set_mesh(mesh):
            analysis = fn.lower(setup.state, setup.reference, batch).compile().memory_analysis()
        out["step_temp_by_chunk"]["auto" if chunk is None else str(chunk)] = mib(
            analysis.temp_size_in_bytes
        )
        out["step_argument"] = mib(analysis.argument_size_in_bytes)
    # What `--reference cached` leaves: the step without the reference (its log-probs in
    # the batch).
    config = from_preset("tiny", model_config=hf, pairs="helpful", batch_size=b,
                         max_length=t, reference="cached")  # fmt: skip
    setup = setup_step(config, policy, mesh, reference=policy, total_steps=10)
    fn = setup.compile(reference_in_step=False)
    cached = dataclasses.replace(batch, ref_logps=sds((b, 2), jnp.float32))
    with jax.set_mesh(mesh):
        analysis = fn.lower(setup.state, None, cached).compile().memory_analysis()
    out["cached_reference"] = {
        "argument": mib(analysis.argument_size_in_bytes),
        "temp": mib(analysis.temp_size_in_bytes),
    }
    model = models.Model.split(policy)
    objective = PreferenceObjective(pairs="helpful", safe=False)

    def loss(params: Any, reference: Any, batch: Any) -> Any:
        return objective.sums(model.with_params(params), reference, batch)[0]

    for name, fn in (
        ("forward", jax.jit(loss)),
        ("value_and_grad", jax.jit(jax.value_and_grad(loss))),
    ):
        analysis = fn.lower(model.params, model, batch).compile().memory_analysis()
        out[f"loss_{name}"] = {
            "temp": mib(analysis.temp_size_in_bytes),
            "output": mib(analysis.output_size_in_bytes),
        }
    return out


def save_weights(vocab: int, directory: Path) -> dict[str, Any]:
    import torch
    import transformers

    config = C.llama_config(DIMS, vocab_size=vocab, pad_token_id=0, bos_token_id=1)
    config["eos_token_id"] = 2
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    for seed, name in ((0, "policy"), (1, "reference")):
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).save_pretrained(
            directory / name
        )
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run = child_ours if args.child == "ours" else child_trl
        C.emit(run(args, Path(args.weights)))
        return
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    results: dict[str, Any] = {}
    common = ["--pairs", str(args.pairs), "--tokens", str(args.tokens)]
    common += ["--steps", str(args.steps)]
    for vocab in (int(v) for v in args.vocabs.split(",")):
        with tempfile.TemporaryDirectory() as work:
            config = save_weights(vocab, Path(work))
            row: dict[str, Any] = {
                "accounting_mib": accounting(config, 2 * args.pairs, args.tokens),
                "xla_mib": xla_breakdown(args, vocab),
            }
            print(f"V={vocab} xla: " + json.dumps(row["xla_mib"]), flush=True)
            if args.xla_only:
                results[str(vocab)] = row
                continue
            for side in ("ours",) if args.no_trl else ("ours", "trl"):
                child = C.run_child([__file__, *common, "--child", side, "--weights", work])
                row[side] = child
                print(f"V={vocab} {side}: " + json.dumps(child), flush=True)
            sides = [s for s in ("ours", "trl") if s in row]
            row["process_peak_mib"] = {
                s: max(p["peak_mib"] for p in row[s]["phases"].values()) for s in sides
            }
            results[str(vocab)] = row
            print(f"V={vocab}: " + json.dumps(row["process_peak_mib"]), flush=True)
    C.emit({"results": results, "machine": info, "load_avg_1m_end": C.machine()["load_avg_1m"]})


if __name__ == "__main__":
    main()
