"""The jitted, sharded SafeDPO train step.

``train_step(state, ref_params, batch) -> (state, metrics)`` is one pure function:

1. the policy runs once over chosen and rejected together (``[B, 2, T]`` folded into
   ``[2B, T]``) and yields per-sequence log-probs ``[B, 2]``: from full logits while
   they are small, else chunk by chunk along the sequence from the final hidden states,
   so the ``[2B, T, V]`` float32 logits never exist (``logprob_chunk_size``;
   `auto_chunk_size` decides by default);
2. the reference log-probs come from the frozen reference under `jax.lax.stop_gradient`
   (``ref_params`` given) or from the batch (cached, ``batch.ref_logps``);
3. `safedpo_jax.losses.safe_daa_loss` applies the safety transform and margin (or the
   plain loss for the DPO baselines);
4. gradients are accumulated over ``micro_batches`` microbatches: each contributes
   ``sum(losses) / n_kept`` where ``n_kept`` counts the kept pairs of the *whole* global
   batch (it depends on the labels alone), so the accumulated gradient equals the
   big-batch gradient exactly;
5. optax applies global-norm clipping and AdamW. A non-finite loss or gradient leaves
   the state untouched and is reported in ``metrics["finite"]``.

`setup_step` builds the state, the optimizer and the compiled step from two models and a
`TrainConfig` (what `safedpo_jax.train.loop.train` runs, without data or loop); the
benchmarks under ``experiments/benchmarks/`` time it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from safedpo_jax import losses, sharding
from safedpo_jax.data.batches import PairBatch, SFTBatch
from safedpo_jax.train.config import TrainConfig

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """What a checkpoint holds besides the data position.

    step: int32 scalar, optimizer steps taken.
    params: the policy's `nnx.Param` state.
    opt_state: the optax state (moments sharded like the parameters).
    rng: uint32 key data, split every step; the objectives here are deterministic, it
      is carried so stochastic extensions (dropout, sampled evaluation) resume exactly.
    """

    step: Array
    params: nnx.State
    opt_state: Any
    rng: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepBatch:
    """A global batch on the devices; the leading axis is split over ``("data", "fsdp")``.

    input_ids, attention_mask, loss_mask: [B, 2, T] (right-padded; see `PairBatch`).
    unsafe: bool [B, 2], True = unsafe.
    valid: bool [B], False for padding pairs.
    ref_logps: float32 [B, 2] cached reference log-probs, or None (in-step reference).
    """

    input_ids: Array
    attention_mask: Array
    loss_mask: Array
    unsafe: Array
    valid: Array
    ref_logps: Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SFTStepBatch:
    """A global SFT batch: input_ids, attention_mask, loss_mask [B, T]; valid [B]."""

    input_ids: Array
    attention_mask: Array
    loss_mask: Array
    valid: Array


# --------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_ratio * total_steps`` steps, then cosine decay to 0."""
    warmup = int(round(config.warmup_ratio * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the warmup-cosine schedule."""
    adamw = optax.adamw(
        learning_rate_schedule(config, total_steps),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
    return adamw


def init_state(
    params: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int
) -> TrainState:
    """A `TrainState` whose optimizer moments take the parameters' shardings."""
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)


def state_shardings(state: TrainState) -> TrainState:
    """The shardings of a concrete state (the jit boundary keeps them)."""
    return jax.tree.map(lambda x: x.sharding, state)


# --------------------------------------------------------------------------------------
# Log-probs and losses
# --------------------------------------------------------------------------------------


# The auto rule of `TrainConfig.logprob_chunk_size` (experiments/benchmarks/logprob_memory.py
# and RESULTS.md hold the measurements behind it): a device's float32 [rows, T, V] logits
# stay whole up to LOGITS_FULL_MAX_BYTES; beyond, the chunked path runs with the fewest
# chunks whose blocks hold at most LOGITS_CHUNK_BYTES each. On 2 CPU cores the chunked
# path was never slower than full logits from 125 MiB of logits up (0.45 to 0.77 of the
# time, blocks of 32 to 512 MiB alike) and needed 2 to 9x less memory from 250 MiB up.
LOGITS_FULL_MAX_BYTES = 32 * 2**20
LOGITS_CHUNK_BYTES = 256 * 2**20


def auto_chunk_size(rows: int, length: int, vocab: int) -> int:
    """Positions per log-prob chunk for ``rows`` sequences of ``length`` on one device (0 = full).

    Full logits while their float32 ``[rows, length, vocab]`` block takes at most
    `LOGITS_FULL_MAX_BYTES`; otherwise the fewest equal chunks whose blocks take at most
    `LOGITS_CHUNK_BYTES` (large blocks keep the projection's matmuls large), each rounded
    up to a multiple of 8 positions.

    >>> auto_chunk_size(64, 64, 678)  # the tiny preset: 11 MiB of logits
    0
    >>> auto_chunk_size(2, 512, 32000)  # 125 MiB: one rematerialised chunk
    512
    >>> auto_chunk_size(4, 2048, 128256)  # two pairs of 2k tokens, Llama 3's vocabulary
    128
    """
    full = 4 * rows * length * vocab
    if full <= LOGITS_FULL_MAX_BYTES:
        return 0
    n_chunks = math.ceil(full / LOGITS_CHUNK_BYTES)
    return min(length, 8 * math.ceil(math.ceil(length / n_chunks) / 8))


def _rows_per_device(rows: int) -> int:
    """``rows`` over the batch-axis devices of the ambient mesh (all of them without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return rows
    shards = math.prod(size for name, size in mesh.shape.items() if name in ("data", "fsdp"))
    return max(1, rows // shards)


def sequence_logps(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    input_ids: Array,
    attention_mask: Array,
    loss_mask: Array,
    *,
    chunk_size: int | None,
) -> Array:
    """Summed response log-probs of each sequence, float32 ``[...]`` for ids ``[..., T]``.

    The logits at position ``t - 1`` score the token at ``t``: targets are ``ids[..., 1:]``
    and the loss mask is shifted the same way. ``chunk_size``: positions per chunk of
    `losses.chunked_sequence_logprobs`, 0 for full logits, None for `auto_chunk_size`
    (decided at trace time from the shapes and the ambient mesh).
    """
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    ids = input_ids.reshape(-1, t)
    mask = attention_mask.reshape(-1, t)
    # Targets shift left instead of the logits shifting right: position T - 1 gets a
    # masked dummy target, so the [rows, T, V] logits (or hidden states) are used whole,
    # with no sliced copy of them.
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
    target_mask = jnp.pad(loss_mask.reshape(-1, t)[:, 1:].astype(bool), ((0, 0), (0, 1)))
    model = nnx.merge(graphdef, params, rest)
    if chunk_size is None:
        rows = _rows_per_device(ids.shape[0])
        chunk_size = auto_chunk_size(rows, t, model.config.vocab_size)
    if chunk_size:
        hidden = model(ids, mask, return_hidden=True)
        logps = losses.chunked_sequence_logprobs(
            hidden, model.lm_head_weight(), targets, target_mask, chunk_size=chunk_size
        )
    else:
        logits = model(ids, mask)
        logps = losses.sequence_logprobs(logits, targets, target_mask)
    return logps.reshape(lead)


def make_reference_logps(
    config: TrainConfig, graphdef: nnx.GraphDef, rest: nnx.State
) -> Callable[[nnx.State, StepBatch], Array]:
    """Jitted ``(ref_params, batch) -> [B, 2]`` float32 log-probs (for cached references)."""

    @jax.jit
    def fn(params: nnx.State, batch: StepBatch) -> Array:
        return sequence_logps(
            graphdef,
            params,
            rest,
            batch.input_ids,
            batch.attention_mask,
            batch.loss_mask,
            chunk_size=config.logprob_chunk_size,
        )

    return fn


def link_for(config: TrainConfig) -> losses.Link:
    """The direct-alignment link of ``config.loss``."""
    if config.loss == "sigmoid":
        return losses.sigmoid_link(config.label_smoothing)
    if config.loss == "ipo":
        return losses.ipo_link(config.beta)
    return losses.hinge_link()


def preference_output(
    config: TrainConfig, policy_logps: Array, ref_logps: Array, unsafe: Array, valid: Array
) -> losses.PreferenceOutput:
    """The kernel on ``[B, 2]`` log-probs: SafeDAA for ``pairs="safedpo"``, plain otherwise."""
    safe = config.pairs == "safedpo"
    return losses.safe_daa_loss(
        link_for(config),
        policy_logps[:, 0],
        policy_logps[:, 1],
        ref_logps[:, 0],
        ref_logps[:, 1],
        unsafe[:, 0] if safe else None,
        unsafe[:, 1] if safe else None,
        beta=config.beta,
        delta=config.delta if safe else 0.0,
        where=valid,
    )


def preference_forward(
    config: TrainConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    ref_graphdef: nnx.GraphDef | None,
    ref_params: nnx.State | None,
    ref_rest: nnx.State | None,
    batch: StepBatch,
) -> losses.PreferenceOutput:
    """The kernel's output on ``batch``: the policy's log-probs against the reference's.

    The reference log-probs come from the batch when cached, else from a forward pass of
    the reference (no gradient flows into it).
    """
    chunk = config.logprob_chunk_size
    policy = sequence_logps(
        graphdef, params, rest, batch.input_ids, batch.attention_mask, batch.loss_mask,
        chunk_size=chunk,
    )  # fmt: skip
    if batch.ref_logps is not None:
        ref = batch.ref_logps
    else:
        ref = jax.lax.stop_gradient(
            sequence_logps(
                ref_graphdef,
                ref_params,
                ref_rest,
                batch.input_ids,
                batch.attention_mask,
                batch.loss_mask,
                chunk_size=chunk,
            )
        )
    return preference_output(config, policy, ref, batch.unsafe, batch.valid)


def sft_forward(
    config: TrainConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: SFTStepBatch,
) -> tuple[Array, Array]:
    """(summed response log-probs ``[B]``, response tokens counted) of valid rows of ``batch``."""
    mask = batch.loss_mask & batch.valid[:, None]
    logps = sequence_logps(
        graphdef, params, rest, batch.input_ids, batch.attention_mask, mask,
        chunk_size=config.logprob_chunk_size,
    )  # fmt: skip
    return logps, jnp.sum(mask[:, 1:]).astype(jnp.float32)


def kept_count(config: TrainConfig, unsafe: Array, valid: Array) -> Array:
    """Pairs that count in the mean: valid and, for SafeDPO, not dropped by T."""
    keep = valid
    if config.pairs == "safedpo":
        keep = keep & ~losses.safety_transform(unsafe[:, 0], unsafe[:, 1]).drop
    return jnp.sum(keep).astype(jnp.float32)


def _microbatches(tree: Any, k: int) -> Any:
    """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, j + k, ... .

    The strided split keeps every microbatch spread over all devices of the batch axis
    (a contiguous split would put each microbatch on a subset of them).
    """

    def split(x: Array) -> Array:
        return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)

    return jax.tree.map(split, tree)


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def make_train_step(
    config: TrainConfig,
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    ref_graphdef: nnx.GraphDef | None,
    ref_rest: nnx.State | None,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> Callable[[TrainState, nnx.State | None, StepBatch], tuple[TrainState, dict[str, Array]]]:
    """The un-jitted step; `jit_step` compiles it with explicit shardings."""
    k = config.micro_batches

    def step(
        state: TrainState, ref_params: nnx.State | None, batch: StepBatch
    ) -> tuple[TrainState, dict[str, Array]]:
        n_kept = kept_count(config, batch.unsafe, batch.valid)

        def micro_loss(params: nnx.State, mb: StepBatch) -> tuple[Array, dict[str, Array]]:
            out = preference_forward(
                config, graphdef, params, rest, ref_graphdef, ref_params, ref_rest, mb
            )
            return out.losses.sum() / jnp.maximum(n_kept, 1.0), losses.metric_sums(out, mb.valid)

        loss, grads, sums = _accumulate(micro_loss, state.params, batch, k)

        tokens = jnp.sum(batch.attention_mask).astype(jnp.float32)
        return _apply(state, grads, loss, sums, tokens, optimizer, schedule)

    return step


def _accumulate(
    micro_loss: Callable[[nnx.State, Any], tuple[Array, dict[str, Array]]],
    params: nnx.State,
    batch: Any,
    k: int,
) -> tuple[Array, nnx.State, dict[str, Array]]:
    """Loss, gradient and metric sums of ``batch``, over ``k`` microbatches.

    ``micro_loss(params, microbatch)`` returns the microbatch's share of the batch loss
    (already divided by the whole batch's denominator) and its metric sums; shares,
    gradients and sums add up across the `lax.scan` over microbatches.
    """
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if k == 1:
        (loss, sums), grads = grad_fn(params, batch)
        return loss, grads, sums

    def body(carry, mb):
        loss_acc, grads_acc, sums_acc = carry
        (loss, sums), grads = grad_fn(params, mb)
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (loss_acc + loss, add(grads_acc, grads), add(sums_acc, sums)), None

    _, sums0 = jax.eval_shape(micro_loss, params, _first(batch, k))
    init = (
        jnp.zeros((), jnp.float32),
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(jnp.zeros_like, sums0),
    )
    (loss, grads, sums), _ = jax.lax.scan(body, init, _microbatches(batch, k))
    return loss, grads, sums


def make_sft_step(
    config: TrainConfig,
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> Callable[[TrainState, None, SFTStepBatch], tuple[TrainState, dict[str, Array]]]:
    """Supervised fine-tuning: mean negative log-likelihood per response token.

    The mean is over the response tokens (and EOS) of the whole global batch, so the
    accumulated gradient equals the big-batch gradient as for the preference step.
    """
    k = config.micro_batches

    def step(
        state: TrainState, _: None, batch: SFTStepBatch
    ) -> tuple[TrainState, dict[str, Array]]:
        n_tokens = jnp.sum(batch.loss_mask[:, 1:] & batch.valid[:, None]).astype(jnp.float32)

        def micro_loss(params: nnx.State, mb: SFTStepBatch) -> tuple[Array, dict[str, Array]]:
            logps, tokens = sft_forward(config, graphdef, params, rest, mb)
            nll = -jnp.sum(logps)
            sums = {
                "loss": jnp.stack([nll, tokens]),
                "logps/sequence": jnp.stack(
                    [jnp.sum(logps), jnp.sum(mb.valid).astype(jnp.float32)]
                ),
            }
            return nll / jnp.maximum(n_tokens, 1.0), sums

        loss, grads, sums = _accumulate(micro_loss, state.params, batch, k)
        tokens = jnp.sum(batch.attention_mask).astype(jnp.float32)
        return _apply(state, grads, loss, sums, tokens, optimizer, schedule)

    return step


def _first(batch: Any, k: int) -> Any:
    """An abstract microbatch (for shapes)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] // k, *x.shape[1:]), x.dtype), batch
    )


def _apply(
    state: TrainState,
    grads: nnx.State,
    loss: Array,
    sums: dict[str, Array],
    tokens: Array,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, Array]]:
    """The optimizer update, skipped (state unchanged) when the loss or gradient is not finite."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = losses.finalize_metrics(sums)
    metrics.update(
        {
            "objective": loss,  # the value whose gradient was taken (= metrics["loss"])
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "finite": finite,
            "tokens": tokens,  # non-pad tokens in the global batch
        }
    )
    return new, metrics


def jit_step(
    step: Callable[..., Any], state: TrainState, mesh: Mesh, *, ref_params: nnx.State | None
) -> Callable[..., Any]:
    """Compiles ``step`` with explicit in/out shardings and a donated state.

    Parameters and optimizer state keep the shardings they have (the logical-axis rules),
    the frozen reference keeps its own, every batch array is split over
    ``("data", "fsdp")`` on its leading axis, and metrics come back replicated.
    """
    state_sh = state_shardings(state)
    ref_sh = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = sharding.batch_sharding(mesh, 1)  # a prefix: applies to every batch leaf
    return jax.jit(
        step,
        in_shardings=(state_sh, ref_sh, batch_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )


@dataclasses.dataclass
class StepSetup:
    """A policy, its frozen reference, the optimizer and the initial state: `train` minus data.

    graphdef / rest: the policy's static parts (its `nnx.Param` state lives in
    ``state.params``). ref_graphdef / ref_rest / ref_params: the frozen reference (None for
    SFT). optimizer / schedule: as `make_optimizer` and `learning_rate_schedule` build them.
    """

    config: TrainConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    rest: nnx.State
    ref_graphdef: nnx.GraphDef | None
    ref_rest: nnx.State | None
    ref_params: nnx.State | None
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState

    def compile(self, *, reference_in_step: bool = True) -> Callable[..., Any]:
        """The jitted step ``(state, ref_params, batch) -> (state, metrics)``.

        With ``reference_in_step=False`` the step reads ``batch.ref_logps`` (a cached
        reference) and takes ``ref_params=None``.
        """
        if self.config.objective == "sft":
            config, opt, schedule = self.config, self.optimizer, self.schedule
            impl = make_sft_step(config, self.graphdef, self.rest, opt, schedule)
            return jit_step(impl, self.state, self.mesh, ref_params=None)
        impl = make_train_step(
            self.config,
            self.graphdef,
            self.rest,
            self.ref_graphdef,
            self.ref_rest,
            self.optimizer,
            self.schedule,
        )
        ref_params = self.ref_params if reference_in_step else None
        return jit_step(impl, self.state, self.mesh, ref_params=ref_params)

    def reference_logps(self) -> Callable[[nnx.State, StepBatch], Array]:
        """`make_reference_logps` of the reference: ``(ref_params, batch) -> [B, 2]``."""
        return make_reference_logps(self.config, self.ref_graphdef, self.ref_rest)


def setup_step(
    config: TrainConfig,
    policy: nnx.Module,
    mesh: Mesh,
    *,
    reference: nnx.Module | None = None,
    total_steps: int,
) -> StepSetup:
    """Splits the models, builds the optimizer and the initial state (``config.seed``).

    ``policy`` and ``reference`` are `safedpo_jax.models.CausalLM` instances already placed
    on ``mesh`` (e.g. by `safedpo_jax.models.from_pretrained` with ``mesh=``). Without
    ``reference`` a preference run uses a copy of the policy's initial weights; an SFT run
    (``config.objective == "sft"``) has none. ``total_steps`` sets the learning-rate
    schedule.
    """
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    ref_graphdef = ref_rest = ref_params = None
    if config.objective != "sft":
        if reference is None:
            ref_graphdef, ref_rest = graphdef, rest
            ref_params = jax.tree.map(jnp.copy, params)
        else:
            ref_graphdef, ref_params, ref_rest = nnx.split(reference, nnx.Param, ...)
    optimizer = make_optimizer(config, total_steps)
    schedule = learning_rate_schedule(config, total_steps)
    state = init_state(params, optimizer, mesh, config.seed)
    return StepSetup(
        config=config,
        mesh=mesh,
        graphdef=graphdef,
        rest=rest,
        ref_graphdef=ref_graphdef,
        ref_rest=ref_rest,
        ref_params=ref_params,
        optimizer=optimizer,
        schedule=schedule,
        state=state,
    )


# --------------------------------------------------------------------------------------
# Host -> device
# --------------------------------------------------------------------------------------


def to_global(local: np.ndarray, mesh: Mesh) -> Array:
    """A global array from this process's rows of the batch (split over ``("data","fsdp")``).

    On one process this is a sharded `device_put`; on several, each process contributes
    its own consecutive block of rows (`jax.make_array_from_process_local_data`).
    """
    spec = sharding.batch_sharding(mesh, local.ndim)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(spec, local, global_shape)


def pair_step_batch(batch: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None = None) -> StepBatch:
    """Places a host `PairBatch` (this process's rows) on the mesh as a global `StepBatch`."""
    put = functools.partial(to_global, mesh=mesh)
    return StepBatch(
        input_ids=put(batch.input_ids.astype(np.int32)),
        attention_mask=put(batch.attention_mask.astype(np.int32)),
        loss_mask=put(batch.loss_mask.astype(bool)),
        unsafe=put(batch.unsafe.astype(bool)),
        valid=put(batch.valid.astype(bool)),
        ref_logps=None if ref_logps is None else put(ref_logps.astype(np.float32)),
    )


def sft_step_batch(batch: SFTBatch, mesh: Mesh) -> SFTStepBatch:
    """Places a host `SFTBatch` on the mesh."""
    put = functools.partial(to_global, mesh=mesh)
    return SFTStepBatch(
        input_ids=put(batch.input_ids.astype(np.int32)),
        attention_mask=put(batch.attention_mask.astype(np.int32)),
        loss_mask=put(batch.loss_mask.astype(bool)),
        valid=put(batch.valid.astype(bool)),
    )
