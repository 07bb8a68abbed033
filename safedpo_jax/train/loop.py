"""The training loop: data, models, mesh, the jitted step, eval, checkpoints, export.

`train` runs one `TrainConfig` from start (or from its last checkpoint) to the end:

    rows -> pairs (counted drops) -> tokenised pairs -> BatchIterator (this host's share)
      -> StepBatch on the mesh -> train_step (policy once over chosen+rejected, reference
      in-step or cached, SafeDPO kernel, accumulation, clipping, AdamW)
      -> metrics.jsonl / TensorBoard / progress bar, orbax checkpoints, held-out eval
      -> OUTPUT_DIR/hf (the policy in Hugging Face format, with its tokenizer)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from safedpo_jax import losses, models, sharding
from safedpo_jax.data import (
    BatchIterator,
    DataSummary,
    PairDataset,
    SFTDataset,
    load_preference_data,
    load_sft_data,
    load_tokenizer,
)
from safedpo_jax.train import reference as ref_cache
from safedpo_jax.train import rundir
from safedpo_jax.train import step as steps
from safedpo_jax.train.checkpoint import Checkpointer, abstract_like
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.metrics_log import MetricsLog

log = logging.getLogger("safedpo_jax.train")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteError(FloatingPointError):
    """The loss or the gradient of a step was not finite (the state was not updated)."""


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final step, last metrics, last eval metrics, paths."""

    step: int
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    output_dir: Path
    export_dir: Path | None
    data_summary: dict[str, Any]
    resumed_from: int | None
    state: steps.TrainState


# --------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------


def initialize_distributed(config: TrainConfig) -> None:
    """Runs `jax.distributed.initialize` for multi-host runs (before any device use)."""
    if not (config.distributed or config.coordinator_address):
        return
    # Cross-process collectives between CPU devices (tests, CPU clusters) go through gloo;
    # the setting does not affect GPU or TPU collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if config.coordinator_address:
        kwargs = {
            "coordinator_address": config.coordinator_address,
            "num_processes": config.num_processes,
            "process_id": config.process_id,
        }
    jax.distributed.initialize(**kwargs)


def tokenizer_source(config: TrainConfig) -> str:
    """``tokenizer``, else the policy checkpoint, else the embedded sample's tokenizer."""
    if config.tokenizer:
        return config.tokenizer
    if config.model:
        return config.model
    if config.dataset == "sample":
        return "sample"
    raise ValueError("a randomly initialised model needs --tokenizer (or --dataset sample)")


def random_model_config(config: TrainConfig, tokenizer: Any) -> models.DecoderConfig:
    """The `DecoderConfig` of a random model: ``model_config`` plus the tokenizer's ids."""
    hf = dict(config.model_config or {})
    hf.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            hf.setdefault(name, value)
    if hf["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"model_config vocab_size {hf['vocab_size']} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    return models.DecoderConfig.from_hf(hf)


def build_model(
    config: TrainConfig, path: str | None, tokenizer: Any, mesh: jax.sharding.Mesh, seed: int
) -> models.CausalLM:
    """Loads ``path`` (sharded straight onto the mesh) or initialises a random model."""
    options = {
        "dtype": DTYPES[config.dtype],
        "param_dtype": DTYPES[config.param_dtype],
        "mesh": mesh,
        "remat": config.remat,
        "attention_impl": config.attention_impl,
    }
    if path is not None:
        model = models.from_pretrained(path, **options)
    else:
        model = models.init_model(
            random_model_config(config, tokenizer), rngs=nnx.Rngs(seed), **options
        )
    if not isinstance(model, models.CausalLM):
        raise ValueError(f"{path} is a score model, not a causal language model")
    vocab = model.config.vocab_size
    if vocab < len(tokenizer):
        raise ValueError(
            f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({len(tokenizer)})"
        )
    return model


def load_datasets(
    config: TrainConfig, tokenizer: Any
) -> tuple[
    PairDataset | SFTDataset, DataSummary, PairDataset | SFTDataset | None, DataSummary | None
]:
    """The training and (optional) held-out datasets with their summaries."""
    common = {
        "tokenizer": tokenizer,
        "max_length": config.max_length,
        "template": config.template,
        "config": config.dataset_config,
        "safety_label": config.safety_label,
    }
    if config.objective == "sft":
        load = lambda split: load_sft_data(
            config.dataset, split=split, responses=config.sft_responses, **common
        )
    else:
        load = lambda split: load_preference_data(
            config.dataset,
            split=split,
            pairs=config.pairs,
            keep_both_unsafe=config.keep_both_unsafe,
            **common,
        )
    train_ds, train_summary = load(config.split)
    if len(train_ds) == 0:
        raise ValueError(f"no training examples left in {config.dataset}:{config.split}")
    if config.eval_split is None:
        return train_ds, train_summary, None, None
    eval_ds, eval_summary = load(config.eval_split)
    return train_ds, train_summary, eval_ds, eval_summary


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _scalar_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    host = jax.device_get(metrics)
    return {k: float(np.asarray(v)) for k, v in host.items()}


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def train(config: TrainConfig) -> TrainResult:
    """Runs (or resumes) training as ``config`` says; see the module docstring.

    The output directory is locked for the run's life and resumed only if it holds this
    run (`safedpo_jax.train.rundir.claim`).
    """
    initialize_distributed(config)
    with rundir.claim(config):
        return _train(config)


def _train(config: TrainConfig) -> TrainResult:
    primary = jax.process_index() == 0
    output_dir = Path(config.output_dir)
    mesh = sharding.make_mesh(config.mesh_data, config.mesh_fsdp, config.mesh_tensor)

    tokenizer = load_tokenizer(tokenizer_source(config))
    train_ds, train_summary, eval_ds, eval_summary = load_datasets(config, tokenizer)
    summary = {"train": train_summary.to_dict()}
    if eval_summary is not None:
        summary["eval"] = eval_summary.to_dict()
    if primary:
        print(train_summary.to_text(), flush=True)
        (output_dir / "data_summary.json").write_text(json.dumps(summary, indent=2))

    sft = config.objective == "sft"
    policy = build_model(config, config.model, tokenizer, mesh, config.seed)
    # The frozen reference: the same weights as the initial policy unless --ref-model.
    reference = None
    ref_path = config.reference_model
    if not sft and ref_path is not None and ref_path != config.model:
        reference = build_model(config, ref_path, tokenizer, mesh, config.seed)

    iterator = BatchIterator(
        train_ds,
        batch_size=config.batch_size,
        seed=config.seed,
        num_epochs=None,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total_steps = config.max_steps or config.epochs * iterator.steps_per_epoch
    setup = steps.setup_step(config, policy, mesh, reference=reference, total_steps=total_steps)
    del policy, reference
    graphdef, rest = setup.graphdef, setup.rest
    ref_graphdef, ref_rest, ref_params = setup.ref_graphdef, setup.ref_rest, setup.ref_params
    state = setup.state

    # Cached reference log-probs: one pass per split, then the reference is freed.
    cached: dict[str, np.ndarray] = {}
    if not sft and config.reference == "cached":
        fingerprint = ref_cache.model_fingerprint(
            ref_path,
            random_init={"config": config.model_config, "seed": config.seed}
            if ref_path is None
            else None,
            resolve=models.hf.resolve,
        )
        tokenizer_fp = ref_cache.tokenizer_fingerprint(tokenizer)
        logps_fn = setup.reference_logps()
        for split, ds in (("train", train_ds), ("eval", eval_ds)):
            if ds is None:
                continue
            facts = ref_cache.cache_facts(
                config,
                split=config.split if split == "train" else str(config.eval_split),
                model_fp=fingerprint,
                dataset_fp=ref_cache.dataset_fingerprint(ds),
                tokenizer_fp=tokenizer_fp,
                mesh_shape=dict(mesh.shape),
            )
            key = ref_cache.cache_key(facts)
            values, path, hit = ref_cache.load_or_compute(
                config.ref_cache_dir,
                key,
                lambda ds=ds: ref_cache.compute_reference_logps(
                    ds,
                    lambda b: logps_fn(ref_params, b),
                    lambda b: steps.pair_step_batch(b, mesh),
                    batch_size=config.batch_size,
                ),
                expected_rows=len(ds),
                facts=facts,
            )
            cached[split] = values
            if primary:
                print(f"reference log-probs ({split}): {'reused' if hit else 'computed'} {path}")
        ref_params = setup.ref_params = None  # the reference's memory is free from here on

    step_fn = setup.compile(reference_in_step=ref_params is not None)

    def device_batch(host: Any, split: str) -> Any:
        if sft:
            return steps.sft_step_batch(host, mesh)
        ref = None
        if split in cached:
            index = np.where(host.pair_index >= 0, host.pair_index, 0)
            ref = np.where(host.valid[:, None], cached[split][index], 0.0)
        return steps.pair_step_batch(host, mesh, ref)

    checkpointer = Checkpointer(
        output_dir / "checkpoints", save_every=config.save_every, keep=config.keep_checkpoints
    )
    metrics_log = MetricsLog(output_dir, enabled=primary)
    start, resumed_from = 0, None
    restored = checkpointer.restore_latest(abstract_like(state))
    if restored is not None:
        resumed_from, state, meta = restored
        iterator.restore(meta["data"])
        start = resumed_from
        if primary:
            print(f"resumed from {checkpointer.directory / str(resumed_from)}", flush=True)
    # Records past the restored step (all of them, when there was no checkpoint yet) are
    # the steps this launch redoes.
    metrics_log.truncate_after(start)

    eval_fn = None
    if eval_ds is not None:
        eval_fn = _make_eval(config, graphdef, rest, ref_graphdef, ref_rest, sft)

    def run_eval() -> dict[str, float]:
        host_batches = BatchIterator(
            eval_ds,
            batch_size=config.batch_size,
            shuffle=False,
            num_epochs=1,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        total = None
        for i, host in enumerate(host_batches):
            if config.eval_batches is not None and i >= config.eval_batches:
                break
            sums = eval_fn(state.params, ref_params, device_batch(host, "eval"))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is None:
            return {}
        return {f"eval/{k}": v for k, v in _scalar_metrics(losses.finalize_metrics(total)).items()}

    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    bar = _progress(total_steps, start, primary)
    window_tokens, window_start = 0.0, time.perf_counter()
    try:
        with jax.set_mesh(mesh):
            for step in range(start, total_steps):
                host = next(iterator)
                state, metrics = step_fn(state, ref_params, device_batch(host, "train"))
                if not bool(metrics["finite"]):
                    raise NonFiniteError(
                        f"step {step + 1}: the loss or the gradient is not finite "
                        f"(loss={float(metrics['loss'])}, "
                        f"grad_norm={float(metrics['grad_norm'])}); "
                        "the update was skipped and training stopped. The last good checkpoint "
                        f"is in {checkpointer.directory} (steps {checkpointer.steps()})."
                    )
                window_tokens += float(metrics["tokens"])
                done = step + 1
                if done % config.log_every == 0 or done == total_steps:
                    elapsed = time.perf_counter() - window_start
                    last_metrics = _scalar_metrics(metrics)
                    last_metrics.pop("finite", None)
                    last_metrics["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                    last_metrics["epoch"] = done / iterator.steps_per_epoch
                    metrics_log.write(done, last_metrics)
                    bar.set_postfix(
                        loss=f"{last_metrics['loss']:.4f}",
                        tok_s=f"{last_metrics['tokens_per_s']:.0f}",
                    )
                    window_tokens, window_start = 0.0, time.perf_counter()
                if eval_fn is not None and config.eval_every and done % config.eval_every == 0:
                    eval_metrics = run_eval()
                    metrics_log.write(done, eval_metrics)
                if done % config.save_every == 0:
                    checkpointer.save(
                        done, state, {"data": iterator.state(), "step": done}, force=True
                    )
                bar.update(1)
            final_eval_due = not config.eval_every or total_steps % config.eval_every
            if eval_fn is not None and start < total_steps and final_eval_due:
                eval_metrics = run_eval()
                metrics_log.write(total_steps, eval_metrics)
            if total_steps not in checkpointer.steps():
                checkpointer.save(
                    total_steps, state, {"data": iterator.state(), "step": total_steps}, force=True
                )
    finally:
        bar.close()
        checkpointer.close()
        metrics_log.close()

    export_dir = None
    if config.export:
        export_dir = output_dir / "hf"
        final = nnx.merge(graphdef, state.params, rest)
        models.save_pretrained(final, export_dir)
        if primary:
            tokenizer.save_pretrained(str(export_dir))
        multihost_utils.sync_global_devices("export")
    return TrainResult(
        step=total_steps,
        metrics=last_metrics,
        eval_metrics=eval_metrics,
        output_dir=output_dir,
        export_dir=export_dir,
        data_summary=summary,
        resumed_from=resumed_from,
        state=state,
    )


def _make_eval(
    config: TrainConfig,
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    ref_graphdef: nnx.GraphDef | None,
    ref_rest: nnx.State | None,
    sft: bool,
) -> Callable[..., dict[str, jax.Array]]:
    """A jitted function from (params, ref_params, batch) to metric sums."""

    @jax.jit
    def eval_sums(
        params: nnx.State, ref_params: nnx.State | None, batch: Any
    ) -> dict[str, jax.Array]:
        if sft:
            logps, tokens = steps.sft_forward(config, graphdef, params, rest, batch)
            return {"loss": jnp.stack([-jnp.sum(logps), tokens])}
        out = steps.preference_forward(
            config, graphdef, params, rest, ref_graphdef, ref_params, ref_rest, batch
        )
        return losses.metric_sums(out, batch.valid)

    return eval_sums
