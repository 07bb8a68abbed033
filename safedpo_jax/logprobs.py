"""Log-probs of responses under a model: the one code path for every consumer.

Training (policy and in-step reference), the cached reference pass, the evaluation's exact
candidate scoring and RL rollouts all call these functions, so the numbers agree by
construction. Two paths give the same values:

- full: the ``[rows, T, V]`` logits, upcast to float32 before the log-softmax;
- chunked: `safedpo_jax.losses.chunked_sequence_logprobs` from the final hidden states,
  a float32 ``[rows, chunk, V]`` block at a time, so the full logits never exist.

``chunk_size=None`` picks one per shape with `auto_chunk_size`.

Causal alignment: the logits at position ``t - 1`` score the token at ``t``; the targets
are ``ids[..., 1:]`` and the loss mask is shifted the same way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from safedpo_jax import losses, sharding
from safedpo_jax.models import Model

Array = jax.Array

# The auto rule (experiments/benchmarks/logprob_memory.py and RESULTS.md hold the
# measurements behind it): a device's float32 [rows, T, V] logits stay whole up to
# LOGITS_FULL_MAX_BYTES; beyond, the chunked path runs with the fewest chunks whose blocks
# hold at most LOGITS_CHUNK_BYTES each. On 2 CPU cores the chunked path was never slower
# than full logits from 125 MiB of logits up (0.45 to 0.77 of the time, blocks of 32 to
# 512 MiB alike) and needed 2 to 9x less memory from 250 MiB up.
LOGITS_FULL_MAX_BYTES = 32 * 2**20
LOGITS_CHUNK_BYTES = 256 * 2**20
# The chunked path projects only the chunks that hold counted (response) positions
# (`losses.chunked_sequence_logprobs`, ``skip_masked``); False projects every position,
# as before (benchmarks compare the two).
SKIP_MASKED_CHUNKS = True


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
    return max(1, rows // sharding.batch_shards(jax.sharding.get_abstract_mesh()))


def _shifted(input_ids: Array, loss_mask: Array) -> tuple[Array, Array, Array]:
    """``(ids [R, T], targets [R, T], target mask [R, T])`` with rows flattened.

    Targets shift left instead of the logits shifting right: position T - 1 gets a masked
    dummy target, so the ``[R, T, V]`` logits (or hidden states) are used whole, with no
    sliced copy of them.
    """
    t = input_ids.shape[-1]
    ids = input_ids.reshape(-1, t)
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
    target_mask = jnp.pad(loss_mask.reshape(-1, t)[:, 1:].astype(bool), ((0, 0), (0, 1)))
    return ids, targets, target_mask


def sequence_logps(
    model: Model,
    input_ids: Array,
    attention_mask: Array,
    loss_mask: Array,
    *,
    chunk_size: int | None = None,
) -> Array:
    """Summed response log-probs of each sequence, float32 ``[...]`` for ids ``[..., T]``.

    ``model``: a split causal LM (`safedpo_jax.models.Model`). ``loss_mask`` marks the
    tokens whose log-probs count (the response and its EOS). ``chunk_size``: positions per
    chunk of `losses.chunked_sequence_logprobs`, 0 for full logits, None for
    `auto_chunk_size` (decided at trace time from the shapes and the ambient mesh).
    """
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    ids, targets, target_mask = _shifted(input_ids, loss_mask)
    mask = attention_mask.reshape(-1, t)
    module = model.merge()
    if chunk_size is None:
        chunk_size = auto_chunk_size(_rows_per_device(ids.shape[0]), t, module.config.vocab_size)
    if chunk_size:
        hidden = module(ids, mask, return_hidden=True)
        logps = losses.chunked_sequence_logprobs(
            hidden,
            module.lm_head_weight(),
            targets,
            target_mask,
            chunk_size=chunk_size,
            skip_masked=SKIP_MASKED_CHUNKS,
        )
    else:
        logits = module(ids, mask)
        logps = losses.sequence_logprobs(logits, targets, target_mask)
    return logps.reshape(lead)


def token_logps(model: Model, input_ids: Array, attention_mask: Array, loss_mask: Array) -> Array:
    """Per-token log-probs ``[..., T]`` float32: entry ``t`` scores ``ids[..., t + 1]``.

    Masked positions (``loss_mask`` shifted like the targets) are exactly 0; the last
    position is always 0. Summing over the last axis gives `sequence_logps` (full path).
    """
    shape, t = input_ids.shape, input_ids.shape[-1]
    ids, targets, target_mask = _shifted(input_ids, loss_mask)
    logits = model.merge()(ids, attention_mask.reshape(-1, t)).astype(jnp.float32)
    safe_targets = jnp.where(target_mask, targets, 0)
    picked = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    logps = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.where(target_mask, logps, 0.0).reshape(shape)


def _chunked_token_logps(
    hidden_rtd: Array, w_dv: Array, targets_rt: Array, mask_rt: Array, chunk_size: int
) -> Array:
    """Per-token float32 log-probs ``[R, T]`` of ``hidden @ w``, one rematerialised
    ``[R, chunk, V]`` block at a time (masked positions 0)."""
    r, t, d = hidden_rtd.shape
    n = max(1, math.ceil(t / chunk_size))
    pad = n * chunk_size - t
    hidden_rtd = jnp.pad(hidden_rtd, ((0, 0), (0, pad), (0, 0)))
    targets_rt = jnp.pad(jnp.where(mask_rt, targets_rt, 0), ((0, 0), (0, pad)))
    mask_rt = jnp.pad(mask_rt, ((0, 0), (0, pad)))
    chunks = (
        jnp.moveaxis(hidden_rtd.reshape(r, n, chunk_size, d), 1, 0),
        jnp.moveaxis(targets_rt.reshape(r, n, chunk_size), 1, 0),
        jnp.moveaxis(mask_rt.reshape(r, n, chunk_size), 1, 0),
    )

    @jax.checkpoint
    def block(h_rcd: Array, ids_rc: Array, m_rc: Array) -> Array:
        logits_rcv = jnp.matmul(
            h_rcd.reshape(-1, d), w_dv.astype(h_rcd.dtype), preferred_element_type=jnp.float32
        ).reshape(r, chunk_size, -1)
        picked = jnp.take_along_axis(logits_rcv, ids_rc[..., None], axis=-1)[..., 0]
        return jnp.where(m_rc, picked - jax.nn.logsumexp(logits_rcv, axis=-1), 0.0)

    _, out_nrc = jax.lax.scan(lambda c, x: (c, block(*x)), None, chunks)
    return jnp.moveaxis(out_nrc, 0, 1).reshape(r, n * chunk_size)[:, :t]


def segment_logps(
    model: Model,
    input_ids: Array,
    segment_ids: Array,
    loss_mask: Array,
    *,
    num_segments: int,
    chunk_size: int | None = None,
) -> Array:
    """Summed log-probs per packed segment: float32 ``[R, num_segments]`` for ``[R, T]`` rows.

    Packed rows hold several sequences one after another; ``segment_ids`` numbers them
    ``1 .. num_segments`` (contiguous runs; 0 = padding; no id above ``num_segments``)
    and the model runs them with attention confined to each segment and positions restarting
    (`safedpo_jax.models.CausalLM`'s ``segment_ids``). Column ``s - 1`` of the result is
    ``sum_t loss_mask[t] * log p(ids[t] | segment s before t)`` over the tokens of
    segment ``s``: equal to `sequence_logps` of that sequence run alone in its own row. A
    target never crosses a segment boundary (a segment's first token is never scored, as
    an unpacked sequence's first token is not). ``chunk_size`` as in `sequence_logps`.
    """
    if input_ids.ndim != 2 or segment_ids.shape != input_ids.shape:
        raise ValueError(
            f"segment_logps: input_ids {input_ids.shape} and segment_ids {segment_ids.shape} "
            "must both be [R, T]"
        )
    _, targets, target_mask = _shifted(input_ids, loss_mask)
    next_segment = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
    target_mask = target_mask & (next_segment == segment_ids) & (segment_ids > 0)
    module = model.merge()
    r, t = input_ids.shape
    if chunk_size is None:
        chunk_size = auto_chunk_size(_rows_per_device(r), t, module.config.vocab_size)
    if chunk_size:
        hidden = module(input_ids, segment_ids=segment_ids, return_hidden=True)
        tok_rt = _chunked_token_logps(
            hidden, module.lm_head_weight(), targets, target_mask, chunk_size
        )
    else:
        logits = module(input_ids, segment_ids=segment_ids).astype(jnp.float32)
        safe = jnp.where(target_mask, targets, 0)
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        tok_rt = jnp.where(target_mask, picked - jax.nn.logsumexp(logits, axis=-1), 0.0)
    # per-segment sums by one segment_sum over (row, segment) buckets: no [R, T, S] one-hot
    bucket_rt = jnp.arange(r)[:, None] * (num_segments + 1) + jnp.clip(segment_ids, 0, num_segments)
    sums = jax.ops.segment_sum(
        tok_rt.reshape(-1), bucket_rt.reshape(-1), num_segments=r * (num_segments + 1)
    )
    return sums.reshape(r, num_segments + 1)[:, 1:]


def packed_pair_logps(
    model: Model,
    input_ids: Array,
    segment_ids: Array,
    loss_mask: Array,
    pair_rows: Array,
    pair_segments: Array,
    *,
    chunk_size: int | None = None,
) -> Array:
    """Summed log-probs ``[G * P, 2]`` of the pairs of packed groups (float32).

    ``input_ids``, ``segment_ids``, ``loss_mask``: ``[G, R, L]`` (each group's rows, as
    `safedpo_jax.data.batches.pack_pair_groups` builds them); ``pair_rows``,
    ``pair_segments``: ``[G, P, 2]``, each slot's row within its group and its segment id.
    Equal to `sequence_logps` of the same pairs right-padded ``[G * P, 2, T]``, up to
    float32 rounding; a padding pair (segment 0) gets 0.
    """
    g, r, length = input_ids.shape
    flat = lambda x: x.reshape(g * r, length)  # noqa: E731
    per_segment = segment_logps(
        model,
        flat(input_ids),
        flat(segment_ids),
        flat(loss_mask),
        num_segments=length,
        chunk_size=chunk_size,
    )  # [G * R, L]: a row holds at most L segments
    row_gp2 = jnp.arange(g)[:, None, None] * r + pair_rows
    picked = per_segment[row_gp2, jnp.maximum(pair_segments - 1, 0)]
    return jnp.where(pair_segments > 0, picked, 0.0).reshape(-1, 2)
