"""PPO-Lagrangian kernels against NumPy loops written here, hand values and invariants."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safedpo_jax.losses import (
    clipped_value_loss,
    gae,
    kl_penalized_streams,
    lagrange_update,
    lagrangian_advantage,
    masked_token_mean,
    ppo_clip_fraction,
    ppo_clipped_loss,
    update_cost_window,
    window_mean,
)


def _right_padded_mask(lengths: list[int], t: int) -> np.ndarray:
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _numpy_gae(rewards, values, mask, gamma, lam):
    """safe-rlhf's loop: zero rewards and values off the mask, walk backwards."""
    r = np.where(mask, rewards, 0.0)
    v = np.where(mask, values, 0.0)
    b, t = r.shape
    adv = np.zeros((b, t))
    last = np.zeros(b)
    for i in reversed(range(t)):
        next_v = v[:, i + 1] if i < t - 1 else 0.0
        delta = r[:, i] + gamma * next_v - v[:, i]
        last = delta + gamma * lam * last
        adv[:, i] = last
    ret = adv + v
    return np.where(mask, adv, 0.0), np.where(mask, ret, 0.0)


# ----------------------------------------------------------------------------- GAE


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (0.6, 1.0), (0.8, 0.0)])
def test_gae_matches_numpy_loop_with_padding(gamma: float, lam: float) -> None:
    rng = np.random.default_rng(0)
    b, t = 4, 7
    mask = _right_padded_mask([7, 3, 1, 5], t)
    rewards = rng.normal(size=(b, t))
    values = rng.normal(size=(b, t))
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = _numpy_gae(rewards, values, mask, gamma, lam)
    assert adv.dtype == jnp.float32 and adv.shape == (b, t)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_gae_closed_forms() -> None:
    # lam = 1: A_t = sum_{k>=t} gamma^(k-t) r_k - V_t (Monte Carlo return minus value).
    r = np.array([[1.0, 2.0, 3.0]])
    v = np.array([[0.5, -1.0, 2.0]])
    m = np.ones((1, 3), bool)
    adv, ret = gae(r, v, m, gamma=0.5, lam=1.0)
    mc = np.array([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]])
    np.testing.assert_allclose(ret, mc, rtol=1e-6)
    np.testing.assert_allclose(adv, mc - v, rtol=1e-6)
    # lam = 0: the one-step TD error r_t + gamma V_{t+1} - V_t, with V after the end = 0.
    adv0, _ = gae(r, v, m, gamma=0.5, lam=0.0)
    np.testing.assert_allclose(adv0, [[1 + 0.5 * -1 - 0.5, 2 + 0.5 * 2 + 1, 3 - 2.0]], rtol=1e-6)


def test_gae_padding_is_inert_and_masking_equals_slicing() -> None:
    rng = np.random.default_rng(1)
    mask = _right_padded_mask([4, 2], 6)
    r, v = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    junk_r = np.where(mask, r, 1e6)
    junk_v = np.where(mask, v, np.nan)
    adv2, ret2 = gae(junk_r, junk_v, mask, gamma=0.9, lam=0.8)
    np.testing.assert_array_equal(adv, adv2)
    np.testing.assert_array_equal(ret, ret2)
    sliced, _ = gae(r[1:, :2], v[1:, :2], np.ones((1, 2), bool), gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv[1, :2], sliced[0], rtol=1e-6)
    assert np.all(np.asarray(adv)[~mask] == 0) and np.all(np.asarray(ret)[~mask] == 0)


def test_gae_jit_equals_eager_and_bad_input() -> None:
    rng = np.random.default_rng(2)
    r, v = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    m = _right_padded_mask([5, 2, 4], 5)
    eager = gae(r, v, m, gamma=1.0, lam=0.95)
    jitted = jax.jit(lambda a, b, c: gae(a, b, c, gamma=1.0, lam=0.95))(r, v, m)
    np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="values has shape"):
        gae(r, v[:, :4], m, gamma=1.0, lam=0.95)
    with pytest.raises(ValueError, match="lam must be in"):
        gae(r, v, m, gamma=1.0, lam=1.5)
    with pytest.raises(ValueError, match=r"rewards must be \[B, T\]"):
        gae(r[0], v[0], m[0], gamma=1.0, lam=0.95)


# ----------------------------------------------------------------------------- streams


def test_kl_penalized_streams_against_numpy() -> None:
    rng = np.random.default_rng(3)
    b, t, kl_coeff = 3, 5, 0.1
    mask = _right_padded_mask([5, 2, 3], t)
    lp, ref = -rng.uniform(0, 3, (b, t)), -rng.uniform(0, 3, (b, t))
    r_score = np.array([1.5, -2.0, 60.0])  # the last is clipped to 50 at its end token
    c_score = np.array([-0.5, 3.0, -70.0])
    rewards, costs = kl_penalized_streams(r_score, c_score, lp, ref, mask, kl_coeff=kl_coeff)
    kl = lp - ref
    want_r = -kl_coeff * kl
    want_c = kl_coeff * kl
    for i, n in enumerate([5, 2, 3]):
        want_r[i, n - 1] += r_score[i]
        want_c[i, n - 1] += c_score[i]
    want_r = np.where(mask, np.clip(want_r, -50, 50), 0.0)
    want_c = np.where(mask, np.clip(want_c, -50, 50), 0.0)
    np.testing.assert_allclose(rewards, want_r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(costs, want_c, rtol=1e-6, atol=1e-6)
    assert float(rewards[2, 2]) == 50.0 and float(costs[2, 2]) == -50.0
    # without the KL in the cost stream: only the end score remains
    _, costs_no_kl = kl_penalized_streams(
        r_score, c_score, lp, ref, mask, kl_coeff=kl_coeff, cost_kl=False
    )
    ends = np.zeros((b, t))
    ends[[0, 1, 2], [4, 1, 2]] = np.clip(c_score, -50, 50)
    np.testing.assert_allclose(costs_no_kl, ends, atol=1e-7)


def test_kl_penalized_streams_bad_input() -> None:
    m = np.ones((2, 3), bool)
    with pytest.raises(ValueError, match=r"cost_scores must be \[B\]"):
        kl_penalized_streams(np.zeros(2), np.zeros(3), np.zeros((2, 3)), np.zeros((2, 3)), m,
                             kl_coeff=0.1)  # fmt: skip
    with pytest.raises(ValueError, match="ref_logps has shape"):
        kl_penalized_streams(np.zeros(2), np.zeros(2), np.zeros((2, 3)), np.zeros((2, 4)), m,
                             kl_coeff=0.1)  # fmt: skip


# ----------------------------------------------------------------------------- actor


def test_lagrangian_advantage_hand_values() -> None:
    a_r = np.array([[2.0, -1.0]])
    a_c = np.array([[1.0, 3.0]])
    lam = 0.5
    np.testing.assert_allclose(
        lagrangian_advantage(a_r, a_c, lam), [[(2 - 0.5) / 1.5, (-1 - 1.5) / 1.5]], rtol=1e-6
    )
    np.testing.assert_allclose(
        lagrangian_advantage(a_r, a_c, lam, normalize=False), [[1.5, -2.5]], rtol=1e-6
    )
    # lambda = 0: the reward advantage alone
    np.testing.assert_allclose(lagrangian_advantage(a_r, a_c, 0.0), a_r)


def test_ppo_clipped_loss_hand_values_and_per_sequence_mean() -> None:
    clip = 0.2
    ratio = np.array([[1.5, 0.5, 1.1, 9.0], [0.7, 1.3, 1.0, 1.0]])
    adv = np.array([[1.0, -2.0, 3.0, 5.0], [1.0, -1.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    loss = ppo_clipped_loss(np.log(ratio), np.zeros_like(ratio), adv, mask, clip=clip)
    # row 0: min(1.5, 1.2)*1 = 1.2; min(-1, -1.6) = -1.6; 1.1*3 = 3.3 -> mean 2.9/3
    # row 1: min(0.7, 0.8)*1 = 0.7; min(-1.3, -1.2) = -1.3 -> mean -0.3
    np.testing.assert_allclose(loss, [-(1.2 - 1.6 + 3.3) / 3, 0.3], rtol=1e-5)
    # the masked mean is per sequence: a global token mean would give -(2.9 - 0.6) / 5
    assert not np.isclose(float(jnp.mean(loss)), -(2.9 - 0.6) / 5)


def test_ppo_clipped_loss_gradient() -> None:
    # the gradient is -A * rho / n on unclipped tokens and 0 where the clip binds
    old = np.zeros((1, 3))
    adv = np.array([[1.0, 1.0, -1.0]])
    mask = np.ones((1, 3), bool)
    lp = np.log(np.array([[1.1, 1.5, 1.5]]))
    g = jax.grad(lambda x: ppo_clipped_loss(x, old, adv, mask, clip=0.2)[0])(jnp.asarray(lp))
    np.testing.assert_allclose(g, [[-1.1 / 3, 0.0, 1.5 / 3]], rtol=1e-5)


def test_clip_fraction() -> None:
    ratio = np.array([[1.5, 0.5, 1.1, 9.0]])
    mask = np.array([[True, True, True, False]])
    frac = ppo_clip_fraction(np.log(ratio), np.zeros_like(ratio), mask, clip=0.2)
    np.testing.assert_allclose(frac, [2 / 3], rtol=1e-6)


# ----------------------------------------------------------------------------- critic


def test_clipped_value_loss_hand_values() -> None:
    values = np.array([[3.0, 0.5, -8.0, 100.0]])
    old = np.array([[0.0, 0.0, 0.0, 0.0]])
    returns = np.array([[1.0, 1.0, -9.0, 0.0]])
    mask = np.array([[True, True, True, False]])
    loss = clipped_value_loss(values, old, returns, mask, clip=5.0)
    # (3-1)^2 = 4 (inside the clip); (0.5-1)^2 = 0.25; max((-8+9)^2, (-5+9)^2) = 16
    np.testing.assert_allclose(loss, [0.5 * (4 + 0.25 + 16) / 3], rtol=1e-6)
    loss1 = clipped_value_loss(values, old, returns, mask, clip=1.0)
    # clip 1: max(4, (1-1)^2) = 4; max(0.25, 0.25); max(1, (-1+9)^2 = 64)
    np.testing.assert_allclose(loss1, [0.5 * (4 + 0.25 + 64) / 3], rtol=1e-6)


def test_masked_token_mean_empty_row_is_zero() -> None:
    out = masked_token_mean(np.array([[1.0, 2.0], [np.nan, 5.0]]), np.array([[1, 1], [0, 0]]))
    np.testing.assert_array_equal(out, [1.5, 0.0])


# ----------------------------------------------------------------------------- multiplier


def test_lagrange_update_is_sgd_on_log_lambda() -> None:
    lam0 = 2.0
    new = lagrange_update(math.log(lam0), 0.7, threshold=0.2, lr=0.1, lambda_max=None)
    # d/d(log lam) of -(J - d) * lam is -(J - d) * lam; SGD subtracts lr times it
    np.testing.assert_allclose(new, math.log(lam0) + 0.1 * 0.5 * lam0, rtol=1e-6)
    g = jax.grad(lambda x: -(0.7 - 0.2) * jnp.exp(x))(jnp.float32(math.log(lam0)))
    np.testing.assert_allclose(new, math.log(lam0) - 0.1 * g, rtol=1e-6)


def test_lagrange_update_direction_and_bounds() -> None:
    log_lam = jnp.float32(0.0)
    up = lagrange_update(log_lam, 1.0, threshold=0.0, lr=0.1, lambda_max=5.0)
    down = lagrange_update(log_lam, -1.0, threshold=0.0, lr=0.1, lambda_max=5.0)
    still = lagrange_update(log_lam, 0.3, threshold=0.3, lr=0.1, lambda_max=5.0)
    assert float(down) < float(still) == 0.0 < float(up)
    # capped at lambda_max, and never below 0 however long the cost stays under d
    x = log_lam
    for _ in range(200):
        x = lagrange_update(x, 10.0, threshold=0.0, lr=0.1, lambda_max=5.0)
    np.testing.assert_allclose(jnp.exp(x), 5.0, rtol=1e-6)
    for _ in range(2000):
        x = lagrange_update(x, -1.0, threshold=0.0, lr=0.1, lambda_max=5.0)
    assert 0.0 < float(jnp.exp(x)) < 0.01
    with pytest.raises(ValueError, match="lr must be > 0"):
        lagrange_update(0.0, 1.0, threshold=0.0, lr=0.0, lambda_max=5.0)


def test_cost_window_keeps_the_most_recent() -> None:
    w, n = jnp.zeros(4), jnp.int32(0)
    assert float(window_mean(w, n)) == 0.0
    w, n = update_cost_window(w, n, jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(window_mean(w, n), 2.0)
    w, n = update_cost_window(w, n, jnp.array([10.0, 20.0]))  # 1 drops out
    assert int(n) == 4
    np.testing.assert_allclose(window_mean(w, n), (2 + 3 + 10 + 20) / 4)
    w, n = update_cost_window(w, n, jnp.arange(6.0))  # longer than the window
    np.testing.assert_allclose(window_mean(w, n), (2 + 3 + 4 + 5) / 4)
