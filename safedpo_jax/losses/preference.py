"""The SafeDPO loss kernel: safety transform, SafeDPO and the SafeDAA family, log-probs.

Pure functions of arrays (never of a model), jittable and differentiable, computed in
float32 whatever the input dtype. Importing this module pulls in jax and numpy alone.

Notation (Kim et al., "SafeDPO", ICLR 2026, arXiv 2505.20065). A preference item is
``(x, y_w, y_l, h_w, h_l)``: a prompt, the winner and loser *by helpfulness*, and a safety
indicator per response with ``h = 1`` meaning **unsafe**. With per-sequence log-ratios
``l(y) = log pi_theta(y|x) - log pi_ref(y|x)``, the safety transformation ``T``

======  ======  ===============================  =====================
 h_w     h_l     T does                           after T
======  ======  ===============================  =====================
 0       0       keep (x, y_w, y_l)               safe over safe
 0       1       keep (x, y_w, y_l)               safe over unsafe
 1       0       swap to (x, y_l, y_w)            safe over unsafe
 1       1       drop                             (no signal)
======  ======  ===============================  =====================

and the SafeDPO objective (the paper's Eq. 12) over the transformed pairs is::

    L(theta; Delta) = -E_{T(D)} log sigmoid(beta * [l(y~_w) - l(y~_l)] - (h~_l - h~_w) * Delta)

``Delta >= 0`` sits outside ``beta`` and acts only on safe-vs-unsafe pairs; dropped pairs
count neither in the numerator nor in the denominator of the mean. Section 3.4 of the
paper ("SafeDAA") wraps any direct-alignment loss ``g(beta * gap - margin)`` with the same
``T`` and margin: `safe_daa_loss` takes ``g`` as a link function, and `safedpo_loss`,
`safe_ipo_loss` and `safe_hinge_loss` are its instances. `dpo_loss`, `ipo_loss` and
`hinge_loss` are the plain (unsafe-agnostic) baselines.

Per-pair values are returned; reduce them with `kept_mean` (or `metric_sums` and
`finalize_metrics`) where the denominator is known: summing losses and kept counts
separately keeps the mean right across devices and gradient-accumulation microbatches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Link = Callable[[Array], Array]
LinkName = Literal["sigmoid", "ipo", "hinge"]  # the links below, by name

__all__ = [
    "LinkName",
    "PreferenceOutput",
    "SafetyTransform",
    "chunked_sequence_logprobs",
    "dpo_loss",
    "finalize_metrics",
    "hinge_link",
    "hinge_loss",
    "ipo_link",
    "ipo_loss",
    "kept_mean",
    "metric_sums",
    "safe_daa_loss",
    "safe_hinge_loss",
    "safe_ipo_loss",
    "safedpo_loss",
    "safety_transform",
    "sequence_logprobs",
    "sigmoid_link",
]


# --------------------------------------------------------------------------------------
# The safety transformation T
# --------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SafetyTransform:
    """The masks of ``T`` for a batch of pairs in helpfulness order, each (B,) bool.

    Attributes:
      swap: the winner is unsafe and the loser safe: ``T`` exchanges them.
      drop: both responses are unsafe: ``T`` removes the pair.
      mixed: after ``T`` the pair is safe-vs-unsafe (``h~_l - h~_w = 1``): the margin
        applies. Exactly the pairs where the two labels differ.
    """

    swap: Array
    drop: Array
    mixed: Array


def safety_transform(chosen_unsafe: ArrayLike, rejected_unsafe: ArrayLike) -> SafetyTransform:
    """The masks of the paper's safety transformation ``T``.

    Args:
      chosen_unsafe: (B,) bool, ``h_w``: True where the helpfulness winner is unsafe.
      rejected_unsafe: (B,) bool, ``h_l``: True where the helpfulness loser is unsafe.

    Returns:
      `SafetyTransform` with ``swap = h_w & ~h_l``, ``drop = h_w & h_l`` and
      ``mixed = h_w != h_l``.

    >>> t = safety_transform(jnp.array([False, False, True, True]),
    ...                      jnp.array([False, True, False, True]))
    >>> t.swap.tolist(), t.drop.tolist(), t.mixed.tolist()
    ([False, False, True, False], [False, False, False, True], [False, True, True, False])
    """
    h_w = jnp.asarray(chosen_unsafe, dtype=bool)
    h_l = jnp.asarray(rejected_unsafe, dtype=bool)
    return SafetyTransform(swap=h_w & ~h_l, drop=h_w & h_l, mixed=h_w != h_l)


# --------------------------------------------------------------------------------------
# Link functions g(u), u = beta * gap - margin
# --------------------------------------------------------------------------------------


def sigmoid_link(label_smoothing: float = 0.0) -> Link:
    """DPO's link ``g(u) = -(1 - eps) log sigmoid(u) - eps log sigmoid(-u)``.

    ``eps = label_smoothing`` is the conservative-DPO (cDPO) flip probability; 0 gives
    plain DPO. Computed with `jax.nn.log_sigmoid`, finite for any finite ``u``.

    >>> round(float(sigmoid_link()(jnp.float32(0.0))), 6)  # ln 2
    0.693147
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")

    def link(u: Array) -> Array:
        loss = -jax.nn.log_sigmoid(u)
        if label_smoothing:
            loss = (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-u)
        return loss

    return link


def ipo_link(beta: float) -> Link:
    """IPO's link (Azar et al. 2023): ``g(u) = (u / beta - 1 / (2 beta))^2``.

    With ``u = beta * gap`` this is the familiar ``(gap - 1 / (2 beta))^2``; a margin
    ``Delta`` shifts the target gap to ``(1/2 + Delta) / beta``. The gap is of SUMMED
    log-ratios, as in the IPO paper; TRL's ``ipo`` divides each log-ratio by its
    completion length first (``chosen_lengths`` / ``rejected_lengths`` in `ipo_loss`,
    `safe_ipo_loss` and `safe_daa_loss` give that form).

    >>> round(float(ipo_link(0.5)(jnp.float32(0.25))), 6)  # (0.5 - 1)^2
    0.25
    """
    _check_beta(beta)

    def link(u: Array) -> Array:
        return jnp.square((u - 0.5) / beta)

    return link


def hinge_link() -> Link:
    """SLiC's hinge link: ``g(u) = max(0, 1 - u)``.

    >>> float(hinge_link()(jnp.float32(0.25)))
    0.75
    """
    return lambda u: jax.nn.relu(1.0 - u)


# --------------------------------------------------------------------------------------
# The per-pair output and the generic direct-alignment loss
# --------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreferenceOutput:
    """Per-pair results of a (safe) direct-alignment loss; every field has shape (B,).

    "Chosen" and "rejected" here are the winner and loser **after** ``T`` (for the plain
    losses, as given).

    Attributes:
      losses: float32 per-pair loss; exactly 0.0 where ``keep`` is False.
      keep: bool, the pairs that count: not dropped by ``T`` and not masked by ``where``.
      swapped: bool, ``T`` exchanged winner and loser (only for kept pairs).
      dropped: bool, ``T`` removed the pair (both unsafe; among pairs ``where`` allows).
      mixed: bool, kept safe-vs-unsafe pairs, the ones the margin acts on.
      margin: float32, the margin subtracted from ``beta * gap`` (``Delta`` on mixed pairs).
      logits: float32, the link's argument ``u = beta * gap - margin``.
      chosen_rewards: float32, ``beta * l(y~_w)``, the winner's implicit reward.
      rejected_rewards: float32, ``beta * l(y~_l)``.
      chosen_logps: float32, ``log pi_theta(y~_w | x)``.
      rejected_logps: float32, ``log pi_theta(y~_l | x)``.
    """

    losses: Array
    keep: Array
    swapped: Array
    dropped: Array
    mixed: Array
    margin: Array
    logits: Array
    chosen_rewards: Array
    rejected_rewards: Array
    chosen_logps: Array
    rejected_logps: Array


def safe_daa_loss(
    link: Link,
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_unsafe: ArrayLike | None = None,
    rejected_unsafe: ArrayLike | None = None,
    *,
    beta: float,
    delta: float = 0.0,
    where: ArrayLike | None = None,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
) -> PreferenceOutput:
    """A direct-alignment loss ``g(beta * gap - margin)``, safety-wrapped when labels are given.

    With safety labels this is SafeDAA (the paper's §3.4): the pairs are transformed by
    ``T`` (see `safety_transform`) and ``margin = Delta`` on safe-vs-unsafe pairs, 0
    otherwise. Without labels (both ``None``) it is the plain loss on the pairs as given
    and ``delta`` must be 0.

    Args:
      link: ``g``, mapping the (B,) float32 argument ``u`` to per-pair losses, e.g.
        `sigmoid_link`, `ipo_link`, `hinge_link`.
      policy_chosen_logps, policy_rejected_logps: (B,) summed log-probs of the
        helpfulness winner and loser under the policy (any float dtype).
      ref_chosen_logps, ref_rejected_logps: (B,) the same under the reference.
      chosen_unsafe, rejected_unsafe: (B,) bool, True = unsafe (the paper's ``h``).
      beta: KL-regularisation strength, > 0.
      delta: safety margin ``Delta >= 0``.
      where: optional (B,) bool; False marks padding pairs, which get zero loss, zero
        gradient and count nowhere.
      chosen_lengths, rejected_lengths: optional (B,) completion token counts (both or
        neither). Given, each log-ratio is divided by its response's count,
        ``l(y) / |y|``, before anything else (``T`` swaps the counts with their
        responses); this is TRL's length-normalised form (its ``loss_type="ipo"``). Counts
        must be >= 1 on kept pairs; a count <= 0 gives a 0 log-ratio. Default: summed
        log-probs, as in the papers.

    Returns:
      `PreferenceOutput` (``chosen_rewards`` / ``rejected_rewards`` use the normalised
      log-ratios when counts are given; ``chosen_logps`` / ``rejected_logps`` stay sums).
    """
    _check_beta(beta)
    if isinstance(delta, int | float) and delta < 0:
        raise ValueError(f"the safety margin delta must be >= 0, got {delta}")
    pc, pr, rc, rr = (
        jnp.asarray(x, jnp.float32)
        for x in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    )
    valid = jnp.ones(pc.shape, bool) if where is None else jnp.asarray(where, bool)
    if (chosen_unsafe is None) != (rejected_unsafe is None):
        raise ValueError("give both chosen_unsafe and rejected_unsafe, or neither")
    if chosen_unsafe is None:
        if not isinstance(delta, int | float) or delta != 0:
            raise ValueError("a safety margin needs safety labels (chosen_unsafe, rejected_unsafe)")
        none = jnp.zeros(pc.shape, bool)
        t = SafetyTransform(swap=none, drop=none, mixed=none)
    else:
        t = safety_transform(chosen_unsafe, rejected_unsafe)

    keep = valid & ~t.drop
    swap = keep & t.swap
    mixed = keep & t.mixed
    win_logps, lose_logps = _ordered(pc, pr, swap)
    win_ref, lose_ref = _ordered(rc, rr, swap)
    win_ratio, lose_ratio = win_logps - win_ref, lose_logps - lose_ref
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        win_len, lose_len = _ordered(
            jnp.asarray(chosen_lengths, jnp.float32),
            jnp.asarray(rejected_lengths, jnp.float32),
            swap,
        )
        win_ratio = _per_token(win_ratio, win_len)
        lose_ratio = _per_token(lose_ratio, lose_len)
    chosen_rewards = beta * win_ratio
    rejected_rewards = beta * lose_ratio
    margin = jnp.where(mixed, jnp.float32(delta), 0.0)
    logits = chosen_rewards - rejected_rewards - margin
    # The inner `where` keeps ignored pairs away from the link entirely, so a non-finite
    # log-prob there can never leak a NaN into the loss or its gradient.
    losses = jnp.where(keep, link(jnp.where(keep, logits, 0.0)), 0.0)
    return PreferenceOutput(
        losses=losses.astype(jnp.float32),
        keep=keep,
        swapped=swap,
        dropped=valid & t.drop,
        mixed=mixed,
        margin=margin,
        logits=logits,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        chosen_logps=win_logps,
        rejected_logps=lose_logps,
    )


# --------------------------------------------------------------------------------------
# Named instances
# --------------------------------------------------------------------------------------


def safedpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_unsafe: ArrayLike,
    rejected_unsafe: ArrayLike,
    *,
    beta: float,
    delta: float,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
) -> PreferenceOutput:
    """SafeDPO (the paper's Eq. 12) on pairs given in helpfulness order.

    ``loss = -log sigmoid(beta * [l(y~_w) - l(y~_l)] - (h~_l - h~_w) * Delta)`` after the
    safety transformation ``T``: pairs whose winner is unsafe and loser safe are swapped,
    pairs with both responses unsafe are dropped (loss exactly 0, ``keep`` False), and the
    margin ``Delta`` applies only to safe-vs-unsafe pairs. ``label_smoothing > 0`` gives
    the cDPO variant. See `safe_daa_loss` for the arguments.

    At ``pi_theta = pi_ref`` the loss is ``ln 2`` on same-safety pairs and
    ``softplus(Delta)`` on mixed ones:

    >>> zeros = jnp.zeros(4)
    >>> out = safedpo_loss(zeros, zeros, zeros, zeros,
    ...                    jnp.array([False, False, True, True]),
    ...                    jnp.array([False, True, False, True]), beta=0.1, delta=10.0)
    >>> [round(float(x), 6) for x in out.losses]
    [0.693147, 10.000046, 10.000046, 0.0]
    >>> out.keep.tolist(), out.swapped.tolist()
    ([True, True, True, False], [False, False, True, False])
    """
    return safe_daa_loss(
        sigmoid_link(label_smoothing),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_unsafe,
        rejected_unsafe,
        beta=beta,
        delta=delta,
        where=where,
    )


def safe_ipo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_unsafe: ArrayLike,
    rejected_unsafe: ArrayLike,
    *,
    beta: float,
    delta: float,
    where: ArrayLike | None = None,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
) -> PreferenceOutput:
    """IPO wrapped by ``T`` and the margin: ``((beta * gap - margin) / beta - 1 / (2 beta))^2``.

    ``gap`` uses summed log-probs (the IPO paper) unless ``chosen_lengths`` and
    ``rejected_lengths`` are given: then each log-ratio is divided by its completion's
    token count, TRL's form (see `ipo_loss`).

    >>> out = safe_ipo_loss(jnp.array([1.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1),
    ...                     jnp.array([True]), jnp.array([False]), beta=0.5, delta=1.0)
    >>> out.swapped.tolist(), round(float(out.losses[0]), 6)  # ((-0.5 - 1 - 0.5) / 0.5)^2
    ([True], 16.0)
    """
    return safe_daa_loss(
        ipo_link(beta),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_unsafe,
        rejected_unsafe,
        beta=beta,
        delta=delta,
        where=where,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )


def safe_hinge_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    chosen_unsafe: ArrayLike,
    rejected_unsafe: ArrayLike,
    *,
    beta: float,
    delta: float,
    where: ArrayLike | None = None,
) -> PreferenceOutput:
    """The hinge (SLiC) loss wrapped by ``T`` and the margin: ``max(0, 1 - beta*gap + margin)``.

    >>> out = safe_hinge_loss(jnp.array([2.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1),
    ...                       jnp.array([False]), jnp.array([True]), beta=0.5, delta=2.0)
    >>> round(float(out.losses[0]), 6)  # 1 - 0.5 * 2 + 2
    2.0
    """
    return safe_daa_loss(
        hinge_link(),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_unsafe,
        rejected_unsafe,
        beta=beta,
        delta=delta,
        where=where,
    )


def dpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
) -> PreferenceOutput:
    """Plain DPO (Rafailov et al. 2023): ``-log sigmoid(beta * [l(y_w) - l(y_l)])``.

    The pairs are used as given (the DPO-HELPFUL, DPO-HARMLESS and DPO-SAFEBETTER
    baselines differ only in how pairs are built). ``label_smoothing > 0`` gives cDPO.
    With ``beta = 0.1`` a log-ratio gap of 2 gives ``softplus(-0.2)``:

    >>> out = dpo_loss(jnp.array([2.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1), beta=0.1)
    >>> round(float(out.losses[0]), 6)
    0.598139
    """
    return safe_daa_loss(
        sigmoid_link(label_smoothing),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        where=where,
    )


def ipo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float,
    where: ArrayLike | None = None,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
) -> PreferenceOutput:
    """Plain IPO: ``(l(y_w) - l(y_l) - 1 / (2 beta))^2``.

    This follows the IPO paper (Azar et al. 2023) with ``l`` the SUMMED log-ratio of a
    response. TRL's ``loss_type="ipo"`` instead divides each log-ratio by its completion's
    token count, ``(l(y_w) / |y_w| - l(y_l) / |y_l| - 1 / (2 beta))^2``: on the same
    inputs the two differ by orders of magnitude (one batch reported in issue 12: 2283.8
    here, 11.1 in TRL), and so do the ``beta`` values that suit them. Pass
    ``chosen_lengths`` and ``rejected_lengths`` (token counts, [B]) for TRL's form.

    >>> out = ipo_loss(jnp.array([1.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1), beta=0.5)
    >>> round(float(out.losses[0]), 6)  # (1 - 1)^2
    0.0
    >>> out = ipo_loss(jnp.array([4.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1), beta=0.5,
    ...                chosen_lengths=jnp.array([4]), rejected_lengths=jnp.array([2]))
    >>> round(float(out.losses[0]), 6)  # (4 / 4 - 0 / 2 - 1)^2
    0.0
    """
    return safe_daa_loss(
        ipo_link(beta),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        where=where,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )


def hinge_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float,
    where: ArrayLike | None = None,
) -> PreferenceOutput:
    """Plain hinge (SLiC): ``max(0, 1 - beta * [l(y_w) - l(y_l)])``.

    >>> out = hinge_loss(jnp.array([1.0]), jnp.array([0.0]), jnp.zeros(1), jnp.zeros(1), beta=0.5)
    >>> round(float(out.losses[0]), 6)
    0.5
    """
    return safe_daa_loss(
        hinge_link(),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        where=where,
    )


# --------------------------------------------------------------------------------------
# Sequence log-probs
# --------------------------------------------------------------------------------------


def sequence_logprobs(logits: ArrayLike, target_ids: ArrayLike, loss_mask: ArrayLike) -> Array:
    """Per-sequence sums of target-token log-probs, in float32.

    ``out[...] = sum_t mask[..., t] * log softmax(logits[..., t, :])[target_ids[..., t]]``

    The logits must already be aligned with their targets (``logits[..., t, :]`` scores
    ``target_ids[..., t]``; for a causal LM pass ``logits[..., :-1, :]`` with
    ``ids[..., 1:]``). Masked positions contribute exactly 0 whatever ids they hold
    (negative or out-of-vocabulary ids included) and never produce NaN.

    Args:
      logits: [..., T, V] any float dtype; upcast to float32 before the log-softmax.
      target_ids: [..., T] integer token ids.
      loss_mask: [..., T] bool or {0, 1}; True where the token's log-prob counts.

    Returns:
      [...] float32.

    >>> logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]]))
    >>> lp = sequence_logprobs(logits, jnp.array([[0, -100]]), jnp.array([[True, False]]))
    >>> round(float(lp[0]), 6)  # log 0.5
    -0.693147
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    mask = jnp.asarray(loss_mask).astype(bool)
    ids = jnp.where(mask, jnp.asarray(target_ids), 0)
    target = jnp.take_along_axis(logits, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    token_logps = target - jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(jnp.where(mask, token_logps, 0.0), axis=-1)


def chunked_sequence_logprobs(
    hidden: ArrayLike,
    unembedding: ArrayLike,
    target_ids: ArrayLike,
    loss_mask: ArrayLike,
    *,
    chunk_size: int = 256,
    skip_masked: bool = True,
) -> Array:
    """`sequence_logprobs` of ``hidden @ unembedding`` without materialising the logits.

    The sequence is cut into chunks of ``chunk_size`` positions; each chunk is projected
    to the vocabulary, reduced to its target log-probs with a float32 logsumexp and
    discarded. The chunk body is rematerialised (`jax.checkpoint`) so the backward pass
    recomputes one chunk's logits at a time as well: peak memory holds one
    ``[..., chunk_size, V]`` float32 block instead of ``[..., T, V]``.

    With ``skip_masked`` (the default) each sequence's counted positions are moved to its
    front first (a stable sort, so they keep their order) and a chunk whose positions are
    all masked in every sequence is skipped (`jax.lax.cond`), in the backward pass too:
    the projection runs over the ceil(longest response / chunk_size) chunks that hold
    responses, not over prompts and padding. The sums are the same up to float32
    summation order.

    Args:
      hidden: [..., T, D] final hidden states, aligned with ``target_ids`` (position t
        predicts ``target_ids[..., t]``).
      unembedding: [D, V] the output projection (a tied model passes its embedding,
        transposed).
      target_ids: [..., T] integer ids.
      loss_mask: [..., T] bool; masked positions contribute exactly 0.
      chunk_size: positions per chunk; T is padded up to a multiple of it (padding is
        masked).
      skip_masked: gather the counted positions first and skip all-masked chunks.

    Returns:
      [...] float32, equal to ``sequence_logprobs(hidden @ unembedding, ...)`` up to
      float32 rounding of the matmul.

    >>> h = jnp.eye(3)[None]                      # [1, 3, 3]: one-hot hidden states
    >>> w = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1/3, 1/3, 1/3]]))
    >>> ids, mask = jnp.array([[0, 2, 1]]), jnp.array([[True, True, False]])
    >>> lp = chunked_sequence_logprobs(h, w, ids, mask, chunk_size=2)
    >>> round(float(lp[0]), 5)  # log(0.5 * 0.7)
    -1.04982
    """
    hidden = jnp.asarray(hidden)
    w_dv = jnp.asarray(unembedding)
    ids = jnp.asarray(target_ids)
    mask = jnp.asarray(loss_mask).astype(bool)
    *lead, t, d = hidden.shape
    if w_dv.shape[0] != d:
        raise ValueError(f"unembedding has shape {w_dv.shape}, expected ({d}, vocab)")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if skip_masked:
        # counted positions first, in order; the rest (prompt, padding) after them
        order = jnp.argsort(~mask, axis=-1, stable=True)
        hidden = jnp.take_along_axis(hidden, order[..., None], axis=-2)
        ids = jnp.take_along_axis(ids, order, axis=-1)
        mask = jnp.take_along_axis(mask, order, axis=-1)
    n_chunks = max(1, math.ceil(t / chunk_size))
    pad = n_chunks * chunk_size - t
    if pad:
        hidden = jnp.pad(hidden, [(0, 0)] * len(lead) + [(0, pad), (0, 0)])
        ids = jnp.pad(ids, [(0, 0)] * len(lead) + [(0, pad)])
        mask = jnp.pad(mask, [(0, 0)] * len(lead) + [(0, pad)])
    # [..., n, c, ...] -> chunk axis first, so lax.scan walks the sequence.
    hidden_c = jnp.moveaxis(hidden.reshape(*lead, n_chunks, chunk_size, d), -3, 0)
    ids_c = jnp.moveaxis(ids.reshape(*lead, n_chunks, chunk_size), -2, 0)
    mask_c = jnp.moveaxis(mask.reshape(*lead, n_chunks, chunk_size), -2, 0)

    @jax.checkpoint
    def chunk_logps(h_cd: Array, ids_c: Array, mask_c: Array) -> Array:
        # One 2-D matmul over the flattened rows: a contraction over two axes (lead and
        # chunk) in the weight gradient costs transposing copies on XLA's CPU backend.
        logits_rv = jnp.matmul(
            h_cd.reshape(-1, d), w_dv.astype(h_cd.dtype), preferred_element_type=jnp.float32
        )
        logits_cv = logits_rv.reshape(*h_cd.shape[:-1], w_dv.shape[1])
        return sequence_logprobs(logits_cv, ids_c, mask_c)

    def skipped(h_cd: Array, ids_c: Array, mask_c: Array) -> Array:
        return jnp.zeros(lead, jnp.float32)

    def body(total: Array, chunk: tuple[Array, Array, Array]) -> tuple[Array, None]:
        if skip_masked:
            return total + jax.lax.cond(jnp.any(chunk[2]), chunk_logps, skipped, *chunk), None
        return total + chunk_logps(*chunk), None

    total, _ = jax.lax.scan(body, jnp.zeros(lead, jnp.float32), (hidden_c, ids_c, mask_c))
    return total


# --------------------------------------------------------------------------------------
# Reductions and metrics
# --------------------------------------------------------------------------------------


def kept_mean(values: ArrayLike, keep: ArrayLike) -> Array:
    """Mean of ``values`` over the pairs where ``keep`` is True (0.0 if there are none).

    Under `jax.jit` with a batch sharded over devices the sums are global, so this is the
    mean over the whole batch. For gradient accumulation, divide each microbatch's
    ``sum(where(keep, values, 0))`` by the kept count of the *whole* batch instead (the
    count depends on the labels alone, so it is known before any forward pass); the
    accumulated gradient then equals the big-batch gradient.

    >>> float(kept_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([True, True, False])))
    2.0
    """
    keep = jnp.asarray(keep, bool)
    total = jnp.sum(jnp.where(keep, jnp.asarray(values, jnp.float32), 0.0))
    return total / jnp.maximum(jnp.sum(keep), 1).astype(jnp.float32)


def metric_sums(out: PreferenceOutput, where: ArrayLike | None = None) -> dict[str, Array]:
    """Metric numerators and denominators for a batch, to be summed then `finalize_metrics`.

    Returns ``{name: array([sum, count])}`` (float32). Summing these dicts over
    microbatches or hosts and dividing at the end gives the metric of the union, however
    the batch was split. Names follow TRL where TRL has the metric:

    - ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
      ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``: over kept pairs, with
      chosen/rejected meaning winner/loser after ``T``;
    - ``safety/kept``, ``safety/swapped``, ``safety/dropped``, ``safety/mixed``: fractions
      of the valid pairs (``where``; all pairs by default);
    - ``safety/mixed_accuracy``: reward accuracy on the kept safe-vs-unsafe pairs alone
      (the safe response's implicit reward above the unsafe one's);
    - ``safety/margin``: mean margin over kept pairs.

    >>> z = jnp.zeros(2)
    >>> out = safedpo_loss(jnp.array([1.0, 0.0]), z, z, z, jnp.array([False, True]),
    ...                    jnp.array([False, True]), beta=1.0, delta=0.0)
    >>> m = finalize_metrics(metric_sums(out))
    >>> float(m["rewards/accuracies"]), float(m["safety/dropped"])
    (1.0, 0.5)
    """
    keep = out.keep
    valid = jnp.ones(keep.shape, bool) if where is None else jnp.asarray(where, bool)
    margins = out.chosen_rewards - out.rejected_rewards
    correct = (margins > 0).astype(jnp.float32)

    def over(mask: Array, values: ArrayLike) -> Array:
        values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), mask.shape)
        return jnp.stack([jnp.sum(jnp.where(mask, values, 0.0)), jnp.sum(mask).astype(jnp.float32)])

    return {
        "loss": over(keep, out.losses),
        "rewards/chosen": over(keep, out.chosen_rewards),
        "rewards/rejected": over(keep, out.rejected_rewards),
        "rewards/margins": over(keep, margins),
        "rewards/accuracies": over(keep, correct),
        "logps/chosen": over(keep, out.chosen_logps),
        "logps/rejected": over(keep, out.rejected_logps),
        "safety/kept": over(valid, keep),
        "safety/swapped": over(valid, out.swapped),
        "safety/dropped": over(valid, out.dropped),
        "safety/mixed": over(valid, out.mixed),
        "safety/mixed_accuracy": over(out.mixed, correct),
        "safety/margin": over(keep, out.margin),
    }


def finalize_metrics(sums: Mapping[str, ArrayLike]) -> dict[str, Array]:
    """Turns `metric_sums` (possibly summed over pieces) into means; empty counts give 0.

    >>> finalize_metrics({"loss": jnp.array([3.0, 2.0]), "x": jnp.array([0.0, 0.0])})
    {'loss': Array(1.5, dtype=float32), 'x': Array(0., dtype=float32)}
    """
    out = {}
    for name, pair in sums.items():
        pair = jnp.asarray(pair, jnp.float32)
        out[name] = pair[0] / jnp.maximum(pair[1], 1.0)
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _ordered(chosen: Array, rejected: Array, swap: Array) -> tuple[Array, Array]:
    """(winner, loser) after exchanging ``chosen`` and ``rejected`` where ``swap``."""
    return jnp.where(swap, rejected, chosen), jnp.where(swap, chosen, rejected)


def _per_token(ratio: Array, length: Array) -> Array:
    """``ratio / length`` where ``length > 0``, else 0 (padding pairs carry no count)."""
    positive = length > 0
    return jnp.where(positive, ratio / jnp.where(positive, length, 1.0), 0.0)


def _check_beta(beta: float) -> None:
    # Traced hyperparameters (a jitted sweep over beta) are accepted unchecked.
    if isinstance(beta, int | float) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
