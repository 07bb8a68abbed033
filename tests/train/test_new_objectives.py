"""The objectives of the comparison's baselines: reward and cost models, KTO, BFPO.

Each is checked through the one step against an independent computation on the same
inputs: the per-pair kernels (already proven in tests/losses/) applied by hand to the
model's own scores or log-probs, in NumPy. A micro Llama (2 layers, hidden 32, vocabulary
64) on 4 random pairs; one device; float32 (rtol 1e-5).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from trainhelpers import LABELS, MICRO, B, T, batch, build, pair_logps

from safedpo_jax import models, sharding
from safedpo_jax.data import load_preference_data, load_tokenizer
from safedpo_jax.train.config import from_preset
from safedpo_jax.train.objectives import (
    BFPOObjective,
    KTOObjective,
    ScoreObjective,
    build_objective,
)
from safedpo_jax.train.objectives.score import drop_contradictory, end_scores
from safedpo_jax.train.setup import setup_step

SCORE = {**MICRO, "architectures": ["LlamaForScore"], "score_dim": 1, "bias": True}


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(1, 1, 1)


def tiny(**overrides):
    fields = dict(model_config=MICRO, batch_size=B, max_length=T, warmup_ratio=0.0)
    return from_preset("tiny", **{**fields, **overrides})


def first_step(config, objective, policy, mesh, b, reference=None):
    setup = setup_step(
        config, policy, mesh, reference=reference, total_steps=4, objective=objective
    )
    with jax.set_mesh(mesh):
        _, metrics = setup.compile()(setup.state, setup.reference, b)
    return {k: float(v) for k, v in metrics.items()}


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_score_objectives_match_numpy_on_the_models_end_scores(mesh, kind):
    model = build(mesh, 0, SCORE)
    b = batch()
    s = np.asarray(end_scores(models.Model.split(model), b), np.float64)
    # the end score is the head at the last real token of each sequence
    lengths = np.asarray(b.attention_mask).sum(-1)
    per_token = np.asarray(
        model(b.input_ids.reshape(2 * B, T), b.attention_mask.reshape(2 * B, T), per_token=True)
    ).reshape(B, 2, T)
    np.testing.assert_allclose(
        s, np.take_along_axis(per_token, lengths[..., None] - 1, -1)[..., 0], rtol=1e-6
    )
    reg = 0.001
    if kind == "reward":
        want = -log_sigmoid(s[:, 0] - s[:, 1]) + reg * (s[:, 0] ** 2 + s[:, 1] ** 2) / 2
        accuracy = np.mean(s[:, 0] > s[:, 1])
    else:
        sign = np.where(LABELS, -1.0, 1.0)
        want = (
            -log_sigmoid(s[:, 1] - s[:, 0])
            - log_sigmoid(-sign[:, 0] * s[:, 0])
            - log_sigmoid(-sign[:, 1] * s[:, 1])
            + reg * (s[:, 0] ** 2 + s[:, 1] ** 2) / 2
        )
        accuracy = np.mean(s[:, 1] > s[:, 0])
    metrics = first_step(tiny(), ScoreObjective(kind=kind), model, mesh, b)
    np.testing.assert_allclose(metrics["loss"], want.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy)
    if kind == "cost":
        right = (-np.where(LABELS, -1.0, 1.0) * s) > 0
        np.testing.assert_allclose(metrics["accuracy_sign"], right.mean())


def test_contradictory_cost_pairs_are_counted_and_dropped_or_raise():
    tokenizer = load_tokenizer("sample")
    ds, summary = load_preference_data(
        "sample", split="test", pairs="harmless", tokenizer=tokenizer, max_length=64
    )
    # make two pairs contradictory: the "safer" response unsafe, the other safe
    pairs = list(ds.pairs)
    for i in (0, 1):
        pairs[i] = dataclasses.replace(pairs[i], unsafe=(True, False))
    bad = dataclasses.replace(ds, pairs=tuple(pairs))
    kept, kept_summary = drop_contradictory(bad, summary, on="drop")
    assert len(kept) == len(ds) - 2 and kept_summary.pairs == len(ds) - 2
    assert kept_summary.dropped["contradictory_safety"] == 2
    assert kept.pairs[0] == ds.pairs[2]
    with pytest.raises(ValueError, match="2 row\\(s\\) label the safer response unsafe"):
        drop_contradictory(bad, summary, on="raise")
    assert drop_contradictory(ds, summary, on="raise")[0] is ds  # clean data passes


def test_kto_at_the_reference_and_its_data_weights(mesh):
    policy = build(mesh, 0)
    b = batch()
    objective = KTOObjective(beta=0.5).with_data(
        dataclasses.make_dataclass("D", ["unsafe"])(
            unsafe=np.array([[True, False], [False, False], [False, True], [False, False]])
        )
    )
    assert objective.undesirable_weight == 3.0  # n_desirable / n_undesirable = 3 / 1
    # policy == reference: every log-ratio and z0 are 0, so each loss is weight / 2
    metrics = first_step(tiny(objective="kto"), objective, policy, mesh, b)
    weights = np.where(LABELS[:, 0], 3.0, 1.0)
    np.testing.assert_allclose(metrics["loss"], np.mean(weights / 2), rtol=1e-6)
    assert metrics["kl"] == 0.0


def test_kto_against_numpy_with_a_different_reference(mesh):
    policy, reference, b = build(mesh, 0), build(mesh, 1), batch()
    p, r = pair_logps(policy, b), pair_logps(reference, b)
    beta, w_u = 0.3, 2.0
    z0 = max(0.0, np.mean(p[:, 1] - r[:, 1]))
    ratio = p[:, 0] - r[:, 0]
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    desirable = ~LABELS[:, 0]
    want = np.where(
        desirable, 1 - sigmoid(beta * (ratio - z0)), w_u * (1 - sigmoid(beta * (z0 - ratio)))
    )
    objective = KTOObjective(beta=beta, undesirable_weight=w_u)
    metrics = first_step(tiny(objective="kto"), objective, policy, mesh, b, reference)
    np.testing.assert_allclose(metrics["loss"], want.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], z0, rtol=1e-5, atol=1e-6)


def test_bfpo_against_numpy(mesh):
    policy, reference, b = build(mesh, 0), build(mesh, 1), batch()
    p, r = pair_logps(policy, b), pair_logps(reference, b)
    beta, b1, alpha = 0.1, 3.0, 0.5
    b3 = 1 / (b1 - 1)
    s = 1.0 - LABELS  # 1 = safe
    target = (b1 * b3 * s[:, 0] - b3 * s[:, 1] - alpha) / beta
    h = (p[:, 0] - r[:, 0]) - (p[:, 1] - r[:, 1])
    objective = BFPOObjective(beta=beta)
    metrics = first_step(tiny(objective="bfpo"), objective, policy, mesh, b, reference)
    np.testing.assert_allclose(metrics["loss"], np.mean((h - target) ** 2), rtol=1e-5)


def test_the_config_builds_each_objective_with_its_hyperparameters():
    assert build_objective(tiny(objective="reward", score_regularization=0.01)) == ScoreObjective(
        kind="reward", regularization=0.01
    )
    assert build_objective(tiny(objective="cost", contradictory="raise")).contradictory == "raise"
    kto = build_objective(tiny(objective="kto", beta=0.05, kto_undesirable_weight=2.5))
    assert (kto.beta, kto.undesirable_weight) == (0.05, 2.5)
    bfpo = build_objective(tiny(objective="bfpo", beta=0.01, bfpo_b1=4.0))
    assert (bfpo.beta, bfpo.b1, bfpo.alpha) == (0.01, 4.0, 0.5)


def test_length_normalised_ipo_divides_by_each_completions_scored_tokens(mesh):
    """--length-normalize passes TRL's completion lengths (scored tokens) to the kernel."""
    policy, reference, b = build(mesh, 0), build(mesh, 1), batch()
    p, r = pair_logps(policy, b), pair_logps(reference, b)
    lengths = np.asarray(b.loss_mask)[..., 1:].sum(-1)  # the targets that are scored
    beta = 0.1
    gap = (p[:, 0] - r[:, 0]) / lengths[:, 0] - (p[:, 1] - r[:, 1]) / lengths[:, 1]
    want = np.mean((gap - 1 / (2 * beta)) ** 2)  # IPO on TRL's per-token log-ratios
    objective = build_objective(tiny(pairs="helpful", loss="ipo", beta=beta, length_normalize=True))
    metrics = first_step(tiny(), objective, policy, mesh, b, reference)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    summed = build_objective(tiny(pairs="helpful", loss="ipo", beta=beta))
    assert not summed.length_normalize
    policy = build(mesh, 0)  # the step donated the first one
    plain = first_step(tiny(), summed, policy, mesh, b, reference)["loss"]
    assert abs(plain - want) > 1e-3 * want  # the summed form differs on these lengths


def test_the_trainer_offers_on_error_drop_for_bad_rows(tmp_path):
    """--on-error drop (the data error message's advice) drops and counts a bad row;
    the default stops naming it."""
    import json

    from safedpo_jax.data import DataError
    from safedpo_jax.data.rows import SAMPLE_DIR

    lines = (SAMPLE_DIR / "train.jsonl").read_text().splitlines()[:20]
    bad = json.loads(lines[3])
    bad["better_response_id"] = 7
    lines[3] = json.dumps(bad)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tokenizer = load_tokenizer("sample")
    for pairs in ("helpful", "unpaired"):
        config = tiny(
            dataset=str(path), tokenizer="sample", pairs=pairs, on_error="drop", max_length=64
        )
        ds, summary = build_objective(config).load_data(config, tokenizer, "train")
        assert summary.rows == 20 and summary.dropped == {"invalid_response_id": 1}
        assert len(ds) == (19 if pairs == "helpful" else 38)
    with pytest.raises(DataError, match="--on-error drop"):
        config = tiny(dataset=str(path), tokenizer="sample", pairs="helpful", max_length=64)
        build_objective(config).load_data(config, tokenizer, "train")
