"""BFPO (Zhang et al., "Bi-Factorial Preference Optimization", ICLR 2025; wx-zhang/bfpo).

A supervised (IPO-like) loss on the log-ratio gap of a pair in **helpfulness** order, whose
target depends on the two responses' safety. Pure function of arrays in float32; importing
this module pulls in jax and numpy alone.

Read in the authors' code (``src/alignment/trainer/bfpo.py``, ``src/alignment/data.py``):
pairs come as ``better_response_id`` (chosen) and the other (rejected), each with
``s = 1`` if the response is safe and ``s = 0`` if unsafe; with the gap
``h = l(y_w) - l(y_l)`` of log-ratios ``l(y) = log pi_theta(y|x) - log pi_ref(y|x)``,

    loss = (h - (b1 * b3 * s_w - b3 * s_l - alpha) / beta)^2,   b3 = 1 / (b1 - 1),

defaults ``b1 = 3``, ``alpha = 0.5`` (so ``b3 = 1/2``), batch loss the plain mean. The
target ``tau = (b1 b3 s_w - b3 s_l - alpha) / beta`` per label combination, defaults:

=======  =======  ====================  ==========================================
 y_w      y_l      beta * tau            effect
=======  =======  ====================  ==========================================
 safe     safe     b1 b3 - b3 - a = 0.5  IPO: the more helpful one up by 1/(2 beta)
 safe     unsafe   b1 b3 - a = 1         the safe winner up by 1/beta
 unsafe   safe     -b3 - a = -1          the unsafe winner *down* by 1/beta
 unsafe   unsafe   -a = -0.5             the more helpful (unsafe) one down
=======  =======  ====================  ==========================================

Safety labels are passed as this library's ``chosen_unsafe`` / ``rejected_unsafe``
(True = unsafe) and turned into ``s = 1 - h`` inside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from safedpo_jax.losses.preference import PreferenceOutput

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["bfpo_loss", "bfpo_target"]


def bfpo_target(
    chosen_unsafe: ArrayLike,
    rejected_unsafe: ArrayLike,
    *,
    b1: float = 3.0,
    alpha: float = 0.5,
) -> Array:
    """``beta * tau = b1 b3 s_w - b3 s_l - alpha`` with ``b3 = 1 / (b1 - 1)``, ``s = 1 - h``.

    Args:
      chosen_unsafe, rejected_unsafe: (B,) bool, True = unsafe.
      b1: > 1. alpha: any real.

    Returns:
      (B,) float32, the target gap times beta.

    >>> t = bfpo_target(jnp.array([False, False, True, True]),
    ...                 jnp.array([False, True, False, True]))
    >>> [float(x) for x in t]
    [0.5, 1.0, -1.0, -0.5]
    """
    if isinstance(b1, int | float) and not b1 > 1:
        raise ValueError(f"BFPO needs b1 > 1 (b3 = 1 / (b1 - 1)), got {b1}")
    s_w = 1.0 - jnp.asarray(chosen_unsafe, bool).astype(jnp.float32)
    s_l = 1.0 - jnp.asarray(rejected_unsafe, bool).astype(jnp.float32)
    b3 = 1.0 / (b1 - 1.0)
    return b1 * b3 * s_w - b3 * s_l - alpha


def bfpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_unsafe: ArrayLike,
    rejected_unsafe: ArrayLike,
    *,
    beta: float,
    b1: float = 3.0,
    alpha: float = 0.5,
    where: ArrayLike | None = None,
) -> PreferenceOutput:
    """BFPO's per-pair loss ``(h - tau)^2`` on pairs in helpfulness order (see the module doc).

    Returned as a `PreferenceOutput` so that `losses.metric_sums` applies: no pair is
    swapped or dropped; ``mixed`` marks pairs whose labels differ; ``margin`` is
    ``beta * tau`` and ``logits`` is ``beta * h - beta * tau``, so ``losses``
    equals ``(logits / beta)^2`` up to rounding.

    Args:
      policy_chosen_logps, policy_rejected_logps: (B,) summed log-probs of the helpfulness
        winner and loser under the policy (any float dtype).
      ref_chosen_logps, ref_rejected_logps: (B,) the same under the reference.
      chosen_unsafe, rejected_unsafe: (B,) bool, True = unsafe (``s = 1 - h``).
      beta: > 0 (the authors' recipe: 0.01).
      b1, alpha: BFPO's constants (defaults 3 and 0.5, the authors').
      where: optional (B,) bool; False marks padding pairs (zero loss, zero gradient).

    Returns:
      `PreferenceOutput` with float32 per-pair ``losses``.

    An unsafe winner over a safe loser at the reference (h = 0) with beta = 0.5: the
    target is ``-1 / 0.5 = -2``, so the loss is 4.

    >>> z = jnp.zeros(1)
    >>> out = bfpo_loss(z, z, z, z, jnp.array([True]), jnp.array([False]), beta=0.5)
    >>> float(out.losses[0]), float(out.margin[0])
    (4.0, -1.0)
    """
    if isinstance(beta, int | float) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pc, pr, rc, rr = (
        jnp.asarray(x).astype(jnp.float32)
        for x in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    )
    h_w = jnp.asarray(chosen_unsafe, bool)
    h_l = jnp.asarray(rejected_unsafe, bool)
    for name, x in (
        ("policy_rejected_logps", pr),
        ("ref_chosen_logps", rc),
        ("ref_rejected_logps", rr),
        ("chosen_unsafe", h_w),
        ("rejected_unsafe", h_l),
    ):
        if x.shape != pc.shape:
            raise ValueError(
                f"bfpo_loss: {name} has shape {x.shape}, policy_chosen_logps {pc.shape}"
            )
    keep = jnp.ones(pc.shape, bool) if where is None else jnp.asarray(where, bool)
    margin = bfpo_target(h_w, h_l, b1=b1, alpha=alpha)
    chosen_ratio = jnp.where(keep, pc - rc, 0.0)
    rejected_ratio = jnp.where(keep, pr - rr, 0.0)
    gap = chosen_ratio - rejected_ratio
    losses = jnp.where(keep, jnp.square(gap - margin / beta), 0.0)
    chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
    logits = beta * gap - margin
    none = jnp.zeros(pc.shape, bool)
    return PreferenceOutput(
        losses=losses,
        keep=keep,
        swapped=none,
        dropped=none,
        mixed=keep & (h_w != h_l),
        margin=jnp.where(keep, margin, 0.0),
        logits=logits,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        chosen_logps=jnp.where(keep, pc, 0.0),
        rejected_logps=jnp.where(keep, pr, 0.0),
    )
