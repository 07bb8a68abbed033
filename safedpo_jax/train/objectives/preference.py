"""Preference objectives: SafeDPO, the SafeDAA family and the DPO baselines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from safedpo_jax import losses
from safedpo_jax.data import PairBatch, applies_safety_transform, load_preference_data
from safedpo_jax.logprobs import packed_pair_logps, sequence_logps
from safedpo_jax.losses import LinkName
from safedpo_jax.models import Model
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.objectives.base import (
    ObjectiveDefaults,
    PackedStepBatch,
    StepBatch,
    data_options,
    packed_step_batch,
    pair_labels,
    pair_step_batch,
)

Array = jax.Array


def batch_logps(model: Model, batch: StepBatch | PackedStepBatch, chunk_size: int | None) -> Array:
    """float32 ``[B, 2]`` summed log-probs of both slots of every pair, padded or packed.

    A `PackedStepBatch` goes through `safedpo_jax.logprobs.packed_pair_logps` (attention
    within each segment) and comes back in the same pair order as the padded layout.
    """
    if isinstance(batch, PackedStepBatch):
        return packed_pair_logps(
            model,
            batch.input_ids,
            batch.segment_ids,
            batch.loss_mask,
            batch.pair_rows,
            batch.pair_segments,
            chunk_size=chunk_size,
        )
    args = (batch.input_ids, batch.attention_mask, batch.loss_mask)
    return sequence_logps(model, *args, chunk_size=chunk_size)


def pair_logps(
    policy: Model,
    reference: Model | None,
    batch: StepBatch | PackedStepBatch,
    chunk_size: int | None,
) -> tuple[Array, Array]:
    """float32 ``[B, 2]`` log-probs of both slots under the policy and the frozen reference.

    The reference's come from the batch when cached (``batch.ref_logps``), else from a
    forward pass of ``reference`` under `jax.lax.stop_gradient`.
    """
    policy_logps = batch_logps(policy, batch, chunk_size)
    if batch.ref_logps is not None:
        return policy_logps, batch.ref_logps.reshape(-1, 2)
    ref_logps = batch_logps(reference, batch, chunk_size)
    return policy_logps, jax.lax.stop_gradient(ref_logps)


LINKS: dict[str, Callable[[PreferenceObjective], losses.Link]] = {
    "sigmoid": lambda o: losses.sigmoid_link(o.label_smoothing),
    "ipo": lambda o: losses.ipo_link(o.beta),
    "hinge": lambda o: losses.hinge_link(),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceObjective(ObjectiveDefaults):
    """A direct-alignment loss on pairs: SafeDPO (``safe=True``) or a plain DPO baseline.

    pairs: the pair construction the data pipeline builds (`safedpo_jax.data.PAIR_MODES`).
    link: the direct-alignment link g of ``g(beta * gap - margin)``: "sigmoid" (DPO, with
      cDPO ``label_smoothing``), "ipo" or "hinge".
    safe: safety-wrapped (SafeDAA): the kernel applies T to the pairs' safety labels and
      the margin ``delta`` on safe-vs-unsafe pairs; plain otherwise (labels unused).
    beta, delta, label_smoothing: the loss hyperparameters.
    chunk_size: `safedpo_jax.logprobs.sequence_logps`'s log-prob path (None = automatic).
    keep_both_unsafe: keep both-unsafe pairs in the batches (the kernel zeroes them).
    length_normalize: divide each log-ratio by its completion's token count, as TRL's
      ``ipo`` does (the IPO paper and this library's default use summed log-probs).
    pack_length: 0 for padded ``[B, 2, T]`` batches; else the row length of padding-free
      packed batches (`PackedStepBatch`, one group per device and microbatch, hence
      ``micro_batches``). The kernel and the losses are the same.

    The mean is over kept pairs of the global batch (valid and, when safe, not dropped by T).
    """

    name: ClassVar[str] = "preference"
    pairs: str = "safedpo"
    link: LinkName = "sigmoid"
    safe: bool = True
    beta: float = 0.1
    delta: float = 10.0
    label_smoothing: float = 0.0
    chunk_size: int | None = None
    keep_both_unsafe: bool = False
    length_normalize: bool = False
    pack_length: int = 0
    micro_batches: int = 1

    def __post_init__(self) -> None:
        if self.pack_length and self.length_normalize:
            raise ValueError("length_normalize is not implemented with packing (pack_length)")
        if self.link not in LINKS:
            raise ValueError(f"unknown link {self.link!r}; one of {sorted(LINKS)}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")

    @property
    def uses_reference(self) -> bool:
        return True

    def kernel(
        self,
        policy_logps: Array,
        ref_logps: Array,
        unsafe: Array,
        valid: Array,
        lengths: Array | None = None,
    ):
        """`losses.safe_daa_loss` on ``[B, 2]`` log-probs (labels and margin only when safe)."""
        return losses.safe_daa_loss(
            LINKS[self.link](self),
            policy_logps[:, 0],
            policy_logps[:, 1],
            ref_logps[:, 0],
            ref_logps[:, 1],
            unsafe[:, 0] if self.safe else None,
            unsafe[:, 1] if self.safe else None,
            beta=self.beta,
            delta=self.delta if self.safe else 0.0,
            where=valid,
            chosen_lengths=None if lengths is None else lengths[:, 0],
            rejected_lengths=None if lengths is None else lengths[:, 1],
        )

    def denominator(self, batch: StepBatch | PackedStepBatch) -> Array:
        unsafe, keep = pair_labels(batch)
        if self.safe:
            keep = keep & ~losses.safety_transform(unsafe[:, 0], unsafe[:, 1]).drop
        return jnp.sum(keep).astype(jnp.float32)

    def forward(
        self, policy: Model, reference: Model | None, batch: StepBatch
    ) -> losses.PreferenceOutput:
        """The kernel's output: the policy's log-probs against the reference's.

        The reference log-probs come from the batch when cached, else from a forward pass
        of ``reference`` (no gradient flows into it).
        """
        policy_logps, ref_logps = pair_logps(policy, reference, batch, self.chunk_size)
        # TRL's length-normalised form: each log-ratio over its completion's token count
        # (the response and EOS: the loss-mask positions that are scored).
        lengths = jnp.sum(batch.loss_mask[..., 1:], axis=-1) if self.length_normalize else None
        unsafe, valid = pair_labels(batch)
        return self.kernel(policy_logps, ref_logps, unsafe, valid, lengths)

    def sums(
        self, policy: Model, reference: Model | None, batch: StepBatch | PackedStepBatch
    ) -> tuple[Array, dict[str, Array]]:
        out = self.forward(policy, reference, batch)
        return out.losses.sum(), losses.metric_sums(out, pair_labels(batch)[1])

    def load_data(self, config: TrainConfig, tokenizer: Any, split: str):
        return load_preference_data(
            config.dataset,
            split=split,
            pairs=self.pairs,
            keep_both_unsafe=self.keep_both_unsafe,
            **data_options(config, tokenizer),
        )

    def device_batch(self, host: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None):
        if self.pack_length:
            return packed_step_batch(
                host,
                mesh,
                ref_logps,
                row_length=self.pack_length,
                micro_batches=self.micro_batches,
            )
        return pair_step_batch(host, mesh, ref_logps)


def build(config: TrainConfig) -> PreferenceObjective:
    return PreferenceObjective(
        pairs=config.pairs,
        link=config.loss,
        safe=applies_safety_transform(config.pairs),
        beta=config.beta,
        delta=config.delta,
        label_smoothing=config.label_smoothing,
        chunk_size=config.logprob_chunk_size,
        keep_both_unsafe=config.keep_both_unsafe,
        length_normalize=config.length_normalize,
        pack_length=config.pack_length,
        micro_batches=config.micro_batches,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BFPOObjective(ObjectiveDefaults):
    """BFPO (Zhang et al., ICLR 2025): a supervised loss on helpfulness pairs with safety labels.

    `safedpo_jax.losses.bfpo_loss` on every valid pair in helpfulness order (none swapped
    or dropped), mean over valid pairs; ``b1`` and ``alpha`` are the paper's constants.
    """

    name: ClassVar[str] = "bfpo"
    beta: float = 0.01
    b1: float = 3.0
    alpha: float = 0.5
    chunk_size: int | None = None

    @property
    def uses_reference(self) -> bool:
        return True

    def denominator(self, batch: StepBatch) -> Array:
        return jnp.sum(batch.valid).astype(jnp.float32)

    def sums(
        self, policy: Model, reference: Model | None, batch: StepBatch
    ) -> tuple[Array, dict[str, Array]]:
        policy_logps, ref_logps = pair_logps(policy, reference, batch, self.chunk_size)
        out = losses.bfpo_loss(
            policy_logps[:, 0],
            policy_logps[:, 1],
            ref_logps[:, 0],
            ref_logps[:, 1],
            batch.unsafe[:, 0],
            batch.unsafe[:, 1],
            beta=self.beta,
            b1=self.b1,
            alpha=self.alpha,
            where=batch.valid,
        )
        return out.losses.sum(), losses.metric_sums(out, batch.valid)

    def load_data(self, config: TrainConfig, tokenizer: Any, split: str):
        return load_preference_data(
            config.dataset, split=split, pairs="helpful", **data_options(config, tokenizer)
        )

    def device_batch(self, host: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None):
        return pair_step_batch(host, mesh, ref_logps)


def build_bfpo(config: TrainConfig) -> BFPOObjective:
    return BFPOObjective(
        beta=config.beta,
        b1=config.bfpo_b1,
        alpha=config.bfpo_alpha,
        chunk_size=config.logprob_chunk_size,
    )
