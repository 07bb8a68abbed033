"""Objectives as values: the registry, and an objective plugged into the one step from outside.

A micro Llama (2 layers, hidden 32, vocabulary 64) on 4 random pairs; one device.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, get_args

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from trainhelpers import MICRO, B, T, batch

from safedpo_jax import logprobs, models, sharding
from safedpo_jax.data import PAIR_MODES
from safedpo_jax.train import config as config_lib
from safedpo_jax.train import objectives
from safedpo_jax.train.config import build_parser, from_preset
from safedpo_jax.train.objectives import (
    OBJECTIVES,
    PreferenceObjective,
    SFTObjective,
    StepBatch,
    build_objective,
)
from safedpo_jax.train.setup import setup_step


def tiny(**overrides):
    fields = dict(model_config=MICRO, batch_size=B, max_length=T)
    return from_preset("tiny", **{**fields, **overrides})


def test_registry_covers_the_config_names_and_builds_values():
    assert set(OBJECTIVES) == set(config_lib.OBJECTIVES)
    safedpo = build_objective(tiny(pairs="safedpo", beta=0.2, delta=3.0, loss="ipo"))
    assert safedpo == PreferenceObjective(
        pairs="safedpo", link="ipo", safe=True, beta=0.2, delta=3.0, chunk_size=None
    )
    for pairs in ("helpful", "harmless", "safebetter"):
        assert build_objective(tiny(pairs=pairs)).safe is False
    sft = build_objective(tiny(objective="sft", sft_responses="safe"))
    assert sft == SFTObjective(responses="safe") and not sft.uses_reference
    with pytest.raises(ValueError, match="unknown link"):
        PreferenceObjective(link="sigmoidd")  # type: ignore[arg-type]


def test_only_safety_wrapped_objectives_use_the_labels_and_the_margin():
    policy = jnp.array([[-1.0, -3.0], [-2.0, -1.0], [-1.0, -2.0], [-1.0, -1.5]])
    ref = jnp.full((B, 2), -2.0)
    b = batch()
    safe = PreferenceObjective(delta=10.0).kernel(policy, ref, b.unsafe, b.valid)
    plain = PreferenceObjective(safe=False, delta=10.0).kernel(policy, ref, b.unsafe, b.valid)
    np.testing.assert_array_equal(np.asarray(safe.swapped), [False, True, False, False])
    np.testing.assert_array_equal(np.asarray(safe.keep), [True, True, True, False])
    assert not bool(plain.swapped.any()) and bool(plain.keep.all())
    assert float(PreferenceObjective().denominator(b)) == 3.0  # both-unsafe dropped
    assert float(PreferenceObjective(safe=False).denominator(b)) == 4.0
    # the margin acts on safe-vs-unsafe pairs only when wrapped
    np.testing.assert_allclose(np.asarray(plain.margin), 0.0)
    np.testing.assert_allclose(np.asarray(safe.margin), [0.0, 10.0, 10.0, 0.0])


def test_cli_choices_come_from_the_one_source_of_each_enumeration():
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["pairs"].choices) == PAIR_MODES
    assert tuple(actions["objective"].choices) == tuple(OBJECTIVES)
    assert tuple(actions["loss"].choices) == get_args(objectives.LinkName)
    assert tuple(actions["dtype"].choices) == models.options.DTYPE_NAMES
    with pytest.raises(ValueError, match="pairs must be one of"):
        tiny(pairs="safe-dpo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChosenLikelihood:
    """An objective defined outside the library: raise the chosen response's log-prob.

    Loss = mean over valid pairs of -log pi(chosen); no reference.
    """

    name: ClassVar[str] = "chosen_likelihood"

    @property
    def uses_reference(self) -> bool:
        return False

    def denominator(self, batch: StepBatch) -> jax.Array:
        return jnp.sum(batch.valid).astype(jnp.float32)

    def sums(self, policy, reference, batch: StepBatch):
        logps = logprobs.sequence_logps(
            policy, batch.input_ids[:, 0], batch.attention_mask[:, 0], batch.loss_mask[:, 0]
        )
        nll = -jnp.sum(jnp.where(batch.valid, logps, 0.0))
        return nll, {"loss": jnp.stack([nll, jnp.sum(batch.valid).astype(jnp.float32)])}

    def load_data(self, config, tokenizer, split):
        return PreferenceObjective(pairs="helpful").load_data(config, tokenizer, split)

    def device_batch(self, host, mesh, ref_logps):
        return objectives.pair_step_batch(host, mesh)


def test_an_objective_value_plugs_into_the_one_step():
    mesh = sharding.make_mesh(1, 1, 1)
    policy = models.init_model(models.DecoderConfig.from_hf(MICRO), rngs=nnx.Rngs(0), mesh=mesh)
    b = batch()
    model = models.Model.split(policy)
    want = -float(
        jnp.mean(
            logprobs.sequence_logps(
                model, b.input_ids[:, 0], b.attention_mask[:, 0], b.loss_mask[:, 0]
            )
        )
    )
    setup = setup_step(tiny(), policy, mesh, total_steps=3, objective=ChosenLikelihood())
    assert setup.reference is None
    step = setup.compile()
    state = setup.state
    with jax.set_mesh(mesh):
        losses_seen = []
        for _ in range(3):
            state, metrics = step(state, None, b)
            losses_seen.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses_seen[0], want, rtol=1e-5)
    assert losses_seen[2] < losses_seen[0]  # the step optimises the plugged-in objective
