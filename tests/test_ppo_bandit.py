r"""PPO-Lagrangian on a constrained bandit whose answer is known in closed form.

The world: ``M`` prompts, ``K`` one-token responses each, known rewards ``r(x, y)`` and
costs ``c(x, y)``, a reference ``pi_ref(y|x)``, a tabular actor ``pi = softmax(theta)``
and tabular critics ``V_r(x)``, ``V_c(x)``. Each update uses the library's kernels exactly
as the trainer does: `kl_penalized_streams` -> `gae` (gamma 1, lambda 0.95) per stream ->
`lagrange_update` from the episode cost -> `lagrangian_advantage` -> `ppo_clipped_loss`
(clip 0.2, one update per rollout) and `clipped_value_loss`. Instead of sampled rollouts
every (prompt, response) pair is a length-1 episode weighted by its exact probability
``pi_old(y|x) / M``, so the expectations are exact and the run is deterministic; the
episode-cost mean ``J_c`` is the exact ``E_pi[c]`` (the limit of the 128-episode window).

The fixed point at a fixed multiplier lambda. With one token the streams are
``R(y) = r(y) - k * KL(y)`` and ``C(y) = c(y) + k * KL(y)`` where
``KL(y) = log pi(y) - log pi_ref(y)`` and ``k`` the KL coefficient; GAE gives
``A_r = R - V_r`` and ``A_c = C - V_c``. The actor's advantage is::

    A(y) = (A_r - lam A_c) / s,          s = 1 + lam (normalised) or s = 1 (not)
         = [r(y) - lam c(y) - (k + lam k) KL(y)] / s - b(x)       (b: the critics' baseline)

so the KL's coefficient is ``k (1 + lam)`` before the division (``k`` after it, when
normalised). At ratio 1 the PPO gradient is the exact policy gradient of
``E_pi[A]`` with ``A`` held fixed, ``sum_y pi(y) A(y) grad log pi(y)``; it vanishes for
every ``theta`` direction exactly when ``A(y)`` is constant in ``y`` (the baseline drops
out because ``E_pi[grad log pi] = 0``), i.e. when::

    r(y) - lam c(y) - k (1 + lam) (log pi(y) - log pi_ref(y)) = const
    =>  pi_lam(y)  propto  pi_ref(y) exp((r(y) - lam c(y)) / ((1 + lam) k)).

The division by ``1 + lam`` scales ``A`` by a positive number and so changes the step size
only, never this fixed point: with or without it (``normalize``) the answer is the same.
(The brief that asked for this test expected ``exp((r - lam c) / k)`` without the
division; that holds only when the cost stream carries no KL term.) It is the maximiser
of ``E[r - lam c] / (1 + lam) - k KL(pi || pi_ref)``: the KL-regularised Lagrangian with
the KL coefficient ``k (1 + lam)``.

Without the KL in the cost stream (``cost_kl=False``, not safe-rlhf) the constant is
``r - lam c - k KL``, so ``pi_lam propto pi_ref exp((r - lam c) / k)``: the exact optimum of
``max E[r] - k KL(pi || pi_ref)`` subject to ``E[c] <= d`` when lam is its multiplier.

The multiplier. ``lagrange_update`` moves ``log lam`` by ``lr (J_c - d) lam``: lam stops
where ``E_{pi_lam}[c] = d`` (the constraint binds; lam* is the root of this one-dimensional
equation, found here by bisection) or decays to 0 when ``E_{pi_0}[c] < d`` (slack; then
``pi_0 propto pi_ref exp(r / k)`` in both variants, and lam shrinks like ``1 / t`` since its
log-space step is proportional to lam).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from safedpo_jax.losses import (
    clipped_value_loss,
    gae,
    kl_penalized_streams,
    lagrange_update,
    lagrangian_advantage,
    ppo_clipped_loss,
)

# Helpful responses are costly (r and c correlated, as in the safety setting).
REWARD = np.array([[1.0, 0.6, 0.2, -0.2], [0.9, 0.8, 0.1, 0.0], [1.2, 0.3, 0.5, -0.5]])
COST = np.array([[1.0, 0.5, -0.5, -1.0], [1.0, -0.2, -0.6, -1.0], [1.0, 0.8, -0.4, -1.0]])
REF = np.array([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
KL_COEFF = 0.5
LAMBDA_MAX = 5.0
M, K = REWARD.shape


def pi_lam(lam: float, *, cost_kl: bool) -> np.ndarray:
    """The closed-form fixed point at multiplier ``lam`` (module docstring)."""
    scale = (1.0 + lam) * KL_COEFF if cost_kl else KL_COEFF
    z = np.log(REF) + (REWARD - lam * COST) / scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def expected_cost(pi: np.ndarray) -> float:
    return float((pi * COST).sum(axis=1).mean())


def lam_star(d: float, *, cost_kl: bool) -> float:
    """The root of ``E_{pi_lam}[c] = d`` in ``[0, LAMBDA_MAX]`` by bisection."""
    lo, hi = 0.0, LAMBDA_MAX
    assert (
        expected_cost(pi_lam(lo, cost_kl=cost_kl)) > d > expected_cost(pi_lam(hi, cost_kl=cost_kl))
    ), "the constraint must bind inside [0, lambda_max]"
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected_cost(pi_lam(mid, cost_kl=cost_kl)) > d else (lo, mid)
    return 0.5 * (lo + hi)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """The largest total-variation distance over prompts."""
    return float(0.5 * np.abs(p - q).sum(axis=1).max())


def _episodes() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r = jnp.asarray(REWARD, jnp.float32).reshape(-1)
    c = jnp.asarray(COST, jnp.float32).reshape(-1)
    ref = jnp.log(jnp.asarray(REF, jnp.float32)).reshape(-1, 1)
    return r, c, ref, jnp.ones((M * K, 1), bool)


def _values(v_m: jax.Array) -> jax.Array:
    """A prompt's state value on each of its K episodes: ``[M] -> [M * K, 1]``."""
    return jnp.repeat(v_m, K).reshape(-1, 1)


def actor_loss(
    theta: jax.Array, old_theta: jax.Array, lam: jax.Array, v: jax.Array, **variant: bool
) -> jax.Array:
    """The exact expected PPO-Lagrangian actor loss of a rollout from ``old_theta``."""
    r, c, ref, mask = _episodes()
    old = jax.nn.log_softmax(old_theta).reshape(-1, 1)
    weight = jnp.exp(old[:, 0]) / M
    streams = kl_penalized_streams(
        r, c, old, ref, mask, kl_coeff=KL_COEFF, cost_kl=variant["cost_kl"]
    )
    adv_r, _ = gae(streams[0], _values(v[0]), mask, gamma=1.0, lam=0.95)
    adv_c, _ = gae(streams[1], _values(v[1]), mask, gamma=1.0, lam=0.95)
    adv = lagrangian_advantage(adv_r, adv_c, lam, normalize=variant["normalize"])
    logps = jax.nn.log_softmax(theta).reshape(-1, 1)
    return jnp.sum(weight * ppo_clipped_loss(logps, old, adv, mask, clip=0.2))


@functools.partial(jax.jit, static_argnames=("steps", "normalize", "cost_kl"))
def run(
    threshold: float, *, steps: int, normalize: bool, cost_kl: bool, lambda_lr: float = 0.1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PPO-Lagrangian from ``pi_ref`` and lambda 1: ``(pi, lambda, episode-cost history)``."""
    r, c, ref, mask = _episodes()
    actor_opt, critic_opt = optax.sgd(1.0), optax.sgd(0.5)

    def step(carry: tuple, _: None) -> tuple[tuple, jax.Array]:
        theta, v, log_lam = carry
        old = jax.nn.log_softmax(theta).reshape(-1, 1)
        weight = jnp.exp(old[:, 0]) / M
        # the multiplier first (safe-rlhf updates it before the actor), from E_pi[c]
        j_c = jnp.sum(weight * c)
        log_lam = lagrange_update(
            log_lam, j_c, threshold=threshold, lr=lambda_lr, lambda_max=LAMBDA_MAX
        )
        g = jax.grad(actor_loss)(
            theta, theta, jnp.exp(log_lam), v, normalize=normalize, cost_kl=cost_kl
        )
        theta = optax.apply_updates(theta, actor_opt.update(g, actor_opt.init(theta))[0])
        # critics: regress each stream's returns, clipped around the rollout's values
        streams = kl_penalized_streams(r, c, old, ref, mask, kl_coeff=KL_COEFF, cost_kl=cost_kl)
        returns = [
            gae(s, _values(v[i]), mask, gamma=1.0, lam=0.95)[1] for i, s in enumerate(streams)
        ]

        def critic_loss(v_new: jax.Array) -> jax.Array:
            return sum(
                jnp.sum(
                    weight
                    * clipped_value_loss(_values(v_new[i]), _values(v[i]), ret, mask, clip=5.0)
                )  # fmt: skip
                for i, ret in enumerate(returns)
            )

        gv = jax.grad(critic_loss)(v)
        v = optax.apply_updates(v, critic_opt.update(gv, critic_opt.init(v))[0])
        return (theta, v, log_lam), j_c

    init = (jnp.log(jnp.asarray(REF, jnp.float32)), jnp.zeros((2, M)), jnp.float32(0.0))
    (theta, _, log_lam), costs = jax.lax.scan(step, init, None, length=steps)
    return jax.nn.softmax(theta), jnp.exp(log_lam), costs


VARIANTS = [
    pytest.param(dict(normalize=True, cost_kl=True), id="safe-rlhf"),
    pytest.param(dict(normalize=False, cost_kl=True), id="unnormalised"),
    pytest.param(dict(normalize=False, cost_kl=False), id="no-cost-kl"),
    pytest.param(dict(normalize=True, cost_kl=False), id="no-cost-kl-normalised"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_form_is_a_fixed_point(variant: dict) -> None:
    """At pi_lam the library's actor gradient is zero, for several lam (the algebra above)."""
    for lam in (0.0, 0.3, 2.0):
        theta = jnp.log(jnp.asarray(pi_lam(lam, cost_kl=variant["cost_kl"]), jnp.float32))
        g = jax.grad(actor_loss)(theta, theta, jnp.float32(lam), jnp.zeros((2, M)), **variant)
        np.testing.assert_allclose(g, 0.0, atol=2e-6)
        # ... and the other variant's closed form is not (the test can tell them apart)
        if lam > 0:
            other = pi_lam(lam, cost_kl=not variant["cost_kl"])
            g_other = jax.grad(actor_loss)(
                jnp.log(jnp.asarray(other, jnp.float32)),
                jnp.log(jnp.asarray(other, jnp.float32)),
                jnp.float32(lam),
                jnp.zeros((2, M)),
                **variant,
            )
            assert float(jnp.abs(g_other).max()) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_converges_to_the_constrained_fixed_point(variant: dict) -> None:
    d = 0.0
    target_lam = lam_star(d, cost_kl=variant["cost_kl"])
    target = pi_lam(target_lam, cost_kl=variant["cost_kl"])
    pi, lam, costs = run(d, steps=1000, **variant)
    pi = np.asarray(pi)
    # measured (all four variants): TV < 3e-6, |lam - lam*| < 1e-5, |E[c] - d| < 2e-6
    assert tv(pi, target) < 1e-4
    assert abs(float(lam) - target_lam) < 1e-3
    assert abs(expected_cost(pi) - d) < 1e-4
    # the reference is feasible (E[c] = -0.04) but the unconstrained optimum is not (0.46):
    # without the multiplier the run would leave the feasible set
    assert float(costs[0]) < d < expected_cost(pi_lam(0.0, cost_kl=variant["cost_kl"])) - 0.4


def test_the_two_fixed_points_differ() -> None:
    """safe-rlhf's answer (KL in the cost stream) is not the exact KL-regularised
    constrained optimum; the variant without it is, and earns more ``E[r] - k KL``."""
    d = 0.0
    ours = pi_lam(lam_star(d, cost_kl=True), cost_kl=True)
    exact = pi_lam(lam_star(d, cost_kl=False), cost_kl=False)

    def objective(pi: np.ndarray) -> float:
        kl = (pi * (np.log(pi) - np.log(REF))).sum(axis=1).mean()
        return float((pi * REWARD).sum(axis=1).mean() - KL_COEFF * kl)

    assert tv(ours, exact) > 1e-3
    assert objective(exact) > objective(ours)
    assert abs(expected_cost(ours) - d) < 1e-9 and abs(expected_cost(exact) - d) < 1e-9


def test_slack_constraint_sends_lambda_to_zero() -> None:
    d = 1.0  # above E_{pi_0}[c] ~ 0.46: the constraint never binds
    pi, lam, costs = run(d, steps=2000, normalize=True, cost_kl=True)
    pi, lam = np.asarray(pi), float(lam)
    # measured: lam 0.0085, TV to pi_0 0.0085, TV to pi_lam(lam) 1.3e-4 (pi trails lam)
    assert lam < 0.012
    assert tv(pi, pi_lam(0.0, cost_kl=True)) < 0.012
    assert tv(pi, pi_lam(lam, cost_kl=True)) < 1e-3
    assert np.all(np.asarray(costs) < d)
