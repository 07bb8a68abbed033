"""KTO on unpaired examples (SACPO's KTO safety stage) as an objective.

Each example is one response with its safety label (desirable = safe), built by the
``unpaired`` construction of `safedpo_jax.data.pairs`: slot 0 holds the example, slot 1 a
mismatched completion (another prompt's response) whose log-ratio estimates KTO's
reference point ``z0`` as TRL's ``KTOTrainer`` does. The loss is
`safedpo_jax.losses.kto_loss`, averaged over the examples (TRL's reduction); ``z0`` is
estimated per microbatch, as TRL does per gradient-accumulation step.

SACPO weighs undesirable examples by ``n_desirable / n_undesirable`` of the training set
(desirable weight 1): ``undesirable_weight=None`` takes that value from the data
(`KTOObjective.with_data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from safedpo_jax import losses
from safedpo_jax.data import PairBatch, load_preference_data
from safedpo_jax.models import Model
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.objectives.base import (
    ObjectiveDefaults,
    StepBatch,
    data_options,
    pair_step_batch,
)
from safedpo_jax.train.objectives.preference import pair_logps

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class KTOObjective(ObjectiveDefaults):
    """KTO with desirable = safe (``unsafe[:, 0]`` False), against a frozen reference.

    beta: KTO's beta. desirable_weight / undesirable_weight: the class weights
    (``undesirable_weight=None``: SACPO's ``n_desirable / n_undesirable`` from the data).
    """

    name: ClassVar[str] = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float | None = None
    chunk_size: int | None = None

    @property
    def uses_reference(self) -> bool:
        return True

    def with_data(self, train_dataset: Any) -> KTOObjective:
        if self.undesirable_weight is not None:
            return self
        unsafe = train_dataset.unsafe[:, 0]
        weight = losses.kto_undesirable_weight(int((~unsafe).sum()), int(unsafe.sum()))
        return dataclasses.replace(self, undesirable_weight=weight)

    def forward(self, policy: Model, reference: Model | None, batch: StepBatch):
        if self.undesirable_weight is None:
            raise ValueError("KTOObjective: undesirable_weight is unset (call with_data first)")
        policy_logps, ref_logps = pair_logps(policy, reference, batch, self.chunk_size)
        return losses.kto_loss(
            policy_logps[:, 0],
            ref_logps[:, 0],
            ~batch.unsafe[:, 0],
            policy_logps[:, 1],
            ref_logps[:, 1],
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            where=batch.valid,
        )

    def denominator(self, batch: StepBatch) -> Array:
        return jnp.sum(batch.valid).astype(jnp.float32)

    def sums(
        self, policy: Model, reference: Model | None, batch: StepBatch
    ) -> tuple[Array, dict[str, Array]]:
        out = self.forward(policy, reference, batch)
        return jnp.sum(out.losses), losses.kto_metric_sums(out)

    def load_data(self, config: TrainConfig, tokenizer: Any, split: str):
        return load_preference_data(
            config.dataset, split=split, pairs="unpaired", **data_options(config, tokenizer)
        )

    def device_batch(self, host: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None):
        return pair_step_batch(host, mesh, ref_logps)


def build(config: TrainConfig) -> KTOObjective:
    return KTOObjective(
        beta=config.beta,
        desirable_weight=config.kto_desirable_weight,
        undesirable_weight=config.kto_undesirable_weight,
        chunk_size=config.logprob_chunk_size,
    )
