"""Batched sampling with the KV cache: greedy, temperature, top-p, stop at EOS; jitted, sharded.

`generate` prefills a LEFT-padded prompt batch ``[B, P]`` into a `safedpo_jax.models`
KV cache, then runs a `jax.lax.while_loop` of one-token decode steps, all inside one
`jax.jit` (compiled once per model, batch shape, ``max_new_tokens`` and greedy/sampled):

- step ``t`` picks token ``t`` of every row from the last logits: the argmax when
  ``temperature == 0`` (ties: the lowest token id), else a draw from
  ``softmax(logits / temperature)`` restricted to the top-p nucleus;
- a row that has emitted an EOS id is *finished*: every later slot holds ``pad_id`` and
  its length stops growing (the EOS itself is counted and kept);
- the loop ends after ``max_new_tokens`` steps or as soon as every row is finished.

Nucleus (top-p) rule: rank the vocabulary by probability, ties broken by the lower token
id (a stable sort); keep a token when the probability ranked strictly before it is below
``top_p``. The kept set is the shortest prefix of the ranking whose mass reaches
``top_p``; it always holds the top token (so a tiny ``top_p`` is greedy decoding) and
drops any token tied with the last kept one but ranked after it. ``top_p >= 1`` keeps
every token.

Randomness: row ``i`` at step ``t`` draws with ``fold_in(fold_in(key(seed), row_ids[i]),
t)``, so a row's sample depends on the seed, its id and its logits only, not on its batch
or the mesh; the same seed gives the same tokens, on any device count.

Sharding: with a ``mesh`` (`safedpo_jax.sharding.make_mesh`), prompts and outputs are
split over ``("data", "fsdp")`` (`safedpo_jax.sharding.batch_sharding`), the parameters
stay in (or move to) the shardings their logical axis names give, and the cache is built
with the model's own cache shardings, exactly as in training; XLA partitions the rest.

Counted compute: under an active `safedpo_jax.costs` ledger (the PPO loop's) a call is
recorded as ``generate`` with the FLOPs of its prefill and of every decode step that ran
(XLA's count of the compiled loop has the body once; `_count_decode_loop` adds the rest,
at the price of one more compile, of the prefill alone, per prompt shape).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from safedpo_jax import costs, sharding

__all__ = ["GenerationOutput", "decode", "generate", "top_p_mask"]

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """Generated continuations of a prompt batch.

    Attributes:
      tokens: int32 ``[B, N]``, ``N = max_new_tokens``: the new tokens of each row, its EOS
        included; every slot after the EOS (or never reached) holds ``pad_id``.
      lengths: int32 ``[B]``, tokens generated per row (the EOS included).
      finished: bool ``[B]``, True where the row emitted an EOS.
    """

    tokens: Array
    lengths: Array
    finished: Array


def top_p_mask(logits_bv: Array, top_p: float | Array) -> Array:
    """The nucleus of each row: bool ``[B, V]``, True on kept tokens (rule in the module doc).

    >>> top_p_mask(jnp.log(jnp.array([[0.5, 0.2, 0.3]])), 0.7).tolist()
    [[True, False, True]]
    >>> top_p_mask(jnp.zeros((1, 3)), 0.5).tolist()  # a three-way tie: lowest ids first
    [[True, True, False]]
    """
    order_bv = jnp.argsort(-logits_bv, axis=-1, stable=True)
    probs_bv = jax.nn.softmax(jnp.take_along_axis(logits_bv, order_bv, axis=-1), axis=-1)
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    keep_sorted_bv = (before_bv < top_p) | (top_p >= 1.0)
    keep_sorted_bv = keep_sorted_bv.at[:, 0].set(True)
    rows_b1 = jnp.arange(logits_bv.shape[0])[:, None]
    return jnp.zeros_like(keep_sorted_bv).at[rows_b1, order_bv].set(keep_sorted_bv)


def _next_tokens(
    logits_bv: Array,
    keys_b: Array,
    temperature: Array,
    top_p: Array,
    *,
    greedy: bool,
) -> Array:
    logits_bv = logits_bv.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    scaled_bv = logits_bv / temperature
    scaled_bv = jnp.where(top_p_mask(scaled_bv, top_p), scaled_bv, -jnp.inf)
    draw = jax.vmap(lambda key, row_v: jax.random.categorical(key, row_v))
    return draw(keys_b, scaled_bv).astype(jnp.int32)


def _prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids_bp: Array,
    prompt_mask_bp: Array,
    *,
    max_new_tokens: int,
    pad_id: int,
    mesh: Mesh | None,
) -> tuple:
    """The decode loop's initial carry: the prompt batch prefilled into a fresh KV cache."""
    b, p = prompt_ids_bp.shape
    model = nnx.merge(graphdef, state)
    kw = {} if mesh is None else {"mesh": mesh}  # the model's own cache shardings
    cache = model.init_cache(b, p + max_new_tokens, **kw)
    logits_bpv, cache = model(prompt_ids_bp, prompt_mask_bp, cache=cache)
    return (
        jnp.zeros((), jnp.int32),
        cache,
        logits_bpv[:, -1],
        jnp.full((b, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((b,), bool),
        jnp.zeros((b,), jnp.int32),
    )


_STATIC = ("graphdef", "max_new_tokens", "eos_ids", "pad_id", "greedy", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids_bp: Array,
    prompt_mask_bp: Array,
    row_keys_b: Array,
    temperature: Array,
    top_p: Array,
    *,
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    pad_id: int,
    greedy: bool,
    mesh: Mesh | None,
) -> GenerationOutput:
    b = prompt_ids_bp.shape[0]
    carry = _prefill(
        graphdef,
        state,
        prompt_ids_bp,
        prompt_mask_bp,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        mesh=mesh,
    )
    eos = jnp.asarray(eos_ids, jnp.int32)

    def cond(carry: tuple) -> Array:
        step, _, _, _, finished_b, _ = carry
        return (step < max_new_tokens) & ~jnp.all(finished_b)

    def body(carry: tuple) -> tuple:
        step, cache, logits_bv, tokens_bn, finished_b, lengths_b = carry
        keys_b = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_b, step)
        next_b = _next_tokens(logits_bv, keys_b, temperature, top_p, greedy=greedy)
        next_b = jnp.where(finished_b, pad_id, next_b)
        tokens_bn = jax.lax.dynamic_update_slice(tokens_bn, next_b[:, None], (0, step))
        lengths_b = lengths_b + (~finished_b).astype(jnp.int32)
        finished_b = finished_b | jnp.isin(next_b, eos)
        model = nnx.merge(graphdef, state)
        logits_b1v, cache = model(next_b[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
        return step + 1, cache, logits_b1v[:, -1], tokens_bn, finished_b, lengths_b

    _, _, _, tokens_bn, finished_b, lengths_b = jax.lax.while_loop(cond, body, carry)
    return GenerationOutput(tokens=tokens_bn, lengths=lengths_b, finished=finished_b)


_PREFILL_STATIC = ("graphdef", "max_new_tokens", "pad_id", "mesh")
_prefill_jit = jax.jit(_prefill, static_argnames=_PREFILL_STATIC)
_counted_generate = costs.counted("generate", _generate, static_argnames=_STATIC)


def _count_decode_loop(
    ledger: costs.Ledger, out: GenerationOutput, static: dict[str, Any], arrays: dict[str, Any]
) -> None:
    """Adds the decode steps XLA's count of `_generate` leaves out to ``ledger``.

    XLA counts the ``while`` body once (`safedpo_jax.costs`), so the compiled program's
    count W is the prefill P plus one decode step (with the loop test). The loop ran
    ``max(lengths)`` steps (it stops once every row has finished), so the work done is
    ``P + steps * (W - P)``, ``(steps - 1) * (W - P)`` more than W. P is the count of the
    prefill compiled alone on the same arguments (listed as ``generate/prefill``, no calls).
    """
    whole = ledger.entries["generate"].last_call_flops
    prefill = costs.cost_of(
        ledger,
        "generate/prefill",
        _prefill_jit,
        static_argnames=_PREFILL_STATIC,
        **static,
        **arrays,
    )
    steps = int(np.max(np.asarray(jax.device_get(out.lengths)), initial=0))
    extra = max(steps - 1, 0)
    ledger.add_flops("generate", extra * max(whole - prefill, 0.0), loop_trips=extra)


def generate(
    model: Any,
    prompt_ids: Array | np.ndarray,
    prompt_mask: Array | np.ndarray,
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    row_ids: Array | np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> GenerationOutput:
    """Samples up to ``max_new_tokens`` tokens for each prompt with the KV cache.

    Args:
      model: a ``safedpo_jax.models.CausalLM`` (``init_cache`` and cached calls).
      prompt_ids: int ``[B, P]`` prompt ids, LEFT-padded (every row ends at column P - 1).
      prompt_mask: int/bool ``[B, P]``, 1 on real tokens.
      max_new_tokens: N, the most tokens generated per row.
      eos_id: the id (or ids) that end a row.
      pad_id: written after a row's EOS.
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_p: the nucleus mass in (0, 1] (ignored when greedy).
      seed: the sampling seed (``jax.random.key(seed)``).
      row_ids: int ``[B]`` ids that key each row's randomness (default ``0..B-1``); pass
        the prompts' dataset indices to make samples independent of batching.
      mesh: a ``(data, fsdp, tensor)`` mesh: B must be a multiple of data x fsdp.

    Returns:
      `GenerationOutput` (tokens ``[B, N]``, lengths ``[B]``, finished ``[B]``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    ids = np.asarray(prompt_ids, np.int32)
    mask = np.asarray(prompt_mask, np.int32)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"prompt ids {ids.shape} and mask {mask.shape} must be equal [B, P]")
    if not mask[:, -1].all():
        raise ValueError("prompts must be LEFT-padded: the last column of the mask must be all 1")
    b, p = ids.shape
    eos_ids = (eos_id,) if isinstance(eos_id, int | np.integer) else tuple(eos_id)
    rows = np.arange(b) if row_ids is None else np.asarray(row_ids)
    if rows.shape != (b,):
        raise ValueError(f"row_ids must have shape ({b},), got {rows.shape}")
    base = jax.random.key(seed)
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.asarray(rows, jnp.int32))

    graphdef, state = nnx.split(model)
    if mesh is not None:
        shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
        if b % shards:
            raise ValueError(f"batch {b} is not a multiple of the mesh's data x fsdp size {shards}")
        state = jax.device_put(state, sharding.state_shardings(state, mesh))
        ids, mask = jax.device_put((ids, mask), sharding.batch_sharding(mesh, 2))
        row_keys = jax.device_put(row_keys, sharding.batch_sharding(mesh, 1))
    static = {"graphdef": graphdef, "max_new_tokens": max_new_tokens, "pad_id": int(pad_id)}
    static["mesh"] = mesh
    out = _counted_generate(
        state=state,
        prompt_ids_bp=ids,
        prompt_mask_bp=mask,
        row_keys_b=row_keys,
        temperature=jnp.float32(max(temperature, 1e-6)),
        top_p=jnp.float32(top_p),
        eos_ids=tuple(int(e) for e in eos_ids),
        greedy=temperature == 0,
        **static,
    )
    ledger = costs.current()
    if ledger is not None:  # counted compute: the decode loop's trips (one device sync)
        arrays = {"state": state, "prompt_ids_bp": ids, "prompt_mask_bp": mask}
        _count_decode_loop(ledger, out, static, arrays)
    return out


def decode(tokenizer: Any, output: GenerationOutput) -> list[str]:
    """Response texts: each row's tokens up to (not including) its EOS, special tokens
    skipped (``tokenizer.decode(..., skip_special_tokens=True)``)."""
    tokens = np.asarray(jax.device_get(output.tokens))
    lengths = np.asarray(jax.device_get(output.lengths))
    finished = np.asarray(jax.device_get(output.finished))
    return [
        tokenizer.decode(row[: n - int(done)].tolist(), skip_special_tokens=True)
        for row, n, done in zip(tokens, lengths, finished, strict=True)
    ]
