"""SafeRLHF's PPO-Lagrangian: the rollout-and-update loop (``python -m safedpo_jax.train.ppo``).

One step, as PKU-Alignment/safe-rlhf's ``ppo_lag`` trainer runs it:

    prompts (BatchIterator, LEFT-padded) -> generation (jitted KV-cache sampler,
      temperature 1, top-p 1) -> responses -> reward and cost end scores (score models on
      the same ids, or any ``(prompts, responses) -> scores`` callable such as the
      synthetic world's oracle) -> `experience`: per-token log-probs of the actor and the
      frozen reference, both critics' per-token values, the KL-penalised reward and cost
      streams and GAE per stream -> the episode costs join the 128-episode window ->
      `update` (jitted, state donated): the multiplier's SGD step on ``log lambda`` from the
      window's mean, then the actor's clipped surrogate on ``(A_r - lambda A_c) / (1 + lambda)``
      and each critic's clipped value loss, three AdamW optimizers
      -> metrics.jsonl, orbax checkpoints, the actor exported in Hugging Face format.

Every kernel is `safedpo_jax.losses.ppo`'s. The actor, the reference and both critics are
sharded by the logical-axis rules on one ``(data, fsdp, tensor)`` mesh; the batch is split
over ``("data", "fsdp")``. The episode-cost window pools all hosts' episodes (safe-rlhf
averages each rank's window mean; with equal windows the two agree).

The run's compute is counted (`safedpo_jax.costs`): calls and XLA's FLOPs of generation
(``generate``: prefill plus every decode step that ran), scoring (``score_reward`` /
``score_cost`` when score models score), ``experience`` (actor, reference and critic
passes), ``push_costs`` and ``update``, with the wall time of each phase, go to
``OUTPUT_DIR/compute.json`` (and `PPOResult.compute`).

Not implemented: the optional PTX (SFT) term of safe-rlhf (``ptx_coeff``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from safedpo_jax import costs, logprobs, losses, models, sharding
from safedpo_jax.data import BatchIterator, load_rows, load_tokenizer, tokenize_prompts
from safedpo_jax.evaluate import generation
from safedpo_jax.evaluate.scoring import resolve_oracle
from safedpo_jax.models.options import DTYPES
from safedpo_jax.train import step as steps
from safedpo_jax.train.checkpoint import Checkpointer, abstract_like
from safedpo_jax.train.metrics_log import MetricsLog
from safedpo_jax.train.setup import random_model_config

log = logging.getLogger("safedpo_jax.train.ppo")

Array = jax.Array
TextScorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]

__all__ = [
    "PRESETS",
    "NonFiniteError",
    "PPOConfig",
    "PPOResult",
    "PPOState",
    "config_from_args",
    "load_prompts",
    "main",
    "preset",
    "train_ppo",
]


class NonFiniteError(FloatingPointError):
    """A loss or gradient of an update was not finite (the state was not updated)."""


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def _field(default: Any, help: str) -> Any:
    """A `PPOConfig` field with its ``--help`` line: the one source of its docs."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Everything a PPO-Lagrangian run needs; defaults are safe-rlhf's ``ppo-lag.sh``.

    Each field carries its one-line documentation in its metadata
    (``dataclasses.fields(PPOConfig)[i].metadata["help"]``), which ``python -m
    safedpo_jax.train.ppo --help`` prints beside each flag. The actor's optimiser is AdamW
    with linear warmup; the critics' likewise; ``max_grad_norm`` clips every update.
    """

    output_dir: str = _field(
        "runs/ppo", "where metrics.jsonl, checkpoints/ and hf/ (the final actor) go"
    )
    actor: str | None = _field(
        None,
        "the actor's start and the frozen reference: a Hugging Face causal-LM directory; "
        "none builds a random model of --model-config",
    )
    model_config: dict[str, Any] | None = _field(
        None, "a random actor's Hugging Face config (JSON), when --actor is not given"
    )
    tokenizer: str | None = _field(
        None, "a tokenizer directory (default: the actor's, else the embedded sample's)"
    )
    reward_model: str | None = _field(
        None,
        "a score-model directory scoring helpfulness (none: the synthetic world's oracle, "
        "on the sample dataset only)",
    )
    cost_model: str | None = _field(
        None,
        "a score-model directory scoring harm, > 0 unsafe (none: the synthetic world's oracle)",
    )
    reward_critic: str | None = _field(
        None,
        "the reward critic's initial weights (default: the reward model; with the oracle, "
        "the actor's backbone and a zero head)",
    )
    cost_critic: str | None = _field(
        None,
        "the cost critic's initial weights (default: the cost model; with the oracle, as "
        "--reward-critic)",
    )
    dataset: str = _field(
        "sample",
        "prompts: a dataset with a 'prompt' column ('sample': the embedded synthetic sample)",
    )
    split: str = _field("train", "the dataset split the prompts come from")
    template: str = _field(
        "safe_rlhf", "the prompt template: 'safe_rlhf', 'chat' or a string with {prompt}"
    )
    prompt_batch_size: int = _field(16, "prompts per PPO step over all devices")
    epochs: int = _field(1, "passes over the prompts")
    max_steps: int | None = _field(
        None, "stop after this many PPO steps (none: all the epochs' prompts)"
    )
    seed: int = _field(42, "seed of shuffling, sampling and initialisation")
    max_length: int = _field(512, "prompt plus response tokens of a rollout")
    max_new_tokens: int | None = _field(
        None, "response tokens per rollout (none: --max-length minus the prompt batch's length)"
    )
    temperature: float = _field(1.0, "rollout sampling temperature")
    top_p: float = _field(1.0, "rollout nucleus-sampling mass (1: off)")
    update_iters: int = _field(1, "PPO passes over each rollout batch")
    kl_coeff: float = _field(
        0.01, "per-token KL penalty against the reference, in the reward (and cost) stream"
    )
    clip_range_ratio: float = _field(0.2, "PPO's clip of the policy ratio")
    clip_range_score: float = _field(50.0, "clip of the reward and cost scores")
    clip_range_value: float = _field(5.0, "clip of the critics' value updates")
    gamma: float = _field(1.0, "discount of the returns")
    gae_lambda: float = _field(0.95, "lambda of generalised advantage estimation")
    normalize_advantage: bool = _field(True, "divide the Lagrangian advantage by 1 + lambda")
    cost_kl: bool = _field(True, "put the KL term in the cost stream too (safe-rlhf's choice)")
    threshold: float = _field(0.0, "the cost limit d of the constraint E[cost] <= d")
    lambda_init: float = _field(1.0, "the Lagrange multiplier's start (> 0; it lives in log space)")
    lambda_lr: float = _field(0.1, "SGD learning rate of log lambda")
    lambda_max: float | None = _field(5.0, "the multiplier's ceiling (none: unbounded)")
    lambda_update_delay_steps: int = _field(0, "PPO steps before the multiplier starts to move")
    episode_cost_window_size: int = _field(
        128, "recent episodes whose mean cost drives the multiplier"
    )
    actor_lr: float = _field(1e-5, "the actor's AdamW learning rate")
    actor_lr_scheduler: str = _field(
        "cosine", "the actor's schedule: 'cosine' or 'constant', after linear warmup"
    )
    actor_warmup_ratio: float = _field(0.03, "share of the actor's updates spent warming up")
    actor_weight_decay: float = _field(0.01, "the actor's AdamW weight decay")
    critic_lr: float = _field(5e-6, "the critics' AdamW learning rate")
    critic_lr_scheduler: str = _field("constant", "the critics' schedule: 'cosine' or 'constant'")
    critic_warmup_ratio: float = _field(0.0, "share of the critics' updates spent warming up")
    critic_weight_decay: float = _field(0.0, "the critics' AdamW weight decay")
    max_grad_norm: float = _field(
        1.0, "global gradient-norm clip of each update (DeepSpeed's in safe-rlhf)"
    )
    dtype: str = _field("bfloat16", "compute dtype")
    param_dtype: str = _field("float32", "parameter dtype")
    scan_layers: bool = _field(
        True,
        "apply the decoder blocks with lax.scan (False: a Python loop over the same stack; "
        "the same numbers, and XLA's FLOP count then covers every layer)",
    )
    mesh_data: int = _field(1, "data-parallel axis of the device mesh")
    mesh_fsdp: int = _field(-1, "FSDP axis of the device mesh (-1: the remaining devices)")
    mesh_tensor: int = _field(1, "tensor-parallel axis of the device mesh")
    save_every: int = _field(100, "checkpoint every this many PPO steps (relaunching resumes)")
    keep_checkpoints: int = _field(2, "checkpoints kept")
    export: bool = _field(True, "export the final actor in Hugging Face format to OUTPUT_DIR/hf")

    def __post_init__(self) -> None:
        checks = [
            (self.prompt_batch_size >= 1, "prompt_batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.update_iters >= 1, "update_iters must be >= 1"),
            (self.kl_coeff >= 0, "kl_coeff must be >= 0"),
            (self.lambda_init > 0, "lambda_init must be > 0 (the multiplier lives in log space)"),
            (self.episode_cost_window_size >= 1, "episode_cost_window_size must be >= 1"),
            (self.actor_lr_scheduler in _SCHEDULERS, f"actor_lr_scheduler: one of {_SCHEDULERS}"),
            (self.critic_lr_scheduler in _SCHEDULERS, f"critic_lr_scheduler: one of {_SCHEDULERS}"),
            (self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}"),
            (self.param_dtype in DTYPES, f"param_dtype must be one of {sorted(DTYPES)}"),
            (self.actor is not None or self.model_config, "give actor or model_config"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PPOConfig: {message}")


_SCHEDULERS = ("cosine", "constant")

TINY_MODEL = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}

PRESETS: dict[str, dict[str, Any]] = {
    # safe-rlhf scripts/ppo-lag.sh (the defaults above).
    "ppo-lag": {},
    # seconds on a CPU: a random tiny Llama on the embedded sample, judged by the oracle.
    "tiny": {
        "model_config": TINY_MODEL,
        "prompt_batch_size": 8,
        "max_length": 48,
        "max_new_tokens": 16,
        "max_steps": 4,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "dtype": "float32",
        "save_every": 2,
        "seed": 0,
    },
}


def preset(name: str, **overrides: Any) -> PPOConfig:
    """A `PPOConfig` from a preset (``"ppo-lag"`` or ``"tiny"``) with field overrides.

    >>> preset("tiny", max_steps=2).max_steps, preset("ppo-lag", actor="sft-model").kl_coeff
    (2, 0.01)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PPOConfig(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PPOState:
    """What a checkpoint holds besides the data position.

    actor, reward_critic, cost_critic: `safedpo_jax.train.step.TrainState`s (parameters,
      AdamW state, update count, RNG key data; the actor's key seeds the rollouts).
    log_lambda: float32 scalar, the multiplier's log.
    cost_window: float32 ``[W]``, the most recent episode costs in the last ``cost_count``.
    cost_count: int32 scalar.
    step: int32 scalar, rollout steps done.
    """

    actor: steps.TrainState
    reward_critic: steps.TrainState
    cost_critic: steps.TrainState
    log_lambda: Array
    cost_window: Array
    cost_count: Array
    step: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Experience:
    """One rollout batch on the mesh, ``[B, T]`` over the whole sequence, ``[B, N]`` over
    the response (N generated slots; right padding).

    input_ids, attention_mask: int32 ``[B, T]``: the LEFT-padded prompt, then the response.
    response_mask: bool ``[B, N]``. old_logps, ref_logps: float32 ``[B, N]``.
    reward_values, cost_values: float32 ``[B, N]`` the critics' values before each token.
    reward_advantages, reward_returns, cost_advantages, cost_returns: float32 ``[B, N]``.
    rewards, costs: float32 ``[B]`` the end scores.
    """

    input_ids: Array
    attention_mask: Array
    response_mask: Array
    old_logps: Array
    ref_logps: Array
    reward_values: Array
    cost_values: Array
    reward_advantages: Array
    reward_returns: Array
    cost_advantages: Array
    cost_returns: Array
    rewards: Array
    costs: Array


@dataclasses.dataclass
class PPOResult:
    """What `train_ppo` returns."""

    step: int
    metrics: dict[str, float]
    history: list[dict[str, float]]
    output_dir: Path
    export_dir: Path | None
    resumed_from: int | None
    state: PPOState
    compute: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _options(config: PPOConfig, mesh: Mesh) -> dict[str, Any]:
    return {
        "dtype": DTYPES[config.dtype],
        "param_dtype": DTYPES[config.param_dtype],
        "scan_layers": config.scan_layers,
        "mesh": mesh,
    }


def _actor(config: PPOConfig, tokenizer: Any, mesh: Mesh) -> models.CausalLM:
    if config.actor is not None:
        model = models.from_pretrained(config.actor, **_options(config, mesh))
    else:
        model = models.init_model(
            random_model_config(config.model_config, tokenizer),
            rngs=nnx.Rngs(config.seed),
            **_options(config, mesh),
        )
    if not isinstance(model, models.CausalLM):
        raise ValueError(f"actor {config.actor} is not a causal language model")
    return model


def _critic(
    config: PPOConfig, path: str | None, actor: models.CausalLM, mesh: Mesh, seed: int
) -> models.ScoreModel:
    """A score model with per-token values: ``path``'s, else the actor's backbone with a
    zero head (values 0 at the start)."""
    if path is not None:
        critic = models.from_pretrained(path, **_options(config, mesh))
        if not isinstance(critic, models.ScoreModel):
            raise ValueError(f"critic {path} is not a score model")
        return critic
    arch = (actor.config.architectures or ("LlamaForCausalLM",))[0]
    score_config = dataclasses.replace(
        actor.config, architectures=(arch.replace("ForCausalLM", "ForScore"),)
    )
    critic = models.init_model(score_config, rngs=nnx.Rngs(seed), **_options(config, mesh))
    nnx.update(critic.model, jax.tree.map(jnp.copy, nnx.state(actor.model)))
    critic.score_head[...] = jnp.zeros_like(critic.score_head[...])
    return critic


def _optimizer(
    lr: float, scheduler: str, warmup_ratio: float, weight_decay: float, clip: float, total: int
) -> optax.GradientTransformation:
    if scheduler == "cosine":
        warmup = int(round(warmup_ratio * total))
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=max(total, warmup + 1), end_value=0.0
        )
    else:
        warmup = int(round(warmup_ratio * total))
        schedule = optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


# --------------------------------------------------------------------------------------
# The jitted pieces
# --------------------------------------------------------------------------------------


def _token_logps(model: models.Model, ids: Array, mask: Array, n: int) -> Array:
    """float32 ``[B, n]`` log-probs of the last ``n`` tokens given what precedes them.

    The library's one log-prob path (`safedpo_jax.logprobs.token_logps`: float32
    log-softmax), as for the preference objectives and the reference cache.
    """
    return logprobs.token_logps(model, ids, mask, jnp.ones_like(mask))[:, -n - 1 : -1]


def _values(critic: models.ScoreModel, ids: Array, mask: Array, n: int) -> Array:
    """float32 ``[B, n]`` values of the states before each of the last ``n`` tokens."""
    return critic(ids, mask, per_token=True)[:, -n - 1 : -1]


def _make_functions(
    config: PPOConfig,
    graphdefs: dict[str, Any],
    rests: dict[str, Any],
    optimizers: dict[str, optax.GradientTransformation],
    state: PPOState,
    ref_params: nnx.State,
    mesh: Mesh,
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """(experience, push_costs, update), each jitted with explicit shardings."""

    def merge(name: str, params: nnx.State) -> Any:
        return nnx.merge(graphdefs[name], params, rests[name])

    def split(name: str, params: nnx.State) -> models.Model:
        return models.Model(graphdef=graphdefs[name], params=params, rest=rests[name])

    def experience(
        state: PPOState,
        ref_params: nnx.State,
        prompt_ids: Array,
        prompt_mask: Array,
        tokens: Array,
        lengths: Array,
        rewards: Array,
        costs: Array,
    ) -> Experience:
        n = tokens.shape[1]
        response_mask = jnp.arange(n)[None, :] < lengths[:, None]
        ids = jnp.concatenate([prompt_ids, tokens], axis=1)
        mask = jnp.concatenate([prompt_mask, response_mask.astype(jnp.int32)], axis=1)
        old = _token_logps(split("actor", state.actor.params), ids, mask, n)
        ref = _token_logps(split("reference", ref_params), ids, mask, n)
        v_r = _values(merge("reward_critic", state.reward_critic.params), ids, mask, n)
        v_c = _values(merge("cost_critic", state.cost_critic.params), ids, mask, n)
        r_stream, c_stream = losses.kl_penalized_streams(
            rewards,
            costs,
            old,
            ref,
            response_mask,
            kl_coeff=config.kl_coeff,
            clip=config.clip_range_score,
            cost_kl=config.cost_kl,
        )
        kw = dict(gamma=config.gamma, lam=config.gae_lambda)
        adv_r, ret_r = losses.gae(r_stream, v_r, response_mask, **kw)
        adv_c, ret_c = losses.gae(c_stream, v_c, response_mask, **kw)
        return Experience(
            ids, mask, response_mask, old, ref, v_r, v_c, adv_r, ret_r, adv_c, ret_c,
            rewards.astype(jnp.float32), costs.astype(jnp.float32),
        )  # fmt: skip

    def push_costs(state: PPOState, costs: Array) -> PPOState:
        window, count = losses.update_cost_window(state.cost_window, state.cost_count, costs)
        return dataclasses.replace(state, cost_window=window, cost_count=count)

    def update(state: PPOState, batch: Experience) -> tuple[PPOState, dict[str, Array]]:
        mask = batch.response_mask
        n = mask.shape[1]
        j_c = losses.window_mean(state.cost_window, state.cost_count)
        updated = losses.lagrange_update(
            state.log_lambda,
            j_c,
            threshold=config.threshold,
            lr=config.lambda_lr,
            lambda_max=config.lambda_max,
        )
        log_lambda = jnp.where(
            state.actor.step >= config.lambda_update_delay_steps, updated, state.log_lambda
        )
        multiplier = jnp.exp(log_lambda)
        advantages = losses.lagrangian_advantage(
            batch.reward_advantages,
            batch.cost_advantages,
            multiplier,
            normalize=config.normalize_advantage,
        )

        def actor_loss(params: nnx.State) -> tuple[Array, Array]:
            logps = _token_logps(split("actor", params), batch.input_ids, batch.attention_mask, n)
            per_seq = losses.ppo_clipped_loss(
                logps, batch.old_logps, advantages, mask, clip=config.clip_range_ratio
            )
            return jnp.mean(per_seq), logps

        def critic_loss(name: str, old: Array, returns: Array) -> Callable[..., Array]:
            def fn(params: nnx.State) -> Array:
                values = _values(merge(name, params), batch.input_ids, batch.attention_mask, n)
                per_seq = losses.clipped_value_loss(
                    values, old, returns, mask, clip=config.clip_range_value
                )
                return jnp.mean(per_seq)

            return fn

        (a_loss, logps), a_grad = jax.value_and_grad(actor_loss, has_aux=True)(state.actor.params)
        r_loss, r_grad = jax.value_and_grad(
            critic_loss("reward_critic", batch.reward_values, batch.reward_returns)
        )(state.reward_critic.params)
        c_loss, c_grad = jax.value_and_grad(
            critic_loss("cost_critic", batch.cost_values, batch.cost_returns)
        )(state.cost_critic.params)
        grads = (a_grad, r_grad, c_grad)
        finite = jnp.isfinite(a_loss) & jnp.isfinite(r_loss) & jnp.isfinite(c_loss)
        finite &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

        def apply(ts: steps.TrainState, grad: nnx.State, name: str) -> steps.TrainState:
            upd, opt_state = optimizers[name].update(grad, ts.opt_state, ts.params)
            new = steps.TrainState(
                step=ts.step + 1,
                params=optax.apply_updates(ts.params, upd),
                opt_state=opt_state,
                rng=ts.rng,
            )
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, ts)

        new_state = dataclasses.replace(
            state,
            actor=apply(state.actor, a_grad, "actor"),
            reward_critic=apply(state.reward_critic, r_grad, "reward_critic"),
            cost_critic=apply(state.cost_critic, c_grad, "cost_critic"),
            log_lambda=jnp.where(finite, log_lambda, state.log_lambda),
        )
        kl_seq = jnp.sum(jnp.where(mask, batch.old_logps - batch.ref_logps, 0.0), axis=-1)
        metrics = {
            "train/actor_loss": a_loss,
            "train/reward_critic_loss": r_loss,
            "train/cost_critic_loss": c_loss,
            "train/lambda": jnp.exp(new_state.log_lambda),
            "train/episode_cost": j_c,
            "train/reward": jnp.mean(batch.rewards),
            "train/cost": jnp.mean(batch.costs),
            "train/kl": jnp.mean(kl_seq),
            "train/clip_fraction": jnp.mean(
                losses.ppo_clip_fraction(logps, batch.old_logps, mask, clip=config.clip_range_ratio)
            ),
            "train/reward_advantage": jnp.mean(
                losses.masked_token_mean(batch.reward_advantages, mask)
            ),
            "train/cost_advantage": jnp.mean(losses.masked_token_mean(batch.cost_advantages, mask)),
            "train/reward_value": jnp.mean(losses.masked_token_mean(batch.reward_values, mask)),
            "train/cost_value": jnp.mean(losses.masked_token_mean(batch.cost_values, mask)),
            "train/response_length": jnp.mean(jnp.sum(mask, axis=-1).astype(jnp.float32)),
            "finite": finite,
        }
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    ref_sh = jax.tree.map(lambda x: x.sharding, ref_params)
    batch_sh = sharding.batch_sharding(mesh, 1)
    state_in = (state_sh, batch_sh)
    return (
        costs.counted(
            "experience",
            jax.jit(
                experience,
                in_shardings=(state_sh, ref_sh) + (batch_sh,) * 6,
                out_shardings=batch_sh,
            ),
        ),
        costs.counted(
            "push_costs",
            jax.jit(push_costs, in_shardings=state_in, out_shardings=state_sh, donate_argnums=(0,)),
        ),
        costs.counted(
            "update",
            jax.jit(
                update,
                in_shardings=state_in,
                out_shardings=(state_sh, replicated),
                donate_argnums=(0,),
            ),
        ),
    )


# --------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------


def _oracle_scorers() -> tuple[TextScorer, TextScorer]:
    """The synthetic world's oracle, by name (`resolve_oracle`: no import of the world)."""
    return resolve_oracle("synthetic").scorers()


def _scorer(
    scorer: TextScorer | models.ScoreModel | None, path: str | None, config: PPOConfig, mesh: Mesh
) -> TextScorer | models.ScoreModel | None:
    if scorer is not None:
        return scorer
    if path is not None:
        model = models.from_pretrained(path, **_options(config, mesh))
        if not isinstance(model, models.ScoreModel):
            raise ValueError(f"{path} is not a score model")
        return model
    return None


def _score_fn(scorer: TextScorer | models.ScoreModel, name: str) -> Callable[..., np.ndarray]:
    """``(ids, mask, prompts, responses) -> float [B]`` for either kind of scorer (a score
    model's forward is counted as ``name``)."""
    if isinstance(scorer, models.ScoreModel):
        graphdef, state = nnx.split(scorer)
        forward = costs.counted(name, jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m)))
        return lambda ids, mask, prompts, responses: forward(state, ids, mask)
    if not callable(scorer):
        raise TypeError(f"a scorer must be a ScoreModel or a callable, got {type(scorer)}")

    def score(ids: Array, mask: Array, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = np.asarray(scorer(prompts, responses), np.float32)
        if out.shape != (len(prompts),) or not np.all(np.isfinite(out)):
            raise ValueError(
                f"scorer returned {out.shape} scores (or non-finite) for {len(prompts)}"
            )
        return out

    return score


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train_ppo(
    config: PPOConfig,
    *,
    reward_scorer: TextScorer | models.ScoreModel | None = None,
    cost_scorer: TextScorer | models.ScoreModel | None = None,
    actor: models.CausalLM | None = None,
    stop_after: int | None = None,
) -> PPOResult:
    """Runs ``config`` from the start or from its newest checkpoint.

    ``reward_scorer`` / ``cost_scorer``: a ``(prompts, responses) -> float [B]`` callable
    (raw prompts, decoded responses) or a `ScoreModel` scored on the rollout's own ids;
    default: ``config.reward_model`` / ``cost_model``, else the synthetic oracle.
    ``actor``: an already-built actor on this run's mesh (overrides ``config.actor``; it is
    also the reference). ``stop_after``: stop (with a checkpoint) after this many steps in
    this call, as if the job were killed there; a later call resumes.
    """
    ledger = costs.Ledger()
    start = time.perf_counter()
    with costs.recording(ledger):
        result = _train_ppo(config, ledger, reward_scorer, cost_scorer, actor, stop_after)
    result.compute["seconds"]["total"] = time.perf_counter() - start
    if jax.process_index() == 0:
        path = Path(config.output_dir) / "compute.json"
        path.write_text(json.dumps(result.compute, indent=2))
    return result


def _train_ppo(
    config: PPOConfig,
    ledger: costs.Ledger,
    reward_scorer: TextScorer | models.ScoreModel | None,
    cost_scorer: TextScorer | models.ScoreModel | None,
    actor: models.CausalLM | None,
    stop_after: int | None,
) -> PPOResult:
    output_dir = Path(config.output_dir)
    mesh = sharding.make_mesh(config.mesh_data, config.mesh_fsdp, config.mesh_tensor)
    primary = jax.process_index() == 0
    tok_source = (
        config.tokenizer or config.actor or ("sample" if config.dataset == "sample" else None)
    )
    if tok_source is None:
        raise ValueError("PPOConfig: a random actor needs tokenizer= (or dataset='sample')")
    tokenizer = load_tokenizer(tok_source)
    prompts = tokenize_prompts(
        load_prompts(config.dataset, config.split), tokenizer, template=config.template
    )
    if len(prompts) < config.prompt_batch_size:
        raise ValueError(
            f"{len(prompts)} prompts are fewer than prompt_batch_size={config.prompt_batch_size}"
        )
    shards = sharding.batch_shards(mesh)
    if config.prompt_batch_size % shards:
        raise ValueError(
            f"prompt_batch_size {config.prompt_batch_size} is not a multiple of the mesh's "
            f"data x fsdp size {shards}"
        )

    def iterator() -> BatchIterator:
        return BatchIterator(
            prompts,
            batch_size=config.prompt_batch_size,
            seed=config.seed,
            num_epochs=config.epochs,
            drop_remainder=True,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    batches = iterator()
    total_steps = len(batches) if config.max_steps is None else min(len(batches), config.max_steps)
    total_updates = total_steps * config.update_iters

    actor_model = actor if actor is not None else _actor(config, tokenizer, mesh)
    reward_scorer = _scorer(reward_scorer, config.reward_model, config, mesh)
    cost_scorer = _scorer(cost_scorer, config.cost_model, config, mesh)
    if reward_scorer is None or cost_scorer is None:
        if config.dataset != "sample":
            raise ValueError("give reward_model and cost_model (the oracle knows the sample only)")
        oracle_r, oracle_c = _oracle_scorers()
        reward_scorer = reward_scorer or oracle_r
        cost_scorer = cost_scorer or oracle_c
    critic_paths = (
        config.reward_critic or config.reward_model,
        config.cost_critic or config.cost_model,
    )
    critics = [
        _critic(config, path, actor_model, mesh, config.seed + 1 + i)
        for i, path in enumerate(critic_paths)
    ]

    graphdefs, rests, params = {}, {}, {}
    for name, model in zip(
        ("actor", "reward_critic", "cost_critic"), [actor_model, *critics], strict=True
    ):
        graphdefs[name], params[name], rests[name] = nnx.split(model, nnx.Param, ...)
    graphdefs["reference"], rests["reference"] = graphdefs["actor"], rests["actor"]
    ref_params = jax.tree.map(jnp.copy, params["actor"])
    c = config
    optimizers = {
        "actor": _optimizer(
            c.actor_lr, c.actor_lr_scheduler, c.actor_warmup_ratio, c.actor_weight_decay,
            c.max_grad_norm, total_updates,
        ),
        "reward_critic": _optimizer(
            c.critic_lr, c.critic_lr_scheduler, c.critic_warmup_ratio, c.critic_weight_decay,
            c.max_grad_norm, total_updates,
        ),
    }  # fmt: skip
    optimizers["cost_critic"] = optimizers["reward_critic"]
    replicated = NamedSharding(mesh, PartitionSpec())
    put = lambda x: jax.device_put(x, replicated)  # noqa: E731
    state = PPOState(
        actor=steps.init_state(params["actor"], optimizers["actor"], mesh, config.seed),
        reward_critic=steps.init_state(
            params["reward_critic"], optimizers["reward_critic"], mesh, config.seed + 1
        ),
        cost_critic=steps.init_state(
            params["cost_critic"], optimizers["cost_critic"], mesh, config.seed + 2
        ),
        log_lambda=put(jnp.float32(math.log(config.lambda_init))),
        cost_window=put(jnp.zeros((config.episode_cost_window_size,), jnp.float32)),
        cost_count=put(jnp.zeros((), jnp.int32)),
        step=put(jnp.zeros((), jnp.int32)),
    )
    experience_fn, push_fn, update_fn = _make_functions(
        config, graphdefs, rests, optimizers, state, ref_params, mesh
    )
    score_reward = _score_fn(reward_scorer, "score_reward")
    score_cost = _score_fn(cost_scorer, "score_cost")

    checkpointer = Checkpointer(
        output_dir / "checkpoints", save_every=config.save_every, keep=config.keep_checkpoints
    )
    metrics_log = MetricsLog(output_dir, enabled=primary, tensorboard=False)
    start, resumed_from = 0, None
    restored = checkpointer.restore_latest(abstract_like(state))
    if restored is not None:
        resumed_from, state, meta = restored
        batches.restore(meta["data"])
        start = resumed_from
        metrics_log.truncate_after(resumed_from)
    if primary:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "ppo_config.json").write_text(
            json.dumps(dataclasses.asdict(config), indent=2, default=str)
        )

    put_batch = lambda x: sharding.to_global(np.asarray(x), mesh)  # noqa: E731
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    step, saved = start, start
    try:
        with jax.set_mesh(mesh):
            for step in range(start, total_steps):
                if stop_after is not None and step - start >= stop_after:
                    break
                host = next(batches)
                t0 = time.perf_counter()
                p = host.input_ids.shape[1]
                n = config.max_new_tokens or max(1, config.max_length - p)
                n = min(n, max(1, config.max_length - p))
                model = nnx.merge(graphdefs["actor"], state.actor.params, rests["actor"])
                out = generation.generate(
                    model,
                    host.input_ids,
                    host.attention_mask,
                    max_new_tokens=n,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=prompts.pad_id,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=_rollout_seed(state, step),
                    row_ids=host.prompt_index,
                    mesh=mesh,
                )
                jax.block_until_ready(out.tokens)
                t1 = time.perf_counter()
                texts = _texts(tokenizer, out, host, prompts)
                ids = put_batch(host.input_ids)
                mask = put_batch(host.attention_mask)
                seq_ids, seq_mask = _sequence(ids, mask, out)
                rewards = _as_global(score_reward(seq_ids, seq_mask, *texts), mesh)
                costs = _as_global(score_cost(seq_ids, seq_mask, *texts), mesh)
                t2 = time.perf_counter()
                batch = experience_fn(
                    state, ref_params, ids, mask, out.tokens, out.lengths, rewards, costs
                )
                state = push_fn(state, batch.costs)
                for _ in range(config.update_iters):
                    state, step_metrics = update_fn(state, batch)
                    if not bool(step_metrics["finite"]):
                        raise NonFiniteError(
                            f"step {step + 1}: a loss or gradient is not finite "
                            f"(actor {float(step_metrics['train/actor_loss'])}, reward critic "
                            f"{float(step_metrics['train/reward_critic_loss'])}, cost critic "
                            f"{float(step_metrics['train/cost_critic_loss'])})"
                        )
                state = dataclasses.replace(state, step=state.step + 1)
                jax.block_until_ready(state)
                t3 = time.perf_counter()
                tokens = float(np.sum(jax.device_get(out.lengths)))
                metrics = {
                    k: float(v) for k, v in jax.device_get(step_metrics).items() if k != "finite"
                }
                metrics.update(
                    {
                        "time/generation_s": t1 - t0,
                        "time/scoring_s": t2 - t1,
                        "time/update_s": t3 - t2,
                        "time/step_s": t3 - t0,
                        "perf/generated_tokens_per_s": tokens / max(t1 - t0, 1e-9),
                        "perf/tokens_per_s": tokens / max(t3 - t0, 1e-9),
                        "perf/generated_tokens": tokens,
                    }
                )
                history.append({"step": step + 1, **metrics})
                metrics_log.write(step + 1, metrics)
                if checkpointer.save(step + 1, state, {"data": batches.state(), "step": step + 1}):
                    saved = step + 1
                step += 1
        if step > start and saved != step:
            checkpointer.save(step, state, {"data": batches.state(), "step": step}, force=True)
    finally:
        checkpointer.close()
        metrics_log.close()

    export_dir = None
    if config.export and step >= total_steps:
        export_dir = output_dir / "hf"
        models.save_pretrained(
            nnx.merge(graphdefs["actor"], state.actor.params, rests["actor"]), export_dir
        )
        if primary:
            tokenizer.save_pretrained(str(export_dir))
    result = PPOResult(step, metrics, history, output_dir, export_dir, resumed_from, state)
    phases = ("generation", "scoring", "update")
    seconds = {p: float(sum(h[f"time/{p}_s"] for h in history)) for p in phases}
    result.compute = {
        "seconds": seconds,
        **ledger.to_dict(),
        "devices": jax.device_count(),
        "platform": jax.default_backend(),
        "steps_run": len(history),
        "generated_tokens": float(sum(h["perf/generated_tokens"] for h in history)),
    }
    return result


def load_prompts(source: str, split: str) -> list[str]:
    """The distinct non-blank ``prompt`` values of a dataset (`safedpo_jax.data.load_rows`
    sources; only the ``prompt`` column is read), in first-seen order.

    >>> len(load_prompts("sample", "test"))
    120
    """
    raw = load_rows(source, split=split)
    out: dict[str, None] = {}
    for table in raw.tables:
        if "prompt" not in table.columns:
            raise ValueError(
                f"{table.file}: no 'prompt' column (found: {', '.join(table.columns)})"
            )
        for i, prompt in enumerate(table.columns["prompt"]):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{table.file}: row {i} has no prompt text ({prompt!r})")
            out[prompt] = None
    return list(out)


def _rollout_seed(state: PPOState, step: int) -> int:
    """The sampling seed of rollout ``step``: from the actor state's RNG key and the step."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.actor.rng), step)
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _sequence(ids: Array, mask: Array, out: generation.GenerationOutput) -> tuple[Array, Array]:
    n = out.tokens.shape[1]
    response_mask = (jnp.arange(n)[None, :] < out.lengths[:, None]).astype(jnp.int32)
    return jnp.concatenate([ids, out.tokens], axis=1), jnp.concatenate([mask, response_mask], 1)


def _texts(
    tokenizer: Any, out: generation.GenerationOutput, host: Any, prompts: Any
) -> tuple[list[str], list[str]]:
    """Raw prompts and decoded responses of the whole global batch (every host)."""
    gathered = generation.GenerationOutput(
        *(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in
          (out.tokens, out.lengths, out.finished))
    )  # fmt: skip
    index = np.asarray(multihost_utils.process_allgather(host.prompt_index, tiled=True))
    return [prompts.prompts[i] for i in index], generation.decode(tokenizer, gathered)


def _as_global(scores: Any, mesh: Mesh) -> Array:
    """Scores of the global batch (numpy, on every host, or a device array) on the mesh."""
    if isinstance(scores, jax.Array):
        return jax.device_put(scores.astype(jnp.float32), sharding.batch_sharding(mesh, 1))
    scores = np.asarray(scores, np.float32)
    local = len(scores) // jax.process_count()
    mine = scores[jax.process_index() * local : (jax.process_index() + 1) * local]
    return sharding.to_global(mine, mesh)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m safedpo_jax.train.ppo",
        description="SafeRLHF PPO-Lagrangian: every PPOConfig field is a flag; values not "
        "given come from the preset.",
    )
    parser.add_argument(
        "--preset",
        default="ppo-lag",
        choices=sorted(PRESETS),
        help="'ppo-lag': safe-rlhf's ppo-lag.sh; 'tiny': a random tiny Llama on the embedded "
        "sample, judged by the oracle, in seconds [default: ppo-lag]",
    )
    defaults = {f.name: f.default for f in dataclasses.fields(PPOConfig)}
    for field in dataclasses.fields(PPOConfig):
        flag = "--" + field.name.replace("_", "-")
        shown = "none" if defaults[field.name] is None else defaults[field.name]
        helptext = f"{field.metadata['help']} [default: {shown}]"
        if field.name == "model_config":
            parser.add_argument(flag, type=json.loads, default=None, help=helptext)
        elif field.type in ("bool",):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        else:
            kind: Callable[[str], Any] = str
            if field.type.startswith("float"):
                kind = float
            elif field.type.startswith("int"):
                kind = int
            parser.add_argument(flag, type=kind, default=None, help=helptext)
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> PPOConfig:
    """The `PPOConfig` a command line asks for: the preset, then the flags given.

    >>> config_from_args(["--preset", "tiny", "--kl-coeff", "0.05", "--no-export"]).kl_coeff
    0.05
    """
    args = vars(_parser().parse_args(argv))
    name = args.pop("preset")
    return preset(name, **{k: v for k, v in args.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO)
    result = train_ppo(config_from_args(argv))
    if jax.process_index() == 0:
        print(json.dumps({"step": result.step, **result.metrics}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
