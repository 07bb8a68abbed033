"""Setting a run up: distributed start, tokenizer, models, the objective and the compiled step.

`setup_step` is `safedpo_jax.train.loop.train` without data or loop: from a config, a policy
(and optionally a reference) already on the mesh, it builds the objective, the optimizer,
the initial state and, on demand, the compiled step; the benchmarks under
``experiments/benchmarks/`` time it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from safedpo_jax import models
from safedpo_jax.models import Model, ModelOptions, lora
from safedpo_jax.models.config import FAMILY_CLASS_PREFIX
from safedpo_jax.models.hf import resolve
from safedpo_jax.train import step as steps
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.objectives import Objective, StepBatch, build_objective
from safedpo_jax.train.objectives.preference import batch_logps
from safedpo_jax.train.optim import learning_rate_schedule, make_optimizer


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


def model_options(config: TrainConfig) -> ModelOptions:
    """The `ModelOptions` of a run's models (policy, reference)."""
    return ModelOptions(
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        remat=config.remat,
        attention_impl=config.attention_impl,
        scan_layers=config.scan_layers,
    )


def random_model_config(
    model_config: Mapping[str, Any] | None, tokenizer: Any
) -> models.DecoderConfig:
    """The `DecoderConfig` of a random model: ``model_config`` (a Hugging Face config dict)
    with the tokenizer's vocabulary size and special-token ids where it does not set them."""
    hf = dict(model_config or {})
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
    config: TrainConfig,
    path: str | None,
    tokenizer: Any,
    mesh: Mesh,
    seed: int,
    *,
    score_type: str | None = None,
) -> models.CausalLM | models.ScoreModel:
    """Loads ``path`` (sharded straight onto the mesh) or initialises a random model.

    ``score_type`` None: a causal LM. Otherwise a `safedpo_jax.models.ScoreModel` with that
    head ("reward", "cost"): loaded as it is when ``path`` holds a score model, started
    from a causal LM's decoder with a new head (`score_model_from_causal_lm`, in
    ``config.score_layout``) when it holds one, or random from ``model_config``.
    """
    options = {**model_options(config).kwargs(), "mesh": mesh}
    if path is not None and not Path(path).expanduser().exists() and jax.process_index() == 0:
        # A Hub id (the paper preset's default model is one): say what is fetched.
        print(
            f"model {path}: not a local directory, so its config.json and safetensors come "
            "from the Hugging Face Hub cache, downloaded first if absent (a 7B model is "
            "about 13.5 GB; pass --model DIR to use a local checkpoint)",
            flush=True,
        )
    if score_type is None:
        if path is not None:
            model = models.from_pretrained(path, **options)
        else:
            model = models.init_model(
                random_model_config(config.model_config, tokenizer), rngs=nnx.Rngs(seed), **options
            )
        if not isinstance(model, models.CausalLM):
            raise ValueError(f"{path} is a score model, not a causal language model")
    elif path is None:
        lm = random_model_config(config.model_config, tokenizer)
        prefix = FAMILY_CLASS_PREFIX[lm.model_type]
        head = {
            "safe_rlhf": {"architectures": [f"{prefix}ForScore"], "score_dim": 1, "bias": True},
            "hf": {"architectures": [f"{prefix}ForSequenceClassification"], "num_labels": 1},
        }[config.score_layout]
        hf = {**lm.to_hf(), **head, "score_type": score_type}
        model = models.init_model(models.DecoderConfig.from_hf(hf), rngs=nnx.Rngs(seed), **options)
    elif read_config(path).kind == "causal_lm":
        model = models.score_model_from_causal_lm(
            path, layout=config.score_layout, score_type=score_type, seed=seed, **options
        )
    else:
        model = models.from_pretrained(path, **options)
        if not isinstance(model, models.ScoreModel):
            raise ValueError(f"{path} is not a score model")
    vocab = model.config.vocab_size
    if vocab < len(tokenizer):
        raise ValueError(
            f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({len(tokenizer)})"
        )
    return model


def read_config(path: str) -> models.DecoderConfig:
    """The `DecoderConfig` of a checkpoint directory or Hub id (config.json only)."""
    config_file = resolve(path) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json")
    return models.DecoderConfig.from_hf(json.loads(config_file.read_text()))


@dataclasses.dataclass
class StepSetup:
    """An objective, a policy, its frozen reference, the optimizer and the initial state.

    policy: the policy's static parts and initial parameters (the trained parameters live
    in ``state.params``). reference: the frozen reference (None when the objective uses
    none, or once cached log-probs replaced it).
    """

    config: TrainConfig
    mesh: Mesh
    objective: Objective
    policy: Model
    reference: Model | None
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: steps.TrainState

    def compile(self, *, reference_in_step: bool = True) -> steps.Step:
        """The jitted step ``(state, reference, batch) -> (state, metrics)``.

        With ``reference_in_step=False`` the step reads ``batch.ref_logps`` (a cached
        reference) and takes ``reference=None``.
        """
        impl = steps.make_step(
            self.objective,
            self.policy,
            self.optimizer,
            self.schedule,
            micro_batches=self.config.micro_batches,
        )
        reference = self.reference if reference_in_step else None
        return steps.jit_step(
            impl, self.state, self.mesh, reference=reference, policy_rest=self.policy.rest
        )

    def reference_logps(self) -> Callable[[Model, StepBatch], jax.Array]:
        """Jitted ``(reference, batch) -> [B, 2]`` float32 log-probs (for cached references).

        The same log-prob path (`batch_logps`: padded or packed, same chunk size) as the
        in-step reference, so cached and in-step log-probs agree.
        """
        chunk = self.config.logprob_chunk_size

        @jax.jit
        def fn(reference: Model, batch: StepBatch) -> jax.Array:
            # padded or packed (`--pack-length`) batches: [B, 2] in pair order either way
            return batch_logps(reference, batch, chunk)

        return fn


def setup_step(
    config: TrainConfig,
    policy: nnx.Module,
    mesh: Mesh,
    *,
    reference: nnx.Module | None = None,
    total_steps: int,
    objective: Objective | None = None,
) -> StepSetup:
    """Splits the models, builds the objective, the optimizer and the initial state.

    ``policy`` and ``reference`` are `safedpo_jax.models.CausalLM` instances already placed
    on ``mesh`` (e.g. by `safedpo_jax.models.from_pretrained` with ``mesh=``). Without
    ``reference`` an objective that uses one gets a copy of the policy's initial weights;
    an objective without one (SFT) gets none. ``objective`` defaults to
    `build_objective(config)`; ``total_steps`` sets the learning-rate schedule.
    """
    objective = build_objective(config) if objective is None else objective
    # What trains: every parameter, or only the LoRA adapters when the policy carries them
    # (then the frozen base is in ``rest`` and the reference below shares it).
    policy_model = lora.split(policy)
    ref_model = None
    if objective.uses_reference:
        if reference is None:
            ref_model = policy_model.with_params(jax.tree.map(jnp.copy, policy_model.params))
        else:
            ref_model = Model.split(reference)
    optimizer = make_optimizer(config, total_steps)
    schedule = learning_rate_schedule(config, total_steps)
    state = steps.init_state(policy_model.params, optimizer, mesh, config.seed)
    return StepSetup(
        config=config,
        mesh=mesh,
        objective=objective,
        policy=policy_model,
        reference=ref_model,
        optimizer=optimizer,
        schedule=schedule,
        state=state,
    )
