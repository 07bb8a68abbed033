"""Supervised fine-tuning: the objective that makes a reference model."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from safedpo_jax.data import SFTBatch, load_sft_data
from safedpo_jax.logprobs import sequence_logps
from safedpo_jax.models import Model
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.objectives.base import (
    ObjectiveDefaults,
    SFTStepBatch,
    data_options,
    over,
    sft_step_batch,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTObjective(ObjectiveDefaults):
    """Supervised fine-tuning: mean negative log-likelihood per response token.

    The mean is over the response tokens (and EOS) of the whole global batch.
    responses: which responses of each row are imitated (`safedpo_jax.data.SFTResponses`).
    """

    name: ClassVar[str] = "sft"
    responses: str = "both"
    chunk_size: int | None = None

    @property
    def uses_reference(self) -> bool:
        return False

    def denominator(self, batch: SFTStepBatch) -> Array:
        return jnp.sum(batch.loss_mask[:, 1:] & batch.valid[:, None]).astype(jnp.float32)

    def sums(
        self, policy: Model, reference: Model | None, batch: SFTStepBatch
    ) -> tuple[Array, dict[str, Array]]:
        mask = batch.loss_mask & batch.valid[:, None]
        logps = sequence_logps(
            policy, batch.input_ids, batch.attention_mask, mask, chunk_size=self.chunk_size
        )
        nll = -jnp.sum(logps)
        tokens = jnp.sum(mask[:, 1:]).astype(jnp.float32)
        return nll, {
            "loss": jnp.stack([nll, tokens]),
            "logps/sequence": over(batch.valid, logps),
        }

    def load_data(self, config: TrainConfig, tokenizer: Any, split: str):
        return load_sft_data(
            config.dataset,
            split=split,
            responses=self.responses,
            **data_options(config, tokenizer),
        )

    def device_batch(self, host: SFTBatch, mesh: Mesh, ref_logps: np.ndarray | None):
        return sft_step_batch(host, mesh)


def build(config: TrainConfig) -> SFTObjective:
    return SFTObjective(responses=config.sft_responses, chunk_size=config.logprob_chunk_size)
