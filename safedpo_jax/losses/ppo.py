"""PPO-Lagrangian (SafeRLHF) kernels: streams, GAE, the clipped losses, the multiplier step.

Pure functions of arrays (never of a model), jittable, float32 whatever the input dtype.
They follow PKU-Alignment/safe-rlhf's ``ppo_lag`` trainer (Dai et al., "Safe RLHF",
ICLR 2024); where its code and the paper differ, the code is followed and the difference
is named in the function's docstring.

Per-token arrays are ``[B, T]`` over the *response* positions: column ``t`` is the
``t``-th generated token ``y_t`` (its log-prob ``log pi(y_t | x, y_<t)``, the critic's
value ``V_t`` of the state before it), and ``mask`` is True on real response tokens
(right padding; the last True column is the episode's last token, its EOS included).
Padded positions contribute nothing and come back as 0.

One PPO-Lagrangian update, in the order safe-rlhf applies it:

1. `kl_penalized_streams`: reward stream ``-kl_coeff * KL_t`` plus the reward score at
   the last token, cost stream ``+kl_coeff * KL_t`` plus the cost score; clipped.
2. `gae` on each stream with its own critic's values (gamma 1, lambda 0.95).
3. `lagrange_update` of ``log lambda`` from the mean of the recent episode costs
   (`update_cost_window`, `window_mean`), *before* the actor's step.
4. `lagrangian_advantage` ``(A_r - lambda A_c) / (1 + lambda)``, `ppo_clipped_loss` for
   the actor and `clipped_value_loss` for each critic.

Losses are per sequence (the masked mean over that sequence's tokens, safe-rlhf's
``masked_mean``); the batch mean is the caller's, where the batch is known.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "clipped_value_loss",
    "gae",
    "kl_penalized_streams",
    "lagrange_update",
    "lagrangian_advantage",
    "masked_token_mean",
    "ppo_clip_fraction",
    "ppo_clipped_loss",
    "update_cost_window",
    "window_mean",
]


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def _check_2d(name: str, x: Array, shape: tuple[int, ...] | None = None) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be [B, T], got shape {x.shape}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} (as the first input)")


def masked_token_mean(values: ArrayLike, mask: ArrayLike) -> Array:
    """Per-sequence mean over the masked tokens: float32 ``[B]`` (0.0 for an empty row).

    safe-rlhf's ``masked_mean`` is ``((x * mask).sum(-1) / mask.sum(-1)).mean()``: the mean
    over each sequence's tokens, *then* over sequences (not one mean over all tokens of
    the batch). This function is its first half; the caller takes the batch mean.

    >>> masked_token_mean(jnp.array([[1.0, 3.0, 9.0]]), jnp.array([[True, True, False]]))
    Array([2.], dtype=float32)
    """
    x = _f32(values)
    m = jnp.asarray(mask, bool)
    _check_2d("values", x)
    _check_2d("mask", m, x.shape)
    total = jnp.sum(jnp.where(m, x, 0.0), axis=-1)
    count = jnp.sum(m, axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def kl_penalized_streams(
    reward_scores: ArrayLike,
    cost_scores: ArrayLike,
    logps: ArrayLike,
    ref_logps: ArrayLike,
    mask: ArrayLike,
    *,
    kl_coeff: float,
    clip: float = 50.0,
    cost_kl: bool = True,
) -> tuple[Array, Array]:
    """The per-token reward and cost streams of safe-rlhf's PPO-Lagrangian.

    With ``KL_t = log pi(y_t) - log pi_ref(y_t)`` (the sampled-token estimate) and ``e`` the
    last masked column of the row::

        reward_t = clip(-kl_coeff * KL_t + [t == e] * reward_score, -clip, clip)
        cost_t   = clip(+kl_coeff * KL_t + [t == e] * cost_score,   -clip, clip)

    The clip acts on the stream values after the score is added (safe-rlhf's
    ``add_kl_divergence_regularization`` clamps the summed streams with
    ``clip_range_score``; its paper speaks of clipping the scores). ``cost_kl=False`` drops
    the KL term from the cost stream (not safe-rlhf; the variant whose unnormalised
    fixed point is the exact KL-regularised constrained optimum, see ``tests/test_ppo_bandit``).

    Args:
      reward_scores, cost_scores: ``[B]`` end scores of each response.
      logps, ref_logps: ``[B, T]`` per-token log-probs of the sampled tokens under the
        rollout (old) policy and the reference.
      mask: bool ``[B, T]``, True on response tokens (right padding).
      kl_coeff: the KL coefficient (0.01 in ``ppo-lag.sh``).
      clip: the symmetric clip of the stream values (50 in safe-rlhf).
      cost_kl: add ``+kl_coeff * KL_t`` to the cost stream (safe-rlhf: True).

    Returns:
      ``(rewards, costs)``, float32 ``[B, T]``, 0 on padding.

    >>> r, c = kl_penalized_streams(jnp.array([2.0]), jnp.array([-1.0]),
    ...     jnp.array([[-1.0, -2.0, 0.0]]), jnp.array([[-1.5, -1.0, 0.0]]),
    ...     jnp.array([[True, True, False]]), kl_coeff=0.1)
    >>> [jax.device_get(s).astype(float).round(3).tolist() for s in (r, c)]
    [[[-0.05, 2.1, 0.0]], [[0.05, -1.1, 0.0]]]
    """
    lp, ref = _f32(logps), _f32(ref_logps)
    m = jnp.asarray(mask, bool)
    _check_2d("logps", lp)
    _check_2d("ref_logps", ref, lp.shape)
    _check_2d("mask", m, lp.shape)
    r, c = _f32(reward_scores), _f32(cost_scores)
    for name, s in (("reward_scores", r), ("cost_scores", c)):
        if s.shape != lp.shape[:1]:
            raise ValueError(f"{name} must be [B] = {lp.shape[:1]}, got {s.shape}")
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    t = lp.shape[1]
    end = jnp.argmax(jnp.where(m, jnp.arange(t), -1), axis=-1)
    at_end = jnp.arange(t)[None, :] == end[:, None]
    kl = jnp.where(m, lp - ref, 0.0)
    rewards = -kl_coeff * kl + jnp.where(at_end, r[:, None], 0.0)
    costs = (kl_coeff * kl if cost_kl else 0.0) + jnp.where(at_end, c[:, None], 0.0)
    rewards = jnp.where(m, jnp.clip(rewards, -clip, clip), 0.0)
    costs = jnp.where(m, jnp.clip(costs, -clip, clip), 0.0)
    return rewards, costs


def gae(
    rewards: ArrayLike, values: ArrayLike, mask: ArrayLike, *, gamma: float, lam: float
) -> tuple[Array, Array]:
    """Generalised advantage estimation per token (Schulman et al., 2016), right padding.

    With rewards and values set to 0 off the mask (so the value after a row's last token
    is 0: the episode ends there), a reverse `jax.lax.scan` computes::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}       (A_T = 0)
        R_t     = A_t + V_t                             (the critic's target)

    as safe-rlhf's ``get_advantages_and_returns`` does (both returned without gradient;
    0 on padding). safe-rlhf uses gamma = 1, lam = 0.95.

    Args:
      rewards: ``[B, T]`` the per-token stream (`kl_penalized_streams`).
      values: ``[B, T]`` the critic's values ``V_t`` of the states before each token.
      mask: bool ``[B, T]``, True on response tokens.
      gamma: the discount, in [0, 1].
      lam: the GAE lambda, in [0, 1].

    Returns:
      ``(advantages, returns)``, float32 ``[B, T]``.

    >>> adv, ret = gae(jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 0.5]]),
    ...                jnp.array([[True, True]]), gamma=1.0, lam=0.5)
    >>> adv.tolist(), ret.tolist()
    ([[0.25, 0.5]], [[0.75, 1.0]])
    """
    r, v = _f32(rewards), _f32(values)
    m = jnp.asarray(mask, bool)
    _check_2d("rewards", r)
    _check_2d("values", v, r.shape)
    _check_2d("mask", m, r.shape)
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {x}")
    r = jnp.where(m, r, 0.0)
    v = jnp.where(m, v, 0.0)
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    delta_tb = (r + gamma * next_v - v).T

    def step(carry: Array, delta_b: Array) -> tuple[Array, Array]:
        adv_b = delta_b + gamma * lam * carry
        return adv_b, adv_b

    _, adv_tb = jax.lax.scan(step, jnp.zeros_like(delta_tb[0]), delta_tb, reverse=True)
    adv = jnp.where(m, adv_tb.T, 0.0)
    returns = jnp.where(m, adv + v, 0.0)
    return jax.lax.stop_gradient(adv), jax.lax.stop_gradient(returns)


def lagrangian_advantage(
    reward_advantages: ArrayLike,
    cost_advantages: ArrayLike,
    multiplier: ArrayLike,
    *,
    normalize: bool = True,
) -> Array:
    """The actor's advantage ``(A_r - lambda * A_c) / (1 + lambda)`` (float32, input shape).

    ``normalize=False`` leaves out the ``1 + lambda`` division (``A_r - lambda * A_c``).
    The division rescales the advantage by a positive number only: it changes the step
    size, not the fixed point of the actor at a given lambda.

    >>> lagrangian_advantage(jnp.array([3.0]), jnp.array([1.0]), 2.0).tolist()
    [0.3333333432674408]
    >>> lagrangian_advantage(jnp.array([3.0]), jnp.array([1.0]), 2.0, normalize=False).tolist()
    [1.0]
    """
    a_r, a_c = _f32(reward_advantages), _f32(cost_advantages)
    if a_r.shape != a_c.shape:
        raise ValueError(f"reward advantages {a_r.shape} and cost advantages {a_c.shape} differ")
    lam = _f32(multiplier)
    combined = a_r - lam * a_c
    return combined / (1.0 + lam) if normalize else combined


def ppo_clipped_loss(
    logps: ArrayLike, old_logps: ArrayLike, advantages: ArrayLike, mask: ArrayLike, *, clip: float
) -> Array:
    """PPO's clipped surrogate (Schulman et al., 2017) per sequence: float32 ``[B]``.

    With ``rho_t = exp(logp_t - old_logp_t)``::

        loss = -masked_token_mean(min(rho_t * A_t, clip(rho_t, 1 - clip, 1 + clip) * A_t))

    the mean over each sequence's tokens (safe-rlhf's ``actor_loss_fn``); average the
    returned values over the batch. Gradients flow through ``logps`` only.

    >>> loss = ppo_clipped_loss(jnp.log(jnp.array([[1.5, 0.5]])), jnp.zeros((1, 2)),
    ...                         jnp.array([[1.0, -1.0]]), jnp.array([[True, True]]), clip=0.2)
    >>> round(float(loss[0]), 5)  # mean of min(1.5, 1.2) * 1 and max(0.5, 0.8) * -1
    -0.2
    """
    lp, old, adv = _f32(logps), jax.lax.stop_gradient(_f32(old_logps)), _f32(advantages)
    _check_2d("logps", lp)
    _check_2d("old_logps", old, lp.shape)
    _check_2d("advantages", adv, lp.shape)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    adv = jax.lax.stop_gradient(adv)
    m = jnp.asarray(mask, bool)
    ratio = jnp.exp(jnp.where(m, lp - old, 0.0))
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv)
    return -masked_token_mean(surrogate, m)


def ppo_clip_fraction(
    logps: ArrayLike, old_logps: ArrayLike, mask: ArrayLike, *, clip: float
) -> Array:
    """Per-sequence fraction of tokens whose ratio lies outside ``[1 - clip, 1 + clip]``: ``[B]``.

    >>> ppo_clip_fraction(jnp.log(jnp.array([[1.5, 1.0]])), jnp.zeros((1, 2)),
    ...                   jnp.array([[True, True]]), clip=0.2).tolist()
    [0.5]
    """
    ratio = jnp.exp(_f32(logps) - _f32(old_logps))
    return masked_token_mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32), mask)


def clipped_value_loss(
    values: ArrayLike, old_values: ArrayLike, returns: ArrayLike, mask: ArrayLike, *, clip: float
) -> Array:
    """The clipped critic loss per sequence: float32 ``[B]``.

    ::

        loss = 0.5 * masked_token_mean(max((V - R)^2, (clip(V, V_old - clip, V_old + clip) - R)^2))

    (safe-rlhf's ``critic_loss_fn``, ``clip_range_value`` = 5). Gradients flow through
    ``values`` only.

    >>> clipped_value_loss(jnp.array([[3.0]]), jnp.array([[0.0]]), jnp.array([[1.0]]),
    ...                    jnp.array([[True]]), clip=1.0).tolist()
    [2.0]
    """
    v, old, ret = _f32(values), _f32(old_values), _f32(returns)
    _check_2d("values", v)
    _check_2d("old_values", old, v.shape)
    _check_2d("returns", ret, v.shape)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    old, ret = jax.lax.stop_gradient(old), jax.lax.stop_gradient(ret)
    v_clipped = jnp.clip(v, old - clip, old + clip)
    loss = jnp.maximum(jnp.square(v - ret), jnp.square(v_clipped - ret))
    return 0.5 * masked_token_mean(loss, mask)


def lagrange_update(
    log_lambda: ArrayLike,
    episode_cost_mean: ArrayLike,
    *,
    threshold: float,
    lr: float,
    lambda_max: float | None,
) -> Array:
    """One gradient step on ``log lambda``: float32 scalar.

    safe-rlhf minimises ``-(J_c - d) * exp(log lambda)`` with plain SGD (``torch.optim.SGD``,
    no momentum) on ``log lambda``, then clamps ``log lambda <= log(lambda_max)``::

        log lambda <- min(log lambda + lr * (J_c - d) * lambda, log lambda_max)

    So lambda grows while the mean episode cost ``J_c`` exceeds the threshold ``d`` and
    shrinks (towards 0, never below) while it is under; the step in log space is
    proportional to lambda. ``lambda_max=None`` leaves it unbounded.

    >>> float(jnp.exp(lagrange_update(0.0, 2.0, threshold=0.0, lr=0.1, lambda_max=5.0)))
    1.2214027643203735
    >>> float(jnp.exp(lagrange_update(jnp.log(4.9), 9.0, threshold=0.0, lr=0.1, lambda_max=5.0)))
    5.0
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if lambda_max is not None and lambda_max <= 0:
        raise ValueError(f"lambda_max must be > 0 or None, got {lambda_max}")
    log_lam = _f32(log_lambda)
    grad = -(_f32(episode_cost_mean) - threshold) * jnp.exp(log_lam)
    new = log_lam - lr * grad
    if lambda_max is not None:
        new = jnp.minimum(new, math.log(lambda_max))
    return new


def update_cost_window(
    window: ArrayLike, count: ArrayLike, costs: ArrayLike
) -> tuple[Array, Array]:
    """Appends episode ``costs`` ``[N]`` to a fixed-size window ``[W]`` (oldest dropped).

    The window keeps the most recent ``W`` costs in its last ``count`` slots (safe-rlhf's
    ``deque(maxlen=episode_cost_window_size)``, 128); returns ``(window, count)``.

    >>> w, n = update_cost_window(jnp.zeros(3), 0, jnp.array([1.0, 2.0]))
    >>> w.tolist(), int(n), float(window_mean(w, n))
    ([0.0, 1.0, 2.0], 2, 1.5)
    """
    w = _f32(window)
    c = _f32(costs).reshape(-1)
    size = w.shape[0]
    new = jnp.concatenate([w, c])[-size:]
    return new, jnp.minimum(jnp.asarray(count, jnp.int32) + c.shape[0], size)


def window_mean(window: ArrayLike, count: ArrayLike) -> Array:
    """The mean of the last ``count`` entries of ``window`` (0.0 when empty): ``J_c``."""
    w = _f32(window)
    n = jnp.asarray(count, jnp.int32)
    recent = jnp.arange(w.shape[0]) >= w.shape[0] - n
    return jnp.where(n > 0, jnp.sum(jnp.where(recent, w, 0.0)) / jnp.maximum(n, 1), 0.0)
