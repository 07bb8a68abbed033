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
