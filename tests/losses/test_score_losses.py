"""Safe RLHF's score-model losses: NumPy parity, gradients, extremes, a separable toy fit.

The NumPy references below follow safe-rlhf's batch formulas (``mean`` of the pair terms
plus ``reg * mean`` of all ``2B`` squared end scores, cost sign ``-s`` with ``s = +1`` safe),
so the parity checks also prove that the per-pair values reduce to their batch loss.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from safedpo_jax.losses import (
    cost_metric_sums,
    cost_model_loss,
    finalize_metrics,
    normalize_cost,
    normalize_reward,
    reward_metric_sums,
    reward_model_loss,
    roc_auc,
    update_score_normalizer,
)

REG = 0.001


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_reward_batch_loss(higher, lower, reg):
    """safe-rlhf sequence-wise: -logsigmoid(h - l).mean() + reg * stack([l, h])^2.mean()."""
    higher, lower = np.float64(higher), np.float64(lower)
    return (
        -np_log_sigmoid(higher - lower).mean() + reg * np.square(np.stack([lower, higher])).mean()
    )


def np_cost_batch_loss(lower, higher, safer_sign, unsafer_sign, reg):
    """safe-rlhf: lower = safer costs, higher = unsafer costs, cost sign = -safety sign."""
    lower, higher = np.float64(lower), np.float64(higher)
    lower_cost_sign, higher_cost_sign = -np.float64(safer_sign), -np.float64(unsafer_sign)
    pair = (
        -np_log_sigmoid(higher - lower)
        - np_log_sigmoid(lower_cost_sign * lower)
        - np_log_sigmoid(higher_cost_sign * higher)
    ).mean()
    return pair + reg * np.square(np.stack([lower, higher])).mean()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- reward model
def test_reward_loss_matches_safe_rlhf_batch_formula(rng):
    better, worse = rng.normal(size=16) * 3, rng.normal(size=16) * 3
    per_pair = reward_model_loss(better, worse, regularization=REG)
    assert per_pair.shape == (16,) and per_pair.dtype == jnp.float32
    np.testing.assert_allclose(per_pair.mean(), np_reward_batch_loss(better, worse, REG), rtol=1e-6)
    # Per pair: the pair's log-loss plus reg * (r_w^2 + r_l^2) / 2.
    want = -np_log_sigmoid(better - worse) + REG * (better**2 + worse**2) / 2
    np.testing.assert_allclose(per_pair, want, rtol=1e-5, atol=1e-6)


def test_reward_loss_where_equals_slicing_and_padding_is_inert(rng):
    better, worse = rng.normal(size=6), rng.normal(size=6)
    where = np.array([True, False, True, True, False, True])
    better_pad = np.where(where, better, np.nan)
    out = reward_model_loss(better_pad, worse, where=where)
    np.testing.assert_array_equal(out[~where], 0.0)
    np.testing.assert_allclose(
        out[where], reward_model_loss(better[where], worse[where]), rtol=1e-6
    )
    g = jax.grad(lambda b: reward_model_loss(b, worse, where=where).sum())(jnp.asarray(better_pad))
    assert np.isfinite(g).all() and (g[~where] == 0).all()


def test_reward_gradients_and_extremes(rng):
    better, worse = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5))
    check_grads(
        lambda b, w: reward_model_loss(b, w, regularization=0.1),
        (better, worse),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )
    big = jnp.array([1e4, -1e4, 80.0, -80.0])
    out = reward_model_loss(big, -big, regularization=0.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [0.0, 2e4, 0.0, 160.0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- cost model
@pytest.mark.parametrize("signs", list(itertools.product([1, -1], repeat=2)))
def test_cost_loss_matches_safe_rlhf_for_every_sign_combination(rng, signs):
    n = 12
    safer, unsafer = rng.normal(size=n) * 2, rng.normal(size=n) * 2
    s_s, s_u = np.full(n, signs[0]), np.full(n, signs[1])
    per_pair = cost_model_loss(safer, unsafer, s_s, s_u, regularization=REG)
    np.testing.assert_allclose(
        per_pair.mean(), np_cost_batch_loss(safer, unsafer, s_s, s_u, REG), rtol=1e-6
    )


def test_cost_sign_terms_push_safe_below_and_unsafe_above_zero():
    # One pair, equal costs so the ordering term is constant: the sign terms alone move.
    grad = jax.grad(
        lambda c: cost_model_loss(
            c[:1], c[1:], jnp.array([1]), jnp.array([-1]), regularization=0.0
        ).sum()
    )
    g = grad(jnp.zeros(2))
    assert g[0] > 0 > g[1]  # gradient descent lowers the safe cost, raises the unsafe one


def test_cost_loss_extremes_are_finite_and_right():
    c = jnp.array([-1e4, 1e4])
    out = cost_model_loss(c[:1], c[1:], jnp.array([1]), jnp.array([-1]), regularization=0.0)
    np.testing.assert_allclose(out, [0.0], atol=1e-6)
    out = cost_model_loss(c[1:], c[:1], jnp.array([1]), jnp.array([-1]), regularization=0.0)
    np.testing.assert_allclose(out, [4e4], rtol=1e-6)  # order 2e4, each sign 1e4
    g = jax.grad(lambda x: cost_model_loss(x[:1], x[1:], jnp.array([1]), jnp.array([-1])).sum())(c)
    assert np.isfinite(g).all()


def test_cost_gradients(rng):
    s_s, s_u = jnp.array([1, 1, -1]), jnp.array([-1, 1, -1])
    check_grads(
        lambda a, b: cost_model_loss(a, b, s_s, s_u, regularization=0.1),
        (jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )


def test_bad_signs_and_shapes_raise():
    with pytest.raises(ValueError, match=r"safer_sign must be \+1 \(safe\) or -1"):
        cost_model_loss(jnp.zeros(2), jnp.zeros(2), jnp.array([1, 0]), jnp.array([1, 1]))
    with pytest.raises(ValueError, match="unsafer_scores has shape"):
        cost_model_loss(jnp.zeros(2), jnp.zeros(3), jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match="regularization must be >= 0"):
        reward_model_loss(jnp.zeros(2), jnp.zeros(2), regularization=-1.0)


def test_minimising_the_cost_loss_on_free_scores_separates_safe_from_unsafe(rng):
    # A separable toy set: 40 responses, 16 unsafe, 60 pairs whose "safer" side is never
    # unsafe while the other is safe (safe-rlhf's loader rejects that case).
    n_resp = 40
    unsafe = np.zeros(n_resp, bool)
    unsafe[rng.permutation(n_resp)[:16]] = True
    pairs = []
    while len(pairs) < 60:
        i, j = rng.choice(n_resp, 2, replace=False)
        if unsafe[i] and not unsafe[j]:
            i, j = j, i
        pairs.append((i, j))
    i, j = np.array(pairs).T
    sign = np.where(unsafe, -1, 1)

    def loss(c):
        return cost_model_loss(c[i], c[j], sign[i], sign[j]).mean()

    c = jnp.zeros(n_resp)
    step = jax.jit(lambda c: c - 1.0 * jax.grad(loss)(c))
    for _ in range(500):
        c = step(c)
    seen = np.isin(np.arange(n_resp), pairs)  # a response in no pair keeps its 0 score
    assert seen.sum() >= 30
    assert (c[unsafe & seen] > 0).all() and (c[~unsafe & seen] < 0).all(), c
    assert roc_auc(c, unsafe, where=seen) == 1.0
    m = finalize_metrics(
        cost_metric_sums(
            c[i], c[j], sign[i], sign[j], cost_model_loss(c[i], c[j], sign[i], sign[j])
        )
    )
    assert float(m["accuracy_sign"]) == 1.0


# ----------------------------------------------------------------------------- metrics
def test_metric_sums_add_up_over_pieces(rng):
    better, worse = rng.normal(size=8), rng.normal(size=8)
    loss = reward_model_loss(better, worse)
    whole = finalize_metrics(reward_metric_sums(better, worse, loss))
    halves = [reward_metric_sums(better[s], worse[s], loss[s]) for s in (slice(0, 3), slice(3, 8))]
    summed = finalize_metrics({k: halves[0][k] + halves[1][k] for k in halves[0]})
    for k in whole:
        np.testing.assert_allclose(whole[k], summed[k], rtol=1e-6)
    np.testing.assert_allclose(whole["accuracy"], np.mean(better > worse))
    np.testing.assert_allclose(whole["loss"], np.mean(loss), rtol=1e-6)


def test_cost_metrics_against_numpy(rng):
    c_s, c_u = rng.normal(size=10), rng.normal(size=10)
    s_s, s_u = rng.choice([1, -1], 10), rng.choice([1, -1], 10)
    where = rng.random(10) < 0.7
    m = finalize_metrics(cost_metric_sums(c_s, c_u, s_s, s_u, np.zeros(10), where=where))
    np.testing.assert_allclose(m["accuracy"], np.mean((c_u > c_s)[where]), rtol=1e-6)
    right = np.concatenate([(-s_s * c_s > 0)[where], (-s_u * c_u > 0)[where]])
    np.testing.assert_allclose(m["accuracy_sign"], right.mean(), rtol=1e-6)


def test_roc_auc_equals_the_pairwise_definition_with_ties(rng):
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert roc_auc(-scores, labels) == pytest.approx(1 - want, abs=1e-12)
    where = rng.random(60) < 0.5
    sub = roc_auc(scores[where], labels[where])
    assert roc_auc(scores, labels, where=where) == pytest.approx(sub, abs=1e-12)
    with pytest.raises(ValueError, match="needs both classes"):
        roc_auc([1.0, 2.0], [True, True])


# ----------------------------------------------------------------------------- normaliser
def test_ema_normalizer_matches_safe_rlhf_update(rng):
    mean, var, count = 0.0, 1.0, 0
    ref_mean, ref_var = 0.0, 1.0
    for _ in range(5):
        batch = rng.normal(loc=3.0, scale=2.0, size=7)
        mean, var, count = update_score_normalizer(mean, var, count, batch, momentum=0.9)
        ref_mean = 0.9 * ref_mean + 0.1 * batch.mean()
        ref_var = 0.9 * ref_var + 0.1 * batch.var(ddof=1)  # torch.var: unbiased
    np.testing.assert_allclose([mean, var], [ref_mean, ref_var], rtol=1e-5)
    assert int(count) == 35
    x = rng.normal(size=4)
    np.testing.assert_allclose(
        normalize_reward(x, mean, var), (x - ref_mean) / (np.sqrt(ref_var) + 1e-8), rtol=1e-5
    )
    np.testing.assert_allclose(normalize_cost(x, var), x / (np.sqrt(ref_var) + 1e-8), rtol=1e-5)
    assert (np.sign(normalize_cost(x, var)) == np.sign(x)).all()


def test_ema_normalizer_where_and_errors(rng):
    x = rng.normal(size=6)
    where = np.array([1, 1, 0, 1, 0, 1], bool)
    a = update_score_normalizer(0.0, 1.0, 0, x, where=where)
    b = update_score_normalizer(0.0, 1.0, 0, x[where])
    np.testing.assert_allclose(a[:2], b[:2], rtol=1e-6)
    assert int(a[2]) == int(b[2]) == 4
    with pytest.raises(ValueError, match=">= 2 scores"):
        update_score_normalizer(0.0, 1.0, 0, jnp.array([1.0]))
    with pytest.raises(ValueError, match="momentum"):
        update_score_normalizer(0.0, 1.0, 0, x, momentum=1.0)
    jitted = jax.jit(lambda m, v, c, s: update_score_normalizer(m, v, c, s))(0.0, 1.0, 0, x)
    np.testing.assert_allclose(jitted[:2], update_score_normalizer(0.0, 1.0, 0, x)[:2], rtol=1e-6)
