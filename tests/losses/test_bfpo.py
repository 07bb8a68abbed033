"""BFPO: the authors' formula in NumPy, every label combination, gradients, extremes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from safedpo_jax.losses import bfpo_loss, bfpo_target, finalize_metrics, metric_sums

LABELS = list(itertools.product([False, True], repeat=2))  # (chosen_unsafe, rejected_unsafe)


def np_bfpo(pc, pr, rc, rr, safe_w, safe_l, beta, b1=3.0, alpha=0.5):
    """wx-zhang/bfpo: logits = (pc - pr) - (rc - rr), (logits - (b1 b3 s_w - b3 s_l - a) / b)^2."""
    b3 = 1.0 / (b1 - 1.0)
    logits = (np.float64(pc) - np.float64(pr)) - (np.float64(rc) - np.float64(rr))
    factor = b1 * b3 * np.float64(safe_w) - b3 * np.float64(safe_l) - alpha
    return (logits - factor / beta) ** 2


def logps(seed, n=8):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(-30, 5, n) for _ in range(4))


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_bfpo_matches_the_authors_formula(labels, beta):
    pc, pr, rc, rr = logps(0)
    h_w, h_l = np.full(8, labels[0]), np.full(8, labels[1])
    out = bfpo_loss(pc, pr, rc, rr, h_w, h_l, beta=beta)
    want = np_bfpo(pc, pr, rc, rr, ~h_w, ~h_l, beta)
    np.testing.assert_allclose(out.losses, want, rtol=2e-5, atol=1e-3)
    assert out.losses.dtype == jnp.float32


def test_targets_per_label_combination_and_other_constants():
    h_w, h_l = np.array(LABELS).T
    np.testing.assert_allclose(bfpo_target(h_w, h_l), [0.5, 1.0, -1.0, -0.5])
    # b1 = 5: b3 = 1/4, targets 5/4 s_w - 1/4 s_l - alpha.
    np.testing.assert_allclose(bfpo_target(h_w, h_l, b1=5.0, alpha=0.2), [0.8, 1.05, -0.45, -0.2])
    z = np.zeros(4)
    out = bfpo_loss(z, z, z, z, h_w, h_l, beta=0.1)
    np.testing.assert_allclose(out.losses, np.square([5.0, 10.0, -10.0, -5.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="b1 > 1"):
        bfpo_target(h_w, h_l, b1=1.0)


def test_the_minimiser_of_each_pair_is_its_target_gap():
    # The gradient vanishes exactly at h = tau and points towards it elsewhere.
    h_w, h_l = (jnp.array(x) for x in np.array(LABELS).T)
    tau = bfpo_target(h_w, h_l) / 0.2
    z = jnp.zeros(4)

    def loss(gap):
        return bfpo_loss(gap, z, z, z, h_w, h_l, beta=0.2).losses.sum()

    np.testing.assert_allclose(jax.grad(loss)(tau), 0.0, atol=1e-5)
    np.testing.assert_allclose(jax.grad(loss)(z), -2.0 * tau, rtol=1e-6)


def test_gradients_extremes_and_padding():
    pc, pr, rc, rr = (jnp.asarray(a) for a in logps(1, n=4))
    h_w, h_l = (jnp.array(x) for x in np.array(LABELS).T)
    check_grads(
        lambda a, b: bfpo_loss(a, b, rc, rr, h_w, h_l, beta=0.5).losses,
        (pc, pr),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=1e-2,
        rtol=1e-3,
    )
    big = jnp.array([1e4, -1e4, 1e4, -1e4])
    out = bfpo_loss(big, -big, jnp.zeros(4), jnp.zeros(4), h_w, h_l, beta=0.01)
    assert np.isfinite(out.losses).all()
    np.testing.assert_allclose(out.losses, np_bfpo(big, -big, 0, 0, ~h_w, ~h_l, 0.01), rtol=1e-6)
    where = jnp.array([True, False, True, False])
    pad = jnp.where(where, pc, -jnp.inf)
    out = bfpo_loss(pad, pr, rc, rr, h_w, h_l, beta=0.5, where=where)
    np.testing.assert_array_equal(out.losses[~where], 0.0)
    want = bfpo_loss(pc, pr, rc, rr, h_w, h_l, beta=0.5).losses[where]
    np.testing.assert_allclose(out.losses[where], want, rtol=1e-6)
    g = jax.grad(lambda p: bfpo_loss(p, pr, rc, rr, h_w, h_l, beta=0.5, where=where).losses.sum())(
        pad
    )
    assert np.isfinite(g).all() and (g[~where] == 0).all()


def test_metric_sums_apply():
    pc, pr, rc, rr = logps(2, n=4)
    h_w, h_l = np.array(LABELS).T
    out = bfpo_loss(pc, pr, rc, rr, h_w, h_l, beta=0.1)
    m = finalize_metrics(metric_sums(out))
    np.testing.assert_allclose(
        m["loss"], np_bfpo(pc, pr, rc, rr, ~h_w, ~h_l, 0.1).mean(), rtol=1e-5
    )
    assert float(m["safety/mixed"]) == 0.5 and float(m["safety/dropped"]) == 0.0
    np.testing.assert_allclose(m["safety/margin"], np.mean([0.5, 1.0, -1.0, -0.5]), atol=1e-7)
    np.testing.assert_allclose(out.losses, np.square(np.asarray(out.logits) / 0.1), rtol=1e-4)
    with pytest.raises(ValueError, match="beta must be > 0"):
        bfpo_loss(pc, pr, rc, rr, h_w, h_l, beta=-1.0)
    with pytest.raises(ValueError, match="rejected_unsafe has shape"):
        bfpo_loss(pc, pr, rc, rr, h_w, h_l[:2], beta=0.1)
