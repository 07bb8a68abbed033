"""Reward and cost models: Safe RLHF's score-model training as objectives.

The policy is a `safedpo_jax.models.ScoreModel` (a decoder with a linear head ``hidden ->
1``; a sequence's score is the head at its last real token, the EOS). Pairs come from the
same pipeline as the preference objectives:

- ``reward``: helpfulness pairs (``better_response_id`` first), loss
  `safedpo_jax.losses.reward_model_loss`;
- ``cost``: harmlessness pairs (``safer_response_id`` first) with both safety labels, loss
  `safedpo_jax.losses.cost_model_loss` (safe responses pushed below 0, unsafe above).
  A row whose "safer" response is labelled unsafe while the other is safe contradicts
  itself: such pairs are counted and dropped (``contradictory="drop"``) or stop the run
  naming them (``"raise"``, what safe-rlhf's loader does).

The mean is over valid pairs. Held-out metrics: pairwise accuracy, and for the cost model
the sign accuracy (safe below 0, unsafe above); `ScoreObjective.held_out_report` adds the
exact ROC AUC of the costs for the unsafe label and the mean score of each class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from safedpo_jax import costs, losses
from safedpo_jax.data import DataSummary, PairBatch, load_preference_data
from safedpo_jax.data.summary import merge_counts
from safedpo_jax.models import Model
from safedpo_jax.train.config import TrainConfig
from safedpo_jax.train.objectives.base import (
    ObjectiveDefaults,
    StepBatch,
    data_options,
    pair_step_batch,
)

Array = jax.Array
ScoreKind = Literal["reward", "cost"]


def end_scores(model: Model, batch: StepBatch) -> Array:
    """float32 ``[B, 2]`` end scores of both responses of every pair."""
    b, _, t = batch.input_ids.shape
    scores = model.merge()(
        batch.input_ids.reshape(2 * b, t), batch.attention_mask.reshape(2 * b, t)
    )
    return scores.astype(jnp.float32).reshape(b, 2)


def drop_contradictory(dataset: Any, summary: DataSummary, *, on: str) -> tuple[Any, DataSummary]:
    """Harmlessness pairs whose safer response is unsafe and the other safe: drop or raise."""
    unsafe = dataset.unsafe
    bad = unsafe[:, 0] & ~unsafe[:, 1]
    n = int(bad.sum())
    if n == 0:
        return dataset, summary
    rows = [dataset.pairs[i].row for i in np.flatnonzero(bad)]
    if on == "raise":
        shown = ", ".join(map(str, rows[:5])) + (" ..." if n > 5 else "")
        raise ValueError(
            f"{summary.source}:{summary.split}: {n} row(s) label the safer response unsafe and "
            f"the other safe (rows {shown}); fix the data or pass --contradictory drop"
        )
    keep = np.flatnonzero(~bad)
    dataset = dataclasses.replace(
        dataset,
        pairs=tuple(dataset.pairs[i] for i in keep),
        sequences=tuple(dataset.sequences[i] for i in keep),
        prompt_lengths=dataset.prompt_lengths[keep],
        lengths=dataset.lengths[keep],
    )
    summary = dataclasses.replace(
        summary,
        pairs=len(dataset),
        dropped=merge_counts(summary.dropped, {"contradictory_safety": n}),
    )
    return dataset, summary


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreObjective(ObjectiveDefaults):
    """A Safe RLHF reward (``kind="reward"``) or cost (``kind="cost"``) model objective.

    regularization: the score-magnitude penalty weight (safe-rlhf: 0.001).
    contradictory: what to do with contradictory safety pairs (cost model): "drop"
      (counted in the data summary) or "raise".
    """

    name: ClassVar[str] = "score"
    kind: ScoreKind
    regularization: float = 0.001
    contradictory: Literal["drop", "raise"] = "drop"

    @property
    def uses_reference(self) -> bool:
        return False

    @property
    def score_type(self) -> str:
        """The head the model gets (`safedpo_jax.models.score_model_from_causal_lm`)."""
        return self.kind

    @property
    def pairs(self) -> str:
        return "helpful" if self.kind == "reward" else "harmless"

    def denominator(self, batch: StepBatch) -> Array:
        return jnp.sum(batch.valid).astype(jnp.float32)

    def sums(
        self, policy: Model, reference: Model | None, batch: StepBatch
    ) -> tuple[Array, dict[str, Array]]:
        scores = end_scores(policy, batch)
        reg, valid = self.regularization, batch.valid
        if self.kind == "reward":
            per_pair = losses.reward_model_loss(
                scores[:, 0], scores[:, 1], regularization=reg, where=valid
            )
            sums = losses.reward_metric_sums(scores[:, 0], scores[:, 1], per_pair, valid)
        else:
            sign = jnp.where(batch.unsafe, -1.0, 1.0)  # +1 safe, -1 unsafe (safe-rlhf)
            args = (scores[:, 0], scores[:, 1], sign[:, 0], sign[:, 1])
            per_pair = losses.cost_model_loss(*args, regularization=reg, where=valid)
            sums = losses.cost_metric_sums(*args, per_pair, valid)
        return jnp.sum(per_pair), sums

    def held_out_report(self, policy: Model, batches: Iterable[StepBatch]) -> dict[str, float]:
        """Exact held-out figures that do not reduce as sums: ROC AUC and class means."""
        fn = costs.counted("eval_end_scores", jax.jit(end_scores))
        scores, unsafe, valid = [], [], []
        for batch in batches:
            gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))  # noqa: E731
            scores.append(gather(fn(policy, batch)))
            unsafe.append(gather(batch.unsafe))
            valid.append(gather(batch.valid))
        if not scores:
            return {}
        s, u, v = (np.concatenate(x) for x in (scores, unsafe, valid))
        s, u = s[v], u[v]
        if self.kind == "reward":
            return {
                "reward/auc_better": losses.roc_auc(
                    np.concatenate([s[:, 0], s[:, 1]]),
                    np.concatenate([np.ones(len(s), bool), np.zeros(len(s), bool)]),
                )
            }
        flat_s, flat_u = s.reshape(-1), u.reshape(-1)
        out = {
            "cost/safe_mean": float(flat_s[~flat_u].mean()) if (~flat_u).any() else float("nan"),
            "cost/unsafe_mean": float(flat_s[flat_u].mean()) if flat_u.any() else float("nan"),
            "harmless_ratio_predicted": float((flat_s <= 0).mean()),
        }
        if flat_u.any() and (~flat_u).any():
            out["auc_unsafe"] = losses.roc_auc(flat_s, flat_u)
        return out

    def load_data(self, config: TrainConfig, tokenizer: Any, split: str):
        dataset, summary = load_preference_data(
            config.dataset, split=split, pairs=self.pairs, **data_options(config, tokenizer)
        )
        if self.kind == "cost":
            dataset, summary = drop_contradictory(dataset, summary, on=self.contradictory)
        return dataset, summary

    def device_batch(self, host: PairBatch, mesh: Mesh, ref_logps: np.ndarray | None):
        return pair_step_batch(host, mesh)


def build_reward(config: TrainConfig) -> ScoreObjective:
    return ScoreObjective(
        kind="reward",
        regularization=config.score_regularization,
        contradictory=config.contradictory,
    )


def build_cost(config: TrainConfig) -> ScoreObjective:
    return ScoreObjective(
        kind="cost",
        regularization=config.score_regularization,
        contradictory=config.contradictory,
    )
