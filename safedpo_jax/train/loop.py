"""The training loop: set-up, run, export, for any objective.

`train` runs one `TrainConfig` from start (or from its last checkpoint) to the end, in three
parts a reader can follow a batch through:

    prepare: tokenizer -> objective (`build_objective`) -> its datasets (counted drops)
      -> policy and reference on the mesh -> optimizer and state (`setup_step`)
      -> cached reference log-probs (`reference.cache_reference`), or the reference in step
    run: BatchIterator (this host's share) -> objective.device_batch -> the jitted step
      -> metrics.jsonl / TensorBoard / progress bar, held-out eval, orbax checkpoints
    export: OUTPUT_DIR/hf (the policy in Hugging Face format, with its tokenizer)

The compute of a run is counted (`safedpo_jax.costs`): every compiled function it calls
(the step, the reference pass, the held-out evaluation) with its calls and XLA's FLOPs,
and the wall time of each part, go to ``OUTPUT_DIR/compute.json`` (and
`TrainResult.compute`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from safedpo_jax import costs, losses, models, sharding
from safedpo_jax.data import BatchIterator, DataSummary, MissingSplitError, load_tokenizer
from safedpo_jax.train import console, rundir
from safedpo_jax.train import lora as train_lora
from safedpo_jax.train import reference as ref_cache
from safedpo_jax.train import step as steps
from safedpo_jax.train.checkpoint import Checkpointer, abstract_like
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.metrics_log import MetricsLog
from safedpo_jax.train.objectives import Objective, build_objective
from safedpo_jax.train.setup import (
    StepSetup,
    build_model,
    initialize_distributed,
    setup_step,
    tokenizer_source,
)

log = logging.getLogger("safedpo_jax.train")


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
    compute: dict[str, Any] | None = None


@dataclasses.dataclass
class Run:
    """Everything `prepare` builds for `run_steps` and `export`."""

    config: TrainConfig
    output_dir: Path
    primary: bool
    tokenizer: Any
    objective: Objective
    setup: StepSetup
    train_ds: Any
    eval_ds: Any | None
    summary: dict[str, Any]
    iterator: BatchIterator
    total_steps: int
    cached: dict[str, np.ndarray]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def load_datasets(
    config: TrainConfig, objective: Objective, tokenizer: Any
) -> tuple[Any, DataSummary, Any | None, DataSummary | None]:
    """The training and (optional) held-out datasets of ``objective`` with their summaries."""
    train_ds, train_summary = objective.load_data(config, tokenizer, config.split)
    if len(train_ds) == 0:
        raise ValueError(f"no training examples left in {config.dataset}:{config.split}")
    if config.eval_split is None:
        return train_ds, train_summary, None, None
    try:
        eval_ds, eval_summary = objective.load_data(config, tokenizer, config.eval_split)
    except MissingSplitError as exc:  # e.g. one training file: never evaluate on its rows
        if jax.process_index() == 0:
            print(f"no held-out evaluation: {exc}", flush=True)
        return train_ds, train_summary, None, None
    return train_ds, train_summary, eval_ds, eval_summary


def prepare(config: TrainConfig) -> Run:
    """Output directory, data, models, optimizer, state and (if asked) cached reference."""
    primary = jax.process_index() == 0
    output_dir = Path(config.output_dir)  # claimed by `train` (rundir.claim) before this
    mesh = sharding.make_mesh(config.mesh_data, config.mesh_fsdp, config.mesh_tensor)

    tokenizer = load_tokenizer(tokenizer_source(config))
    objective = build_objective(config)
    train_ds, train_summary, eval_ds, eval_summary = load_datasets(config, objective, tokenizer)
    objective = objective.with_data(train_ds)  # values taken from the training set, if any
    summary = {"train": train_summary.to_dict()}
    if eval_summary is not None:
        summary["eval"] = eval_summary.to_dict()
    if primary:
        print(train_summary.to_text(), flush=True)
        output_dir.mkdir(parents=True, exist_ok=True)  # `prepare` alone, without `train`
        (output_dir / "data_summary.json").write_text(json.dumps(summary, indent=2))

    score_type = objective.score_type
    policy = build_model(config, config.model, tokenizer, mesh, config.seed, score_type=score_type)
    policy = train_lora.attach(config, policy, mesh)  # adapters, when the run trains LoRA
    # The frozen reference: the same weights as the initial policy unless --ref-model.
    reference = None
    ref_path = config.reference_model
    if objective.uses_reference and ref_path is not None and ref_path != config.model:
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
    setup = setup_step(
        config, policy, mesh, reference=reference, total_steps=total_steps, objective=objective
    )
    del policy, reference

    cached: dict[str, np.ndarray] = {}
    seconds = {}
    if objective.uses_reference and config.reference == "cached":
        start = time.perf_counter()
        datasets = {"train": train_ds} if eval_ds is None else {"train": train_ds, "eval": eval_ds}
        cached = ref_cache.cache_reference(
            setup,
            datasets,
            config=config,
            tokenizer=tokenizer,
            announce=(lambda text: print(text, flush=True)) if primary else None,
            reference_tag=train_lora.reference_tag(config),
        )
        seconds["reference_pass"] = time.perf_counter() - start
    return Run(
        config=config,
        output_dir=output_dir,
        primary=primary,
        tokenizer=tokenizer,
        objective=objective,
        setup=setup,
        train_ds=train_ds,
        eval_ds=eval_ds,
        summary=summary,
        iterator=iterator,
        total_steps=total_steps,
        cached=cached,
        seconds=seconds,
    )


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _scalar_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    host = jax.device_get(metrics)
    return {k: float(np.asarray(v)) for k, v in host.items()}


def _device_batch(run: Run, host: Any, split: str) -> Any:
    """A host batch on the mesh, with its cached reference log-probs when there are some."""
    ref = None
    if split in run.cached:
        index = np.where(host.pair_index >= 0, host.pair_index, 0)
        ref = np.where(host.valid[:, None], run.cached[split][index], 0.0)
    return run.objective.device_batch(host, run.setup.mesh, ref)


def _evaluate(run: Run, eval_fn: Any, params: Any) -> dict[str, float]:
    """Metrics of the objective on the held-out split (``eval/*``)."""
    config = run.config
    host_batches = lambda: BatchIterator(  # noqa: E731
        run.eval_ds,
        batch_size=config.batch_size,
        shuffle=False,
        num_epochs=1,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    def batches() -> Any:
        for i, host in enumerate(host_batches()):
            if config.eval_batches is not None and i >= config.eval_batches:
                return
            yield _device_batch(run, host, "eval")

    total = None
    for batch in batches():
        sums = eval_fn(params, run.setup.reference, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        return {}
    out = _scalar_metrics(losses.finalize_metrics(total))
    out.update(run.objective.held_out_report(run.setup.policy.with_params(params), batches()))
    return {f"eval/{k}": v for k, v in out.items()}


def run_steps(run: Run) -> TrainResult:
    """Resumes from the last checkpoint (if any) and trains to ``run.total_steps``."""
    config, setup, iterator, total_steps = run.config, run.setup, run.iterator, run.total_steps
    state = setup.state
    step_fn = costs.counted(
        "train_step", setup.compile(reference_in_step=setup.reference is not None)
    )
    checkpointer = Checkpointer(
        run.output_dir / "checkpoints", save_every=config.save_every, keep=config.keep_checkpoints
    )
    metrics_log = MetricsLog.for_run(config, run.output_dir, enabled=run.primary)
    start, resumed_from = 0, None
    base_meta = train_lora.checkpoint_meta(setup.policy)  # LoRA: the base's fingerprint
    restored = checkpointer.restore_latest(abstract_like(state))
    if restored is not None:
        resumed_from, state, meta = restored
        train_lora.check_resume(meta, setup.policy)
        iterator.restore(meta["data"])
        start = resumed_from
        if run.primary:
            print(f"resumed from {checkpointer.directory / str(resumed_from)}", flush=True)
    # Records past the restored step (all of them, when there was no checkpoint yet) are
    # the steps this launch redoes.
    metrics_log.truncate_after(start)

    eval_fn = None
    if run.eval_ds is not None:
        eval_fn = costs.counted("eval_sums", steps.make_eval_sums(run.objective, setup.policy))

    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    bar = _progress(total_steps, start, run.primary)
    window_tokens, window_start = 0.0, time.perf_counter()
    try:
        with jax.set_mesh(setup.mesh):
            for step in range(start, total_steps):
                host = next(iterator)
                state, metrics = step_fn(state, setup.reference, _device_batch(run, host, "train"))
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
                    eval_metrics = _evaluate(run, eval_fn, state.params)
                    metrics_log.write(done, eval_metrics)
                    if run.primary:
                        bar.write(console.eval_line(done, eval_metrics))
                if done % config.save_every == 0:
                    meta = {"data": iterator.state(), "step": done, **base_meta}
                    checkpointer.save(done, state, meta, force=True)
                bar.update(1)
            final_eval_due = not config.eval_every or total_steps % config.eval_every
            if eval_fn is not None and start < total_steps and final_eval_due:
                eval_metrics = _evaluate(run, eval_fn, state.params)
                metrics_log.write(total_steps, eval_metrics)
                if run.primary:
                    bar.write(console.eval_line(total_steps, eval_metrics))
            if total_steps not in checkpointer.steps():
                meta = {"data": iterator.state(), "step": total_steps, **base_meta}
                checkpointer.save(total_steps, state, meta, force=True)
    finally:
        bar.close()
        checkpointer.close()
        metrics_log.close()
    return TrainResult(
        step=total_steps,
        metrics=last_metrics,
        eval_metrics=eval_metrics,
        output_dir=run.output_dir,
        export_dir=None,
        data_summary=run.summary,
        resumed_from=resumed_from,
        state=state,
    )


def export(run: Run, state: steps.TrainState) -> Path:
    """Writes the trained policy (and the tokenizer) to ``OUTPUT_DIR/hf``.

    Under LoRA the adapter also goes to ``OUTPUT_DIR/adapter`` in PEFT's format and ``hf``
    holds the merged weights.
    """
    export_dir = run.output_dir / "hf"
    module = run.setup.policy.with_params(state.params).merge()
    adapter_dir, module = train_lora.export_adapter(run.config, module, run.output_dir)
    if adapter_dir is not None and run.primary:
        run.tokenizer.save_pretrained(str(adapter_dir))
    models.save_pretrained(module, export_dir)
    if run.primary:
        run.tokenizer.save_pretrained(str(export_dir))
    multihost_utils.sync_global_devices("export")
    return export_dir


def train(config: TrainConfig) -> TrainResult:
    """Runs (or resumes) training as ``config`` says; see the module docstring.

    The output directory is locked for the run's life and resumed only if it holds this
    run (`safedpo_jax.train.rundir.claim`, which also writes ``config.json``).
    """
    initialize_distributed(config)
    ledger = costs.Ledger()
    with rundir.claim(config), costs.recording(ledger):
        start = time.perf_counter()
        run = prepare(config)
        seconds = {"prepare": time.perf_counter() - start, **run.seconds}
        start = time.perf_counter()
        result = run_steps(run)
        seconds["steps"] = time.perf_counter() - start
        if config.export:
            start = time.perf_counter()
            result.export_dir = export(run, result.state)
            seconds["export"] = time.perf_counter() - start
        result.compute = compute_summary(ledger, seconds, steps_run=result.step)
        if run.primary:
            (run.output_dir / "compute.json").write_text(json.dumps(result.compute, indent=2))
        return result


def compute_summary(ledger: costs.Ledger, seconds: dict[str, float], **facts: Any) -> dict:
    """What ``compute.json`` holds: wall seconds per part (``prepare`` includes
    ``reference_pass``), the counted FLOPs (total and per function: calls, XLA's count per
    compiled variant, memory estimate), the devices, and ``facts``."""
    return {
        "seconds": seconds,
        **ledger.to_dict(),
        "devices": jax.device_count(),
        "platform": jax.default_backend(),
        **facts,
    }
