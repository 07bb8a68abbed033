"""Our DPO train step against TRL's `DPOTrainer` (PyTorch, CPU), like for like.

Both sides get the same random Llama weights (a Hugging Face `LlamaForCausalLM` saved to a
temporary directory; ours loads it with `safedpo_jax.models.from_pretrained`), a
differently initialised second copy as the reference, the same pairs in the same order
(the embedded sample, "helpful" pairs, formatted identically; the token ids TRL builds are
checked against ours: prompt/response boundary, EOS, padding), the same batch size and
sequence length (TRL pads to ``pad_to_multiple_of = T``, we to the bucket T), float32, and
the same optimizer: AdamW (lr, betas, eps, weight decay), no warmup, cosine decay,
global-norm clipping at 1. TRL: ``loss_type="sigmoid"``, beta 0.1, gradient checkpointing
off and bf16 off (its defaults turn both on), sequential sampling, logging every step.
Ours: `safedpo_jax.train.setup.setup_step` + its compiled step, ``pairs="helpful"``,
beta 0.1, fed host batches as the training loop feeds them (device put + step + sync).

Modes: the reference in the step (both), and precomputed reference log-probs (TRL's
``precompute_ref_log_probs=True``; ours ``reference="cached"``); precomputation is not
timed on either side.

Timing is interleaved step by step in one process: a TRL callback runs one of our DPO
steps and one of our SafeDPO steps at the end of every TRL step, so the three share the
machine's load. A TRL step is the time from the end of our steps to TRL's next step end
(data loading, collation, forward, backward, clipping, AdamW, logging). The first
``--warmup`` steps of each side are left out (ours: compilation, reported apart). Each
step's process CPU time is recorded too (``cpu_speedup``: the ratio of CPU seconds, which
other processes on the cores disturb less than wall time). TRL runs once per
``--torch-threads`` count (2 and 1) with ``OMP_WAIT_POLICY=PASSIVE``, and the faster run
is its figure: the peer's best setting on this machine (with libgomp's default spinning,
a descheduled thread made TRL's tiny step 25x slower whenever other processes ran).
A side figure times TRL once more with its default activation checkpointing on
(``speedup_vs_trl_checkpointing``; not like for like: it recomputes the forward pass).
Peak memory comes from one subprocess per side and mode (see `_common`).

The first-step loss of both sides must agree (``--loss-rtol``): a correctness cross-check.

Real vocabularies (issue 19): ``--vocab N`` gives the models an N-token vocabulary (the
sample's token ids stay below 678: the vocabulary sizes the embedding, the LM head and
the logits), e.g. ``--sizes issue --vocab 151936`` (the issue's shape: hidden 512, MLP
1536, 4 layers, 8 heads). ``--split`` then interleaves three more of our steps in the same
rounds: the same model with the tokenizer's 678-token vocabulary (what the step costs
without the large vocabulary), the large vocabulary with full logits
(``logprob_chunk_size=0``), and one with the reference log-probs cached (the head's
share of the reference forward gone); and reads the float32 matmul peak (2048^3) before
and after the rounds. Achieved GFLOP/s: `_common.train_flops` (6N per token for the
policy, 2N for the reference, attention) over all 2B x T positions (both sides compute
the padding), plus, for our chunked log-prob path, the LM head's forward recomputed in
the backward (2 D V per policy position); TRL's figure is without it.

    PYTHONPATH=. python experiments/benchmarks/vs_trl.py            # about 10 minutes
    PYTHONPATH=. python experiments/benchmarks/vs_trl.py --smoke    # seconds-scale check

The last line is one JSON object; its keys: ``ours_tokens_per_s``, ``trl_tokens_per_s``,
``speedup`` (tiny, reference in the step), ``speedup_small`` (25M), ``ours_first_loss``,
``trl_first_loss`` (tiny), and per size and mode everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import numpy as np

LR, BETAS, EPS, WD = C.LR, C.BETAS, C.EPS, C.WD
MODES = ("in_step", "cached")
INIT_RANGE = {"tiny": 0.1, "small": 0.05, "issue": 0.02}  # policy and reference differ visibly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--batch", default="tiny=32,small=16", help="pairs per step, per size")
    p.add_argument("--length", type=int, default=64, help="tokens per sequence (T)")
    p.add_argument("--steps", default="tiny=40,small=12", help="timed steps per size and mode")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--memory", type=int, default=1, help="1: peak memory by subprocesses")
    p.add_argument("--loss-rtol", type=float, default=1e-4)
    p.add_argument("--vocab", type=int, default=0, help="model vocabulary (0: the tokenizer's)")
    p.add_argument(
        "--split", action="store_true", help="also time our step at 678 tokens, full logits, cached"
    )
    p.add_argument(
        "--torch-threads", default="2,1", help="TRL runs once per count; the faster one counts"
    )
    p.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for torch (PASSIVE, ACTIVE, or default: leave it unset)",
    )
    p.add_argument(
        "--trl-checkpointing",
        type=int,
        default=1,
        help="1: also time TRL with its default activation checkpointing (a side figure)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny only, few steps, no memory")
    # internal: one side in a subprocess, for its peak memory
    p.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.steps, args.warmup, args.memory = "tiny", "tiny=2,small=2", 1, 0
        args.batch, args.torch_threads, args.trl_checkpointing = "tiny=4,small=4", "1", 0
    return args


def per_size(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


# ----------------------------------------------------------------------------- data


def load_pairs(pairs: str, length: int, count: int) -> tuple[Any, Any]:
    """The first ``count`` pairs of the sample (tokenizer, PairDataset), in file order."""
    from safedpo_jax.data import load_preference_data, load_tokenizer

    tokenizer = load_tokenizer("sample")
    ds, _ = load_preference_data(
        "sample", split="train", pairs=pairs, tokenizer=tokenizer, max_length=length
    )
    if len(ds) < count:
        raise ValueError(f"the sample has {len(ds)} {pairs} pairs, {count} needed")
    return tokenizer, ds


def host_batches(ds: Any, batch: int, length: int, steps: int) -> list[Any]:
    """Batch i holds pairs [i * batch, (i + 1) * batch): TRL's sequential order."""
    return [ds.batch(np.arange(i * batch, (i + 1) * batch), length) for i in range(steps)]


def trl_dataset(ds: Any, tokenizer: Any, count: int) -> Any:
    """prompt / chosen / rejected text that TRL tokenises into exactly our ids.

    TRL tokenises ``prompt`` and ``prompt + chosen`` (with the tokenizer's BOS) and starts
    the completion where they diverge; it appends the EOS text unless the completion ends
    with it. The sample's tokenizer splits on whitespace, so a leading space joins the
    response to the prompt and a trailing " </s>" is the EOS token.
    """
    import datasets

    from safedpo_jax.data import format_prompt

    eos = tokenizer.eos_token
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for pair in ds.pairs[:count]:
        rows["prompt"].append(format_prompt(pair.prompt))
        rows["chosen"].append(f" {pair.chosen} {eos}")
        rows["rejected"].append(f" {pair.rejected} {eos}")
    return datasets.Dataset.from_dict(rows)


def check_tokens(trainer: Any, batches: list[Any]) -> int:
    """TRL's collated batches equal ours: ids, attention and completion masks. Returns count."""
    b = batches[0].input_ids.shape[0]
    for i, ours in enumerate(batches):
        rows = [trainer.train_dataset[j] for j in range(i * b, (i + 1) * b)]
        theirs = trainer.data_collator(rows)
        # TRL stacks [chosen rows; rejected rows], we keep [B, 2, T].
        ids = np.concatenate([ours.input_ids[:, 0], ours.input_ids[:, 1]])
        att = np.concatenate([ours.attention_mask[:, 0], ours.attention_mask[:, 1]])
        loss = np.concatenate([ours.loss_mask[:, 0], ours.loss_mask[:, 1]])
        for name, a, t in (
            ("input_ids", ids, theirs["input_ids"]),
            ("attention_mask", att, theirs["attention_mask"]),
            ("completion_mask", loss, theirs["completion_mask"]),
        ):
            t = t.numpy()
            if a.shape != t.shape or not np.array_equal(a.astype(np.int64), t.astype(np.int64)):
                raise AssertionError(f"batch {i}: TRL's {name} differs from ours")
    return len(batches)


# ----------------------------------------------------------------------------- weights


def save_weights(size: str, tokenizer: Any, directory: Path, vocab: int = 0) -> dict[str, Any]:
    """Random policy (seed 0) and reference (seed 1) in Hugging Face format; the config.

    ``vocab``: the models' vocabulary if larger than the tokenizer's (0: the tokenizer's).
    """
    import torch
    import transformers

    config = C.llama_config(
        size,
        vocab_size=max(vocab, len(tokenizer)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config["initializer_range"] = INIT_RANGE[size]
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    for seed, name in ((0, "policy"), (1, "reference")):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
        model.save_pretrained(directory / name)
    return config


# ----------------------------------------------------------------------------- our side


class Ours:
    """Our compiled step on the sample's pairs, as the training loop runs it."""

    def __init__(
        self,
        weights: Path,
        pairs: str,
        mode: str,
        batches: list[Any],
        steps: int,
        chunk: int | None = None,
    ):
        import jax
        import jax.numpy as jnp

        from safedpo_jax import models, sharding
        from safedpo_jax.train import objectives as steps_lib
        from safedpo_jax.train.config import from_preset
        from safedpo_jax.train.setup import setup_step

        self.jax, self.steps_lib = jax, steps_lib
        self.mesh = sharding.make_mesh(1, 1, 1)
        load = lambda name: models.from_pretrained(  # noqa: E731
            weights / name, dtype=jnp.float32, param_dtype=jnp.float32, mesh=self.mesh
        )
        policy, reference = load("policy"), load("reference")
        b, t = batches[0].input_ids.shape[0], batches[0].input_ids.shape[2]
        config = from_preset(
            "tiny",
            model=str(weights / "policy"),
            ref_model=str(weights / "reference"),
            pairs=pairs,
            beta=0.1,
            batch_size=b,
            max_length=t,
            **C.OPTIMIZER_FIELDS,
            reference=mode,
            logprob_chunk_size=chunk,
        )
        self.setup = setup_step(config, policy, self.mesh, reference=reference, total_steps=steps)
        self.batches = batches
        self.ref_logps: list[Any] = [None] * len(batches)
        if mode == "cached":  # one pass before training, not timed (as TRL's precompute)
            fn = self.setup.reference_logps()
            for i, hb in enumerate(batches):
                device = steps_lib.pair_step_batch(hb, self.mesh)
                self.ref_logps[i] = np.asarray(fn(self.setup.reference, device))
            self.setup.reference = None
        self.step_fn = self.setup.compile(reference_in_step=mode == "in_step")
        self.state = self.setup.state
        self.i = 0
        self.tokens = [int(hb.attention_mask.sum()) for hb in batches]

    def step(self) -> dict[str, float]:
        """One step on the next batch (device put, step, host sync), its metrics."""
        k = self.i % len(self.batches)
        batch = self.steps_lib.pair_step_batch(self.batches[k], self.mesh, self.ref_logps[k])
        with self.jax.set_mesh(self.mesh):
            self.state, metrics = self.step_fn(self.state, self.setup.reference, batch)
        if not bool(metrics["finite"]):
            raise FloatingPointError("non-finite loss")
        self.i += 1
        return metrics


# ----------------------------------------------------------------------------- TRL side


def make_trl(
    weights: Path,
    tokenizer: Any,
    dataset: Any,
    mode: str,
    b: int,
    t: int,
    steps: int,
    out: str,
    *,
    gradient_checkpointing: bool = False,
) -> Any:
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    load = lambda name: transformers.LlamaForCausalLM.from_pretrained(  # noqa: E731
        weights / name, dtype=torch.float32
    )
    args = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=b,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        weight_decay=WD,
        max_grad_norm=1.0,
        optim="adamw_torch",
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=t,
        pad_to_multiple_of=t,
        precompute_ref_log_probs=mode == "cached",
        gradient_checkpointing=gradient_checkpointing,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    return DPOTrainer(
        model=load("policy"),
        ref_model=load("reference"),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def interleave(times: dict[str, list[float]], ours: dict[str, Any]) -> Any:
    """A TRL callback that runs each of ``ours`` once after every TRL step and times all.

    A TRL step's time runs from the end of our steps to TRL's next step end, so it holds
    everything TRL does per step (data, forward, backward, optimizer, logging). Each entry
    is (wall seconds, process CPU seconds).
    """
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        resume = (0.0, 0.0)

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.resume = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            wall, cpu = self.resume
            times["trl"].append((time.perf_counter() - wall, time.process_time() - cpu))
            for name, step in ours.items():
                times[name].append(C.timed_cpu(step))
            self.resume = (time.perf_counter(), time.process_time())

    return Interleave()


# ----------------------------------------------------------------------------- one size


def run_size(size: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import transformers

    transformers.logging.set_verbosity_error()
    b, t = per_size(args.batch)[size], args.length
    n_timed = per_size(args.steps)[size]
    steps = n_timed + args.warmup
    tokenizer, ds = load_pairs("helpful", t, steps * b)
    _, safe_ds = load_pairs("safedpo", t, steps * b)
    batches = host_batches(ds, b, t, steps)
    safe_batches = host_batches(safe_ds, b, t, steps)
    weights = workdir / size
    config = save_weights(size, tokenizer, weights, args.vocab)
    dataset = trl_dataset(ds, tokenizer, steps * b)
    tokens = float(np.mean([hb.attention_mask.sum() for hb in batches]))
    rows_positions = 2 * b * t
    flops = C.train_flops(config, 2 * b, t, reference=True)
    recompute = 2 * config["hidden_size"] * config["vocab_size"] * rows_positions
    result: dict[str, Any] = {
        "size": size,
        "vocab": config["vocab_size"],
        "matmul_params": C.matmul_params(config),
        "trl_gflop_per_step": flops / 1e9,
        "ours_gflop_per_step": (flops + recompute) / 1e9,
        "params": C.matmul_params(config) + config["vocab_size"] * config["hidden_size"],
        "batch_pairs": b,
        "length": t,
        "tokens_per_step": tokens,
        "positions_per_step": 2 * b * t,
        "timed_steps": n_timed,
    }
    for mode in args.modes.split(","):
        ours = Ours(weights, "helpful", mode, batches, steps)
        # with --split the SafeDPO step makes way (memory) for the variants of ours
        safe = None if args.split else Ours(weights, "safedpo", mode, safe_batches, steps)
        extra: dict[str, Any] = {}
        if args.split:
            from safedpo_jax import logprobs

            small_vocab = workdir / f"{size}_v{len(tokenizer)}"
            small_config = save_weights(size, tokenizer, small_vocab)
            extra = {
                "ours_small_vocab": Ours(small_vocab, "helpful", mode, batches, steps),
                "ours_project_all": Ours(weights, "helpful", mode, batches, steps),
                "ours_cached": Ours(weights, "helpful", "cached", batches, steps),
            }
            result["small_vocab_gflop_per_step"] = (
                C.train_flops(small_config, 2 * b, t, reference=True) / 1e9
            )
            for name, variant in extra.items():
                # the previous log-prob path: every position projected (traced here)
                logprobs.SKIP_MASKED_CHUNKS = name != "ours_project_all"
                result[f"{name}_compile_s"] = C.timed(variant.step)
            logprobs.SKIP_MASKED_CHUNKS = True
            result["matmul_peak_gflops_before"] = C.matmul_peak_gflops()
        # The first call compiles; it is also the first step (batch 0, initial weights).
        start = time.perf_counter()
        first = ours.step()
        compile_s = time.perf_counter() - start
        ours_first = float(first["loss"])
        ours_logps = (float(first["logps/chosen"]), float(first["logps/rejected"]))
        safe_compile_s = None if safe is None else C.timed(safe.step)

        import torch

        ours_steps = {"ours": ours.step} | ({} if safe is None else {"safedpo": safe.step})
        ours_steps |= {k: v.step for k, v in extra.items()}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in ours_steps}
        trl_runs: dict[int, list[tuple[float, float]]] = {}
        for threads in (int(x) for x in args.torch_threads.split(",")):
            torch.set_num_threads(threads)
            trainer = make_trl(weights, tokenizer, dataset, mode, b, t, steps, str(workdir / "trl"))
            checked = check_tokens(trainer, batches)
            run: dict[str, list[tuple[float, float]]] = {"trl": []} | {k: [] for k in ours_steps}
            trainer.add_callback(interleave(run, ours_steps))
            trainer.train()
            log = [r for r in trainer.state.log_history if "loss" in r]
            trl_first = float(log[0]["loss"])
            trl_logps = (float(log[0]["logps/chosen"]), float(log[0]["logps/rejected"]))
            trl_runs[threads] = run["trl"][args.warmup :]
            trl_first_step = run["trl"][0][0]
            for k in ours_steps:
                times[k] += run[k][args.warmup :]
        trl_med = {n: C.median([w for w, _ in v]) for n, v in trl_runs.items()}
        best_threads = min(trl_med, key=trl_med.get)
        trl_gc = None
        if args.trl_checkpointing:  # TRL's default: activation checkpointing on
            torch.set_num_threads(best_threads)
            trainer = make_trl(
                weights, tokenizer, dataset, mode, b, t, steps, str(workdir / "trl"),
                gradient_checkpointing=True,
            )  # fmt: skip
            run = {"trl": []} | {k: [] for k in ours_steps}
            trainer.add_callback(interleave(run, ours_steps))
            trainer.train()
            trl_gc = C.median([w for w, _ in run["trl"][args.warmup :]])
            for k in ours_steps:
                times[k] += run[k][args.warmup :]
        times["trl"] = trl_runs[best_threads]
        med = {k: C.median([w for w, _ in v]) for k, v in times.items()}
        cpu = {k: C.median([c for _, c in v]) for k, v in times.items()}
        r = {
            "ours_step_s": med["ours"],
            "trl_step_s": med["trl"],
            "safedpo_step_s": med.get("safedpo"),
            "ours_steps_per_s": 1 / med["ours"],
            "trl_steps_per_s": 1 / med["trl"],
            "ours_tokens_per_s": tokens / med["ours"],
            "trl_tokens_per_s": tokens / med["trl"],
            "safedpo_tokens_per_s": tokens / med["safedpo"] if safe else None,
            "speedup": med["trl"] / med["ours"],
            "ours_cpu_s": cpu["ours"],
            "trl_cpu_s": cpu["trl"],
            "cpu_speedup": cpu["trl"] / cpu["ours"],
            "ours_compile_s": compile_s,
            "safedpo_compile_s": safe_compile_s,
            "trl_first_step_s": trl_first_step,
            "trl_step_s_by_threads": trl_med,
            "trl_checkpointing_step_s": trl_gc,
            "speedup_vs_trl_checkpointing": None if trl_gc is None else trl_gc / med["ours"],
            "trl_threads": best_threads,
            "ours_first_loss": ours_first,
            "trl_first_loss": trl_first,
            "first_loss_rel_diff": abs(ours_first - trl_first) / abs(trl_first),
            "ours_first_logps": ours_logps,
            "trl_first_logps": trl_logps,
            "token_batches_checked": checked,
            "ours_gflops": result["ours_gflop_per_step"] / med["ours"],
            "trl_gflops": result["trl_gflop_per_step"] / med["trl"],
            "ours_gflops_by_cpu": result["ours_gflop_per_step"] / (cpu["ours"] / os.cpu_count()),
            "trl_gflops_by_cpu": result["trl_gflop_per_step"] / (cpu["trl"] / os.cpu_count()),
            "step_s_all_rounds": {k: [round(w, 4) for w, _ in v] for k, v in times.items()},
        }
        for k in extra:
            r[f"{k}_step_s"], r[f"{k}_cpu_s"] = med[k], cpu[k]
        if extra:
            r["matmul_peak_gflops_after"] = C.matmul_peak_gflops()
            r["matmul_peak_gflops_before"] = result["matmul_peak_gflops_before"]
        if r["first_loss_rel_diff"] > args.loss_rtol:
            raise AssertionError(
                f"{size}/{mode}: first-step losses differ: ours {ours_first}, TRL {trl_first}"
            )
        if args.memory:
            for side in ("ours", "trl"):
                child = C.run_child(
                    [__file__, "--child", side, "--size", size, "--mode", mode]
                    + ["--weights", str(weights), "--batch", args.batch]
                    + ["--length", str(t), "--steps", f"{size}=3", "--warmup", "1"]
                )
                r[f"{side}_peak_rss_mib"] = child["peak_rss_mib"]
                r[f"{side}_rss_before_mib"] = child["rss_before_mib"]
                r[f"{side}_training_rss_mib"] = child["peak_rss_mib"] - child["rss_before_mib"]
            r["memory_ratio"] = r["trl_peak_rss_mib"] / r["ours_peak_rss_mib"]
            r["training_memory_ratio"] = r["trl_training_rss_mib"] / r["ours_training_rss_mib"]
        result[mode] = r
        print(f"[{size}/{mode}] " + json.dumps({k: v for k, v in r.items()}), flush=True)
    return result


def child(args: argparse.Namespace) -> None:
    """One side, one size and mode: peak RSS over the steps after the warm-up."""
    b, t = per_size(args.batch)[args.size], args.length
    steps = per_size(args.steps)[args.size] + args.warmup
    weights = Path(args.weights)
    tokenizer, ds = load_pairs("helpful", t, steps * b)
    batches = host_batches(ds, b, t, steps)
    rss_before = C.rss_mib()
    if args.child == "ours":
        ours = Ours(weights, "helpful", args.mode, batches, steps)
        for _ in range(args.warmup):
            ours.step()
        C.reset_peak_rss()
        for _ in range(steps - args.warmup):
            ours.step()
    else:
        import transformers
        from transformers import TrainerCallback

        transformers.logging.set_verbosity_error()
        dataset = trl_dataset(ds, tokenizer, steps * b)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trl(weights, tokenizer, dataset, args.mode, b, t, steps, out)

            class Reset(TrainerCallback):
                def on_step_end(self, a: Any, state: Any, *x: Any, **k: Any) -> None:
                    if state.global_step == args.warmup:
                        C.reset_peak_rss()

            trainer.add_callback(Reset())
            trainer.train()
    C.emit({"peak_rss_mib": C.peak_rss_mib(), "rss_before_mib": rss_before})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # libgomp's threads spin at barriers by default; when another process holds a core, a
    # spinning thread waits a scheduler quantum for a descheduled one and TRL's tiny-model
    # step took 2 s instead of 0.08 s here. Passive waiting is the peer's best setting.
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    info = C.machine() | {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    import trl

    info["trl"] = trl.__version__
    print("machine: " + json.dumps(info), flush=True)
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            sizes[size] = run_size(size, args, Path(tmp))
    head = sizes.get("tiny", {}).get("in_step", {})
    small = sizes.get("small", {}).get("in_step", {})
    C.emit(
        {
            "ours_tokens_per_s": head.get("ours_tokens_per_s"),
            "trl_tokens_per_s": head.get("trl_tokens_per_s"),
            "speedup": head.get("speedup"),
            "speedup_small": small.get("speedup"),
            "ours_first_loss": head.get("ours_first_loss"),
            "trl_first_loss": head.get("trl_first_loss"),
            "speedup_cached": sizes.get("tiny", {}).get("cached", {}).get("speedup"),
            "speedup_small_cached": sizes.get("small", {}).get("cached", {}).get("speedup"),
            "machine": info,
            "sizes": sizes,
            "argv": sys.argv[1:],
        }
    )


if __name__ == "__main__":
    main()
