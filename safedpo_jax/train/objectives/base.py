"""What every objective shares: the protocol, the device batches, the data options."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from safedpo_jax import sharding
from safedpo_jax.data import DataSummary, PairBatch, SFTBatch
from safedpo_jax.data.batches import pack_pair_groups, round_rows, rows_needed
from safedpo_jax.models import Model
from safedpo_jax.train.config import TrainConfig

Array = jax.Array


# --------------------------------------------------------------------------------------
# Batches on the devices
# --------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepBatch:
    """A global batch of pairs on the devices; the leading axis is split over ``("data", "fsdp")``.

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
class PackedStepBatch:
    """A global batch of pairs packed padding-free (`--pack-length`), in ``G`` groups.

    Each group holds ``P`` consecutive pairs packed into ``R`` rows of ``L`` tokens
    (`safedpo_jax.data.batches.pack_pair_groups`); the leading group axis is split over
    ``("data", "fsdp")`` and over microbatches like a `StepBatch`'s pair axis.

    input_ids, loss_mask, segment_ids: [G, R, L]; attention_mask: int32 [G, R, L], 1 on
    real tokens (``segment_ids > 0``). pair_rows, pair_segments: int32 [G, P, 2], the row
    (within the group) and segment of each slot. unsafe: bool [G, P, 2]; valid: bool
    [G, P]; ref_logps: float32 [G, P, 2] or None.
    """

    input_ids: Array
    attention_mask: Array
    loss_mask: Array
    segment_ids: Array
    pair_rows: Array
    pair_segments: Array
    unsafe: Array
    valid: Array
    ref_logps: Array | None = None


def pair_labels(batch: StepBatch | PackedStepBatch) -> tuple[Array, Array]:
    """``(unsafe [N, 2], valid [N])`` of a padded or packed batch's pairs, in pair order."""
    return batch.unsafe.reshape(-1, 2), batch.valid.reshape(-1)


def pack_groups(mesh: Mesh, micro_batches: int) -> int:
    """Groups per process: one per device of the batch axes per microbatch."""
    local_shards = max(1, sharding.batch_shards(mesh) // jax.process_count())
    return local_shards * micro_batches


def packed_step_batch(
    batch: PairBatch,
    mesh: Mesh,
    ref_logps: np.ndarray | None,
    *,
    row_length: int,
    micro_batches: int,
) -> PackedStepBatch:
    """Packs a host `PairBatch` (this process's pairs) and places it as a `PackedStepBatch`.

    The row count is the most any group needs, rounded up to a power of two and agreed
    by all processes (the largest wins), so nothing is dropped.
    """
    groups = pack_groups(mesh, micro_batches)
    rows = round_rows(rows_needed(batch, row_length, groups))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        rows = int(np.max(multihost_utils.process_allgather(np.int32(rows))))
    packed = pack_pair_groups(batch, row_length, groups, rows=rows)
    put = functools.partial(sharding.to_global, mesh=mesh)
    p = packed.valid.shape[1]
    return PackedStepBatch(
        input_ids=put(packed.input_ids.astype(np.int32)),
        attention_mask=put(packed.attention_mask.astype(np.int32)),
        loss_mask=put(packed.loss_mask.astype(bool)),
        segment_ids=put(packed.segment_ids.astype(np.int32)),
        pair_rows=put(packed.pair_rows.astype(np.int32)),
        pair_segments=put(packed.pair_segments.astype(np.int32)),
        unsafe=put(packed.unsafe.astype(bool)),
        valid=put(packed.valid.astype(bool)),
        ref_logps=None
        if ref_logps is None
        else put(np.asarray(ref_logps, np.float32).reshape(groups, p, 2)),
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SFTStepBatch:
    """A global SFT batch: input_ids, attention_mask, loss_mask [B, T]; valid [B]."""

    input_ids: Array
    attention_mask: Array
    loss_mask: Array
    valid: Array


def pair_step_batch(batch: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None = None) -> StepBatch:
    """Places a host `PairBatch` (this process's rows) on the mesh as a global `StepBatch`."""
    put = functools.partial(sharding.to_global, mesh=mesh)
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
    put = functools.partial(sharding.to_global, mesh=mesh)
    return SFTStepBatch(
        input_ids=put(batch.input_ids.astype(np.int32)),
        attention_mask=put(batch.attention_mask.astype(np.int32)),
        loss_mask=put(batch.loss_mask.astype(bool)),
        valid=put(batch.valid.astype(bool)),
    )


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


class Objective(Protocol):
    """What `safedpo_jax.train.step` and the loop need of an objective.

    ``score_type`` is None for objectives that train a causal LM, else the head of the
    `safedpo_jax.models.ScoreModel` they train ("reward", "cost"). ``with_data`` returns
    the objective with the values it takes from the training set (KTO's class weights);
    ``held_out_report`` adds held-out figures that do not reduce as sums (a ROC AUC).
    `ObjectiveDefaults` gives the defaults of the last three.
    """

    name: ClassVar[str]
    score_type: str | None

    def with_data(self, train_dataset: Any) -> Objective: ...

    def held_out_report(self, policy: Model, batches: Any) -> dict[str, float]: ...

    @property
    def uses_reference(self) -> bool:
        """Whether ``sums`` reads a frozen reference (in the step or cached)."""
        ...

    def denominator(self, batch: Any) -> Array: ...

    def sums(
        self, policy: Model, reference: Model | None, batch: Any
    ) -> tuple[Array, dict[str, Array]]: ...

    def load_data(
        self, config: TrainConfig, tokenizer: Any, split: str
    ) -> tuple[Any, DataSummary]: ...

    def device_batch(self, host: Any, mesh: Mesh, ref_logps: np.ndarray | None) -> Any: ...


class ObjectiveDefaults:
    """Defaults of the optional parts of `Objective`: a causal LM, nothing from the data."""

    score_type: ClassVar[str | None] = None

    def with_data(self, train_dataset: Any) -> Objective:
        return self  # type: ignore[return-value]

    def held_out_report(self, policy: Model, batches: Any) -> dict[str, float]:
        return {}


def over(mask: Array, values: Array) -> Array:
    """``[sum of values where mask, count of mask]`` as float32 (a metric-sums entry)."""
    values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), mask.shape)
    return jnp.stack([jnp.sum(jnp.where(mask, values, 0.0)), jnp.sum(mask).astype(jnp.float32)])


def data_options(config: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """The data-pipeline arguments every objective shares."""
    return {
        "tokenizer": tokenizer,
        "max_length": config.max_length,
        "template": config.template,
        "config": config.dataset_config,
        "safety_label": config.safety_label,
        "on_error": config.on_error,
    }
