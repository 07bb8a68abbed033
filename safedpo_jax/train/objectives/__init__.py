"""Training objectives as values: what a step optimises, built once from the config.

An objective is a frozen dataclass that knows three things, and the step knows nothing else:

- ``denominator(batch)``: what the loss of the *whole* global batch is divided by (kept
  pairs, response tokens, ...). It depends on labels and masks alone, so it is known
  before any forward pass and gradient accumulation over microbatches stays exact;
- ``sums(policy, reference, batch)``: the microbatch's loss numerator and its metric sums
  (``{name: [sum, count]}``, reduced with `safedpo_jax.losses.finalize_metrics`); the same
  sums serve as the held-out evaluation;
- its data: ``load_data(config, tokenizer, split)`` builds the dataset the objective
  trains on and ``device_batch(host, mesh, ref_logps)`` places a host batch on the mesh.

`build_objective` turns a `TrainConfig` into an objective through `OBJECTIVES`, a registry
of one builder per ``--objective`` name. Each objective lives in its own module here
(`preference`: SafeDPO, SafeDAA, the DPO baselines and BFPO; `sft`; `score`: Safe RLHF's
reward and cost models; `unpaired`: KTO); adding one is a module with
its class and ``build(config)``, plus one registry line. `safedpo_jax.train.step` and
`safedpo_jax.train.loop` never test which objective they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from safedpo_jax.losses import LinkName
from safedpo_jax.sharding import to_global
from safedpo_jax.train.config import ObjectiveName, TrainConfig
from safedpo_jax.train.objectives import preference, score, sft, unpaired
from safedpo_jax.train.objectives.base import (
    Objective,
    SFTStepBatch,
    StepBatch,
    pair_step_batch,
    sft_step_batch,
)
from safedpo_jax.train.objectives.preference import BFPOObjective, PreferenceObjective
from safedpo_jax.train.objectives.score import ScoreObjective
from safedpo_jax.train.objectives.sft import SFTObjective
from safedpo_jax.train.objectives.unpaired import KTOObjective

__all__ = [
    "OBJECTIVES",
    "BFPOObjective",
    "KTOObjective",
    "ScoreObjective",
    "LinkName",
    "Objective",
    "PreferenceObjective",
    "SFTObjective",
    "SFTStepBatch",
    "StepBatch",
    "build_objective",
    "pair_step_batch",
    "sft_step_batch",
    "to_global",
]

# One builder per ``--objective`` name (`safedpo_jax.train.config.OBJECTIVES` lists them).
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    "preference": preference.build,
    "sft": sft.build,
    "reward": score.build_reward,
    "cost": score.build_cost,
    "kto": unpaired.build,
    "bfpo": preference.build_bfpo,
}


assert set(OBJECTIVES) == set(get_args(ObjectiveName)), "TrainConfig.objective's names"
assert set(preference.LINKS) == set(get_args(LinkName)), "the kernel's link names"


def build_objective(config: TrainConfig) -> Objective:
    """The objective ``config`` asks for (``config.objective`` looked up in `OBJECTIVES`).

    >>> from safedpo_jax.train.config import from_preset
    >>> build_objective(from_preset("tiny", pairs="helpful")).safe
    False
    """
    try:
        builder = OBJECTIVES[config.objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {config.objective!r}; one of {sorted(OBJECTIVES)}"
        ) from None
    return builder(config)
