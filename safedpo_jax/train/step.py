"""The jitted, sharded train step, for any objective.

``train_step(state, reference, batch) -> (state, metrics)`` is one pure function:

1. the objective's ``denominator(batch)`` fixes what the loss of the whole global batch is
   divided by (kept pairs, response tokens): it depends on labels and masks alone;
2. for each of ``micro_batches`` microbatches the objective's ``sums(policy, reference,
   microbatch)`` gives the loss numerator and the metric sums; gradients of
   ``numerator / denominator`` add up over the microbatches (a `lax.scan`), so the
   accumulated gradient equals the big-batch gradient exactly;
3. optax applies the update (global-norm clipping and AdamW in `safedpo_jax.train.optim`).
   A non-finite loss or gradient leaves the state untouched and is reported in
   ``metrics["finite"]``.

The step never asks which objective it runs: SafeDPO, the DPO baselines and SFT (and any
objective of `safedpo_jax.train.objectives`) go through the same code. The frozen
``reference`` is a `safedpo_jax.models.Model` (or None: SFT, or cached reference
log-probs carried by the batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from safedpo_jax import losses, sharding
from safedpo_jax.models import Model
from safedpo_jax.train.objectives import Objective

Array = jax.Array
Step = Callable[["TrainState", Model | None, Any], tuple["TrainState", dict[str, Array]]]


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
# The step
# --------------------------------------------------------------------------------------


def make_step(
    objective: Objective,
    policy: Model,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    micro_batches: int = 1,
) -> Step:
    """The un-jitted step of ``objective``; `jit_step` compiles it with explicit shardings.

    ``policy`` supplies the static parts (graph and buffers); its parameters come from the
    state at each call. The optional fourth argument ``rest`` replaces ``policy.rest`` (the
    frozen part: buffers, or the whole base model under LoRA) so that `jit_step` can pass it
    as an argument instead of baking it into the executable as a constant.
    """

    def step(
        state: TrainState, reference: Model | None, batch: Any, rest: nnx.State | None = None
    ) -> tuple[TrainState, dict[str, Array]]:
        denominator = jnp.maximum(objective.denominator(batch), 1.0)
        frozen = policy if rest is None else dataclasses.replace(policy, rest=rest)

        def micro_loss(params: nnx.State, mb: Any) -> tuple[Array, dict[str, Array]]:
            numerator, sums = objective.sums(frozen.with_params(params), reference, mb)
            return numerator / denominator, sums

        loss, grads, sums = _accumulate(micro_loss, state.params, batch, micro_batches)
        tokens = jnp.sum(batch.attention_mask).astype(jnp.float32)
        return _apply(state, grads, loss, sums, tokens, optimizer, schedule)

    return step


def make_eval_sums(objective: Objective, policy: Model) -> Callable[..., dict[str, Array]]:
    """Jitted ``(params, reference, batch) -> metric sums`` of ``objective`` (held-out eval).

    ``policy.rest`` (under LoRA the frozen base) is an argument of the compiled function,
    not a constant of it.
    """

    @jax.jit
    def sums(
        params: nnx.State, reference: Model | None, batch: Any, rest: nnx.State
    ) -> dict[str, Array]:
        model = dataclasses.replace(policy, params=params, rest=rest)
        return objective.sums(model, reference, batch)[1]

    def eval_sums(params: nnx.State, reference: Model | None, batch: Any) -> dict[str, Array]:
        return sums(params, reference, batch, policy.rest)

    # Ahead-of-time lowering with the same three arguments (counted compute, `costs`).
    eval_sums.lower = lambda params, reference, batch: _Lowered(  # type: ignore[attr-defined]
        sums.lower(params, reference, batch, policy.rest), policy.rest
    )
    return eval_sums


def _microbatches(tree: Any, k: int) -> Any:
    """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, j + k, ... .

    The strided split keeps every microbatch spread over all devices of the batch axis
    (a contiguous split would put each microbatch on a subset of them).
    """

    def split(x: Array) -> Array:
        return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)

    return jax.tree.map(split, tree)


def _first(batch: Any, k: int) -> Any:
    """An abstract microbatch (for shapes)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] // k, *x.shape[1:]), x.dtype), batch
    )


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

    def update(state: TrainState, grads: nnx.State) -> TrainState:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)

    # A branch, not `where(finite, new, old)` over the state: with the select, XLA fused
    # each moment's update into the parameter's update and copied the old moments first
    # (the outputs alias the donated inputs), 4 extra [V, d] buffers at a large vocabulary.
    new = jax.lax.cond(finite, update, lambda state, grads: state, state, grads)
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
    step: Step,
    state: TrainState,
    mesh: Mesh,
    *,
    reference: Model | None,
    policy_rest: nnx.State | None = None,
) -> Step:
    """Compiles ``step`` with explicit in/out shardings and a donated state.

    Parameters and optimizer state keep the shardings they have (the logical-axis rules),
    the frozen reference keeps its own, every batch array is split over
    ``("data", "fsdp")`` on its leading axis, and metrics come back replicated. With
    ``policy_rest`` (the policy's frozen state: under LoRA the base model) the compiled
    step takes it as an argument, keeping its sharding; the returned function still has
    the signature ``(state, reference, batch)``.
    """
    state_sh = state_shardings(state)
    ref_sh = None if reference is None else jax.tree.map(lambda x: x.sharding, reference)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = sharding.batch_sharding(mesh, 1)  # a prefix: applies to every batch leaf
    if policy_rest is None:
        return jax.jit(
            step,
            in_shardings=(state_sh, ref_sh, batch_sh),
            out_shardings=(state_sh, replicated),
            donate_argnums=(0,),
        )
    rest_sh = jax.tree.map(lambda x: x.sharding, policy_rest)
    jitted = jax.jit(
        step,
        in_shardings=(state_sh, ref_sh, batch_sh, rest_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )

    def with_rest(
        state: TrainState, reference: Model | None, batch: Any
    ) -> tuple[TrainState, dict[str, Array]]:
        return jitted(state, reference, batch, policy_rest)

    # Ahead-of-time lowering (benchmarks, compile-time checks) with the same three arguments:
    # ``step.lower(state, reference, batch).compile()`` is called like the step itself.
    with_rest.lower = lambda state, reference, batch: _Lowered(  # type: ignore[attr-defined]
        jitted.lower(state, reference, batch, policy_rest), policy_rest
    )
    return with_rest


class _Lowered:
    """A lowered step whose compiled form takes ``(state, reference, batch)`` like `jit_step`'s
    result (the frozen ``rest`` is bound); cost and memory analyses pass through."""

    def __init__(self, lowered: Any, rest: Any):
        self._lowered, self._rest = lowered, rest

    def compile(self) -> _Compiled:
        return _Compiled(self._lowered.compile(), self._rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lowered, name)


class _Compiled:
    def __init__(self, compiled: Any, rest: Any):
        self._compiled, self._rest = compiled, rest

    def __call__(self, state: Any, reference: Any, batch: Any) -> Any:
        return self._compiled(state, reference, batch, self._rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._compiled, name)
