"""KTO (Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", 2024).

Unpaired: every example is one response with a desirable / undesirable label. The loss is
the one TRL's ``KTOTrainer`` computes (``loss_type="kto"``, read in trl 1.16
``trl/trainer/kto_trainer.py``), which SACPO's stage 2 uses on safety labels. Pure functions
of arrays in float32; importing this module pulls in jax and numpy alone.

With the log-ratio ``l(y) = log pi_theta(y|x) - log pi_ref(y|x)`` and the reference point

    z0 = max(0, mean_i [log pi_theta(y'_i|x_i) - log pi_ref(y'_i|x_i)])   (no gradient)

estimated from *mismatched* pairs (TRL pairs each prompt with the completion of the
previous example in the batch), the per-example loss is

    desirable:    w_D * (1 - sigmoid(beta * (l(y) - z0)))
    undesirable:  w_U * (1 - sigmoid(beta * (z0 - l(y))))

and TRL's batch loss is the plain mean over all examples (the weights are not in the
denominator): reduce with `losses.kept_mean` over ``where``. TRL takes the mean of the
KL estimate per device and then the mean over devices; under `jax.jit` on a sharded batch
the mean here is the global one (equal when the devices hold equally many examples).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "KTOOutput",
    "kto_loss",
    "kto_metric_sums",
    "kto_reference_point",
    "kto_undesirable_weight",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KTOOutput:
    """Per-example results of `kto_loss`.

    Attributes:
      losses: (B,) float32 weighted per-example losses; exactly 0.0 where ``keep`` is False.
      keep: (B,) bool, the examples that count (``where``).
      desirable: (B,) bool, the labels as given.
      rewards: (B,) float32 implicit rewards ``beta * l(y)`` (0 where not kept).
      logps: (B,) float32 policy log-probs (0 where not kept).
      z0: () float32, the reference point used (already clamped at 0, no gradient).
    """

    losses: Array
    keep: Array
    desirable: Array
    rewards: Array
    logps: Array
    z0: Array


def kto_reference_point(
    kl_policy_logps: ArrayLike, kl_ref_logps: ArrayLike, where: ArrayLike | None = None
) -> Array:
    """KTO's ``z0 = max(0, mean(kl_policy_logps - kl_ref_logps))`` under `lax.stop_gradient`.

    Args:
      kl_policy_logps, kl_ref_logps: (B,) summed log-probs of the mismatched
        (prompt, other completion) sequences under the policy and the reference.
      where: optional (B,) bool; the mean runs over True entries only (0 if none).

    >>> float(kto_reference_point(jnp.array([-1.0, -2.0]), jnp.array([-2.0, -2.0])))
    0.5
    >>> float(kto_reference_point(jnp.array([-3.0]), jnp.array([-2.0])))  # clamped
    0.0
    """
    kl = jnp.asarray(kl_policy_logps).astype(jnp.float32) - jnp.asarray(kl_ref_logps).astype(
        jnp.float32
    )
    valid = jnp.ones(kl.shape, bool) if where is None else jnp.asarray(where, bool)
    mean = jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def kto_loss(
    policy_logps: ArrayLike,
    ref_logps: ArrayLike,
    desirable: ArrayLike,
    kl_policy_logps: ArrayLike,
    kl_ref_logps: ArrayLike,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    where: ArrayLike | None = None,
) -> KTOOutput:
    """The KTO loss per example, as TRL's ``KTOTrainer`` computes it (see the module doc).

    Args:
      policy_logps, ref_logps: (B,) summed completion log-probs under the policy and the
        reference (any float dtype).
      desirable: (B,) bool, True for a desirable (e.g. safe) response.
      kl_policy_logps, kl_ref_logps: (B,) the same for the mismatched KL sequences; the
        reference point is `kto_reference_point` of them over ``where``.
      beta: > 0.
      desirable_weight, undesirable_weight: ``w_D``, ``w_U`` >= 0 (SACPO: 1 and
        `kto_undesirable_weight`).
      where: optional (B,) bool; False marks padding: zero loss, zero gradient, and left
        out of the reference point.

    Returns:
      `KTOOutput`; TRL's batch loss is ``kept_mean(out.losses, out.keep)``.

    At the reference (all log-ratios 0) every example costs ``w / 2``:

    >>> z = jnp.zeros(2)
    >>> out = kto_loss(z, z, jnp.array([True, False]), z, z, beta=0.1, undesirable_weight=3.0)
    >>> [float(x) for x in out.losses], float(out.z0)
    ([0.5, 1.5], 0.0)
    """
    if isinstance(beta, int | float) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    for name, w in (
        ("desirable_weight", desirable_weight),
        ("undesirable_weight", undesirable_weight),
    ):
        if isinstance(w, int | float) and w < 0:
            raise ValueError(f"{name} must be >= 0, got {w}")
    logps = jnp.asarray(policy_logps).astype(jnp.float32)
    ref = jnp.asarray(ref_logps).astype(jnp.float32)
    good = jnp.asarray(desirable, bool)
    for name, x in (
        ("ref_logps", ref),
        ("desirable", good),
        ("kl_policy_logps", jnp.asarray(kl_policy_logps)),
        ("kl_ref_logps", jnp.asarray(kl_ref_logps)),
    ):
        if x.shape != logps.shape:
            raise ValueError(f"kto_loss: {name} has shape {x.shape}, policy_logps {logps.shape}")
    keep = jnp.ones(logps.shape, bool) if where is None else jnp.asarray(where, bool)
    z0 = kto_reference_point(kl_policy_logps, kl_ref_logps, keep)
    logratio = jnp.where(keep, logps - ref, 0.0)
    # 1 - sigmoid(u) = sigmoid(-u), without the cancellation for large u.
    chosen = desirable_weight * jax.nn.sigmoid(-beta * (logratio - z0))
    rejected = undesirable_weight * jax.nn.sigmoid(-beta * (z0 - logratio))
    losses = jnp.where(keep, jnp.where(good, chosen, rejected), 0.0)
    return KTOOutput(
        losses=losses.astype(jnp.float32),
        keep=keep,
        desirable=good,
        rewards=beta * logratio,
        logps=jnp.where(keep, logps, 0.0),
        z0=z0,
    )


def kto_undesirable_weight(n_desirable: int, n_undesirable: int) -> float:
    """SACPO's undesirable weight ``n_desirable / n_undesirable`` (desirable weight 1).

    It balances the two classes' total weight, as TRL's KTO documentation recommends.

    >>> kto_undesirable_weight(300, 100)
    3.0
    """
    if n_desirable < 0 or n_undesirable <= 0:
        raise ValueError(
            f"need n_desirable >= 0 and n_undesirable > 0, got {n_desirable}, {n_undesirable}"
        )
    return n_desirable / n_undesirable


def kto_metric_sums(out: KTOOutput) -> dict[str, Array]:
    """TRL's KTO metrics as ``{name: array([sum, count])}``, reduced by `finalize_metrics`.

    ``loss`` over kept examples; ``rewards/chosen``, ``logps/chosen`` over kept desirable
    ones, ``rewards/rejected``, ``logps/rejected`` over kept undesirable ones; ``kl``: the
    reference point (one count per batch, so summing over microbatches averages them).

    >>> from safedpo_jax.losses import finalize_metrics
    >>> out = kto_loss(jnp.array([1.0, 0.0]), jnp.zeros(2), jnp.array([True, False]),
    ...                jnp.zeros(2), jnp.zeros(2), beta=0.5)
    >>> float(finalize_metrics(kto_metric_sums(out))["rewards/chosen"])
    0.5
    """

    def over(mask: Array, values: Array) -> Array:
        values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), mask.shape)
        return jnp.stack([jnp.sum(jnp.where(mask, values, 0.0)), jnp.sum(mask).astype(jnp.float32)])

    good, bad = out.keep & out.desirable, out.keep & ~out.desirable
    return {
        "loss": over(out.keep, out.losses),
        "rewards/chosen": over(good, out.rewards),
        "rewards/rejected": over(bad, out.rewards),
        "logps/chosen": over(good, out.logps),
        "logps/rejected": over(bad, out.logps),
        "kl": jnp.stack([out.z0, jnp.float32(1.0)]),
    }
