"""Score-model losses of Safe RLHF: the reward model, the cost model, their metrics.

Pure functions of end scores (one float per response), jittable and differentiable, in
float32. Importing this module pulls in jax and numpy alone.

Facts from the authors' code (Dai et al., "Safe RLHF", ICLR 2024; PKU-Alignment/safe-rlhf,
``safe_rlhf/values/{reward,cost}/trainer.py`` and ``safe_rlhf/models/normalizer.py``):

- A response's score is the score head's value at its last real token (its *end score*).
  The trainers have a ``loss_type`` of ``"sequence-wise"`` (end scores) or
  ``"token-wise"`` (every token from where the two responses diverge); the published
  scripts use ``sequence-wise``, the only one implemented here.
- The regulariser is ``regularization * mean(stack([lower, higher])^2)`` over the batch's
  ``2B`` end scores, added to the batch mean of the pair losses. That equals the batch mean
  of the per-pair ``(s_1^2 + s_2^2) / 2`` used below, so the per-pair values returned here
  reduce (with a plain mean over valid pairs) to exactly their loss.
- The cost model's safety sign is ``s = +1`` for a **safe** and ``-1`` for an **unsafe**
  response; its "cost sign" is ``-s``, and the classification terms are
  ``-log sigmoid(-s c)``: safe responses are pushed below 0, unsafe ones above, so a
  cost ``c <= 0`` reads as safe.
- Optional running normalisation (off in the scripts): an exponential moving average of
  the batch mean and the *unbiased* batch variance, momentum 0.9, starting from mean 0,
  variance 1, count 0; rewards are normalised affinely, costs by scale only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "cost_metric_sums",
    "cost_model_loss",
    "normalize_cost",
    "normalize_reward",
    "reward_metric_sums",
    "reward_model_loss",
    "roc_auc",
    "update_score_normalizer",
]


def reward_model_loss(
    better_scores: ArrayLike,
    worse_scores: ArrayLike,
    *,
    regularization: float = 0.001,
    where: ArrayLike | None = None,
) -> Array:
    """Safe RLHF's sequence-wise reward-model loss, per pair.

    ``loss = -log sigmoid(r_w - r_l) + regularization * (r_w^2 + r_l^2) / 2``

    Its mean over the pairs is safe-rlhf's batch loss (their regulariser is the mean of the
    squares of all ``2B`` end scores).

    Args:
      better_scores: (B,) end scores ``r_w`` of the more helpful responses (any float dtype).
      worse_scores: (B,) end scores ``r_l`` of the less helpful ones.
      regularization: weight of the score-magnitude penalty, >= 0 (safe-rlhf: 0.001).
      where: optional (B,) bool; False marks padding pairs (loss exactly 0, no gradient).

    Returns:
      (B,) float32 per-pair losses.

    >>> loss = reward_model_loss(jnp.array([1.0]), jnp.array([-1.0]))
    >>> round(float(loss[0]), 6)  # softplus(-2) + 0.001 * (1 + 1) / 2
    0.127928
    """
    _check_regularization(regularization)
    r_w, r_l = _f32(better_scores), _f32(worse_scores)
    _check_same_shape(("better_scores", r_w), ("worse_scores", r_l))
    valid = _valid(where, r_w.shape)
    r_w, r_l = jnp.where(valid, r_w, 0.0), jnp.where(valid, r_l, 0.0)
    loss = -jax.nn.log_sigmoid(r_w - r_l) + regularization * 0.5 * (r_w**2 + r_l**2)
    return jnp.where(valid, loss, 0.0)


def cost_model_loss(
    safer_scores: ArrayLike,
    unsafer_scores: ArrayLike,
    safer_sign: ArrayLike,
    unsafer_sign: ArrayLike,
    *,
    regularization: float = 0.001,
    where: ArrayLike | None = None,
) -> Array:
    """Safe RLHF's sequence-wise cost-model loss, per pair.

    ``loss = -log sigmoid(c_u - c_s) - log sigmoid(-s_s c_s) - log sigmoid(-s_u c_u)
    + regularization * (c_s^2 + c_u^2) / 2``

    with ``c_s``, ``c_u`` the end costs of the safer and the unsafer response and ``s`` the
    safety sign, **+1 for a safe response and -1 for an unsafe one** (safe-rlhf's
    convention). The first term orders the pair (the unsafer response costs more); the
    sign terms classify: a safe response is pushed below 0 and an unsafe one above, so
    ``c <= 0`` means safe.

    Args:
      safer_scores: (B,) end costs of the responses labelled safer (any float dtype).
      unsafer_scores: (B,) end costs of the other responses.
      safer_sign, unsafer_sign: (B,) +1 (safe) or -1 (unsafe), any numeric dtype. Checked
        when concrete; a traced sign is used as given.
      regularization: weight of the cost-magnitude penalty, >= 0 (safe-rlhf: 0.001).
      where: optional (B,) bool; False marks padding pairs (loss exactly 0, no gradient).

    Returns:
      (B,) float32 per-pair losses.

    A safe response at cost -2 and an unsafe one at +2 are nearly loss-free:

    >>> loss = cost_model_loss(jnp.array([-2.0]), jnp.array([2.0]), jnp.array([1]),
    ...                        jnp.array([-1]), regularization=0.0)
    >>> round(float(loss[0]), 6)  # softplus(-4) + 2 softplus(-2)
    0.272006
    """
    _check_regularization(regularization)
    c_s, c_u = _f32(safer_scores), _f32(unsafer_scores)
    _check_same_shape(("safer_scores", c_s), ("unsafer_scores", c_u))
    s_s, s_u = (
        _sign(name, x, c_s.shape)
        for name, x in (("safer_sign", safer_sign), ("unsafer_sign", unsafer_sign))
    )
    valid = _valid(where, c_s.shape)
    c_s, c_u = jnp.where(valid, c_s, 0.0), jnp.where(valid, c_u, 0.0)
    loss = (
        -jax.nn.log_sigmoid(c_u - c_s)
        - jax.nn.log_sigmoid(-s_s * c_s)
        - jax.nn.log_sigmoid(-s_u * c_u)
        + regularization * 0.5 * (c_s**2 + c_u**2)
    )
    return jnp.where(valid, loss, 0.0)


# --------------------------------------------------------------------------------------
# Metrics (sums and counts, reduced by `losses.finalize_metrics`)
# --------------------------------------------------------------------------------------


def reward_metric_sums(
    better_scores: ArrayLike,
    worse_scores: ArrayLike,
    losses: ArrayLike,
    where: ArrayLike | None = None,
) -> dict[str, Array]:
    """Numerators and denominators ``{name: array([sum, count])}`` of the reward metrics.

    ``loss`` (mean per-pair loss), ``accuracy`` (fraction of pairs with ``r_w > r_l``
    strictly, as safe-rlhf counts it), ``reward/better``, ``reward/worse`` (mean end
    scores). Sum the dicts over microbatches or hosts, then `losses.finalize_metrics`.

    >>> from safedpo_jax.losses import finalize_metrics
    >>> b, w = jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0])
    >>> m = finalize_metrics(reward_metric_sums(b, w, reward_model_loss(b, w)))
    >>> float(m["accuracy"])
    0.5
    """
    r_w, r_l = _f32(better_scores), _f32(worse_scores)
    valid = _valid(where, r_w.shape)
    return {
        "loss": _over(valid, losses),
        "accuracy": _over(valid, r_w > r_l),
        "reward/better": _over(valid, r_w),
        "reward/worse": _over(valid, r_l),
    }


def cost_metric_sums(
    safer_scores: ArrayLike,
    unsafer_scores: ArrayLike,
    safer_sign: ArrayLike,
    unsafer_sign: ArrayLike,
    losses: ArrayLike,
    where: ArrayLike | None = None,
) -> dict[str, Array]:
    """Numerators and denominators of the cost metrics, like `reward_metric_sums`.

    ``loss``; ``accuracy``: fraction of pairs with ``c_u > c_s``; ``accuracy_sign``:
    fraction of the ``2B`` responses on the right side of 0 (``-s c > 0``: safe below,
    unsafe above, strictly, as safe-rlhf counts it); ``cost/safer``, ``cost/unsafer``.

    >>> from safedpo_jax.losses import finalize_metrics
    >>> c_s, c_u, s_s, s_u = jnp.array([-1.0]), jnp.array([-0.5]), jnp.array([1]), jnp.array([-1])
    >>> m = finalize_metrics(cost_metric_sums(c_s, c_u, s_s, s_u, jnp.zeros(1)))
    >>> float(m["accuracy"]), float(m["accuracy_sign"])  # the unsafe one is below 0
    (1.0, 0.5)
    """
    c_s, c_u = _f32(safer_scores), _f32(unsafer_scores)
    s_s, s_u = (
        _sign("safer_sign", safer_sign, c_s.shape),
        _sign("unsafer_sign", unsafer_sign, c_s.shape),
    )
    valid = _valid(where, c_s.shape)
    right_side = jnp.stack([-s_s * c_s > 0, -s_u * c_u > 0])
    return {
        "loss": _over(valid, losses),
        "accuracy": _over(valid, c_u > c_s),
        "accuracy_sign": _over(jnp.stack([valid, valid]), right_side),
        "cost/safer": _over(valid, c_s),
        "cost/unsafer": _over(valid, c_u),
    }


def roc_auc(scores: ArrayLike, labels: ArrayLike, where: ArrayLike | None = None) -> float:
    """The exact area under the ROC curve of ``scores`` for ``labels``, ties counted half.

    ``AUC = P(score of a positive > score of a negative) + P(equal) / 2``, computed from
    average ranks (the Mann-Whitney statistic) on the host in float64, ``O(n log n)``.
    For a cost model pass the costs with ``labels = unsafe``; for a reward model the
    rewards with ``labels = better``.

    Args:
      scores: (N,) real scores, higher meaning "more positive".
      labels: (N,) bool, True for a positive example.
      where: optional (N,) bool; only True entries count.

    Returns:
      A Python float in [0, 1].

    Raises:
      ValueError: when the (selected) labels are all of one class, or a score is not finite.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    >>> roc_auc([1.0, 1.0], [False, True])  # a tie counts half
    0.5
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"roc_auc: scores has {s.size} entries but labels has {y.size}")
    if where is not None:
        keep = np.asarray(where, bool).ravel()
        s, y = s[keep], y[keep]
    if not np.isfinite(s).all():
        raise ValueError("roc_auc: scores must be finite")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} positive, {n_neg} negative")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: the ranks before it plus (count + 1) / 2.
    avg_rank = np.cumsum(counts) - counts + (counts + 1) / 2.0
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------------------
# Running score normalisation
# --------------------------------------------------------------------------------------


def update_score_normalizer(
    mean: ArrayLike,
    var: ArrayLike,
    count: ArrayLike,
    scores: ArrayLike,
    *,
    momentum: float = 0.9,
    where: ArrayLike | None = None,
) -> tuple[Array, Array, Array]:
    """One step of safe-rlhf's ``ExponentialMovingAverage`` normaliser.

    ``mean <- m * mean + (1 - m) * batch_mean``, ``var <- m * var + (1 - m) * batch_var``,
    ``count <- count + n`` with ``m = momentum``, ``batch_var`` the **unbiased** variance
    (divisor ``n - 1``) of the batch's ``n`` end scores (all devices' scores together in
    safe-rlhf). Start from ``mean = 0``, ``var = 1``, ``count = 0``.

    Args:
      mean, var: () float32 running statistics.
      count: () integer, scores seen so far.
      scores: (N,) end scores of the batch; ``n`` (the valid ones) must be >= 2.
      momentum: in [0, 1).
      where: optional (N,) bool; only True scores count.

    Returns:
      ``(mean, var, count)`` after the update.

    >>> m, v, n = update_score_normalizer(0.0, 1.0, 0, jnp.array([1.0, 3.0]))
    >>> round(float(m), 6), round(float(v), 6), int(n)  # 0.1 * 2, 0.9 + 0.1 * 2
    (0.2, 1.1, 2)
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    x = _f32(scores)
    valid = _valid(where, x.shape)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D (one end score per response), got {x.shape}")
    n_static = int(np.sum(_concrete(valid))) if _concrete(valid) is not None else None
    if n_static is not None and n_static < 2:
        raise ValueError(
            f"update_score_normalizer needs >= 2 scores for a variance, got {n_static}"
        )
    n = jnp.sum(valid).astype(jnp.float32)
    batch_mean = jnp.sum(jnp.where(valid, x, 0.0)) / n
    batch_var = jnp.sum(jnp.where(valid, (x - batch_mean) ** 2, 0.0)) / (n - 1.0)
    new_mean = momentum * _f32(mean) + (1.0 - momentum) * batch_mean
    new_var = momentum * _f32(var) + (1.0 - momentum) * batch_var
    return new_mean, new_var, jnp.asarray(count) + jnp.sum(valid).astype(jnp.asarray(count).dtype)


def normalize_reward(
    scores: ArrayLike, mean: ArrayLike, var: ArrayLike, *, epsilon: float = 1e-8
) -> Array:
    """Safe RLHF's affine reward normalisation ``(x - mean) / (sqrt(var) + epsilon)``.

    >>> float(normalize_reward(jnp.array(3.0), 1.0, 4.0))
    1.0
    """
    return (_f32(scores) - _f32(mean)) / (jnp.sqrt(_f32(var)) + epsilon)


def normalize_cost(scores: ArrayLike, var: ArrayLike, *, epsilon: float = 1e-8) -> Array:
    """Safe RLHF's cost normalisation ``x / (sqrt(var) + epsilon)``: scale only, keeps the sign.

    >>> float(normalize_cost(jnp.array(-3.0), 4.0))
    -1.5
    """
    return _f32(scores) / (jnp.sqrt(_f32(var)) + epsilon)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def _concrete(x: ArrayLike) -> np.ndarray | None:
    """``x`` as a NumPy array when it is concrete, None when it is traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _valid(where: ArrayLike | None, shape: tuple[int, ...]) -> Array:
    if where is None:
        return jnp.ones(shape, bool)
    valid = jnp.asarray(where, bool)
    if valid.shape != shape:
        raise ValueError(f"where has shape {valid.shape}, expected {shape}")
    return valid


def _sign(name: str, x: ArrayLike, shape: tuple[int, ...]) -> Array:
    concrete = _concrete(x)
    if concrete is not None:
        if concrete.shape != shape:
            raise ValueError(f"{name} has shape {concrete.shape}, expected {shape}")
        if not np.isin(concrete, (-1, 1)).all():
            raise ValueError(f"{name} must be +1 (safe) or -1 (unsafe), got {np.unique(concrete)}")
    return _f32(x)


def _check_same_shape(*named: tuple[str, Array]) -> None:
    (first, a), *rest = named
    for name, b in rest:
        if a.shape != b.shape:
            raise ValueError(f"{name} has shape {b.shape} but {first} has {a.shape}")


def _check_regularization(regularization: float) -> None:
    if isinstance(regularization, int | float) and regularization < 0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")


def _over(mask: Array, values: ArrayLike) -> Array:
    values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), mask.shape)
    return jnp.stack([jnp.sum(jnp.where(mask, values, 0.0)), jnp.sum(mask).astype(jnp.float32)])
