"""KTO: a NumPy reference, TRL's own ``KTOTrainer`` loss code on the same tensors, gradients."""

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from safedpo_jax.losses import (
    finalize_metrics,
    kept_mean,
    kto_loss,
    kto_metric_sums,
    kto_reference_point,
    kto_undesirable_weight,
)


def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def np_kto(policy, ref, desirable, kl_policy, kl_ref, beta, w_d, w_u):
    """Straight from TRL's kto branch, in float64: per-example losses and z0."""
    z0 = max(0.0, float(np.mean(np.float64(kl_policy) - np.float64(kl_ref))))
    lr = np.float64(policy) - np.float64(ref)
    chosen = w_d * (1.0 - np_sigmoid(beta * (lr - z0)))
    rejected = w_u * (1.0 - np_sigmoid(beta * (z0 - lr)))
    return np.where(desirable, chosen, rejected), z0


def batch(seed, n=10, kl_shift=0.0):
    rng = np.random.default_rng(seed)
    policy = rng.normal(-20, 4, n)
    ref = policy + rng.normal(0, 2, n)
    kl_ref = rng.normal(-25, 4, n)
    kl_policy = kl_ref + rng.normal(kl_shift, 1, n)
    desirable = rng.random(n) < 0.6
    desirable[:2] = [True, False]
    return policy, ref, desirable, kl_policy, kl_ref


CASES = [  # (kl_shift, beta, w_d, w_u): z0 > 0, and a negative KL mean that clamps to 0
    (1.5, 0.1, 1.0, 1.0),
    (1.5, 0.5, 1.0, 2.5),
    (-1.5, 0.1, 1.33, 1.0),
    (3.0, 0.05, 0.7, 1.9),
]


@pytest.mark.parametrize("case", CASES)
def test_kto_matches_numpy_reference(case):
    kl_shift, beta, w_d, w_u = case
    args = batch(1, kl_shift=kl_shift)
    out = kto_loss(*args, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    want, z0 = np_kto(*args, beta, w_d, w_u)
    np.testing.assert_allclose(out.losses, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.z0, z0, rtol=1e-6, atol=1e-7)
    if kl_shift < 0:
        assert float(out.z0) == 0.0


# ----------------------------------------------------------------------------- TRL itself
def trl_kto_batch_loss(policy, ref, desirable, kl_policy, kl_ref, *, beta, w_d, w_u):
    """Runs TRL's ``KTOTrainer._compute_loss`` on the given sequence log-probs.

    A stand-in model maps each row's first input id to a fixed log-prob, so TRL's own code
    sums, splits, computes the KL reference point, the losses and their mean.
    """
    torch = pytest.importorskip("torch")
    kto_trainer = pytest.importorskip("trl.trainer.kto_trainer")
    n = len(policy)
    table = torch.tensor(np.concatenate([policy, kl_policy]), dtype=torch.float64)

    class Model:
        training = True

        def __call__(self, input_ids, **kwargs):
            logps = table[input_ids[:, 0]][:, None]  # [B, 1]: one completion token
            return types.SimpleNamespace(
                log_probs=logps,
                entropy=torch.zeros_like(logps),
                mean_logits=torch.zeros_like(logps),
            )

    ids = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], 1)
    ones = torch.ones(n, 2, dtype=torch.long)
    inputs = {
        "input_ids": ids,
        "attention_mask": ones,
        "completion_mask": ones,
        "KL_input_ids": ids + torch.tensor([n, 0]),
        "KL_attention_mask": ones,
        "KL_completion_mask": ones,
        "label": torch.tensor(desirable),
        "ref_logps": torch.tensor(ref, dtype=torch.float64),
        "ref_KL_logps": torch.tensor(kl_ref, dtype=torch.float64),
    }
    model = Model()
    accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x)
    stub = types.SimpleNamespace(
        model=model,
        accelerator=accelerator,
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type="kto",
        beta=beta,
        desirable_weight=w_d,
        undesirable_weight=w_u,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    stub._compute_kl_logps = types.MethodType(kto_trainer.KTOTrainer._compute_kl_logps, stub)
    loss = kto_trainer.KTOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return float(loss), stub._metrics["train"]["kl"][-1]


@pytest.mark.parametrize("case", CASES)
def test_kto_matches_trls_own_loss(case):
    kl_shift, beta, w_d, w_u = case
    args = batch(2, kl_shift=kl_shift)
    trl_loss, trl_z0 = trl_kto_batch_loss(*args, beta=beta, w_d=w_d, w_u=w_u)
    out = kto_loss(*args, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    np.testing.assert_allclose(float(kept_mean(out.losses, out.keep)), trl_loss, atol=1e-6)
    np.testing.assert_allclose(float(out.z0), trl_z0, atol=1e-6)


# ----------------------------------------------------------------------------- properties
def test_reference_point_carries_no_gradient_and_loss_gradients_are_right():
    policy, ref, desirable, kl_policy, kl_ref = (jnp.asarray(a) for a in batch(3, kl_shift=1.0))

    def total(kl_p):
        return kto_loss(policy, ref, desirable, kl_p, kl_ref, beta=0.1).losses.sum()

    np.testing.assert_array_equal(jax.grad(total)(kl_policy), 0.0)
    check_grads(
        lambda p: kto_loss(p, ref, desirable, kl_policy, kl_ref, beta=0.5).losses,
        (policy,),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=1e-3,
        rtol=1e-3,
    )
    # Desirable examples are pushed up, undesirable ones down.
    g = jax.grad(lambda p: kto_loss(p, ref, desirable, kl_policy, kl_ref, beta=0.1).losses.sum())(
        policy
    )
    assert (g[desirable] < 0).all() and (g[~desirable] > 0).all()


def test_where_excludes_padding_from_losses_and_reference_point():
    policy, ref, desirable, kl_policy, kl_ref = batch(4, kl_shift=1.0)
    where = np.ones(10, bool)
    where[[3, 7]] = False
    pad = np.where(where, policy, -np.inf)
    out = kto_loss(
        pad, ref, desirable, np.where(where, kl_policy, np.nan), kl_ref, beta=0.1, where=where
    )
    sliced = kto_loss(*(a[where] for a in (policy, ref, desirable, kl_policy, kl_ref)), beta=0.1)
    np.testing.assert_allclose(out.losses[where], sliced.losses, rtol=1e-6)
    np.testing.assert_array_equal(out.losses[~where], 0.0)
    np.testing.assert_allclose(out.z0, sliced.z0, rtol=1e-6)
    g = jax.grad(
        lambda p: kto_loss(p, ref, desirable, kl_policy, kl_ref, beta=0.1, where=where).losses.sum()
    )(jnp.asarray(pad))
    assert np.isfinite(g).all() and (g[~where] == 0).all()


def test_extremes_are_finite():
    big = jnp.array([1e4, -1e4, 1e4, -1e4])
    out = kto_loss(
        big,
        jnp.zeros(4),
        jnp.array([True, True, False, False]),
        jnp.zeros(4),
        jnp.zeros(4),
        beta=1.0,
    )
    np.testing.assert_allclose(out.losses, [0.0, 1.0, 1.0, 0.0], atol=1e-6)


def test_metrics_and_weight_helper():
    policy, ref, desirable, kl_policy, kl_ref = batch(5, kl_shift=1.0)
    out = kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=0.1)
    m = finalize_metrics(kto_metric_sums(out))
    np.testing.assert_allclose(
        m["rewards/chosen"], 0.1 * (policy - ref)[desirable].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(m["logps/rejected"], policy[~desirable].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["kl"], kto_reference_point(kl_policy, kl_ref), rtol=1e-6)
    assert kto_undesirable_weight(90, 30) == 3.0
    with pytest.raises(ValueError, match="n_undesirable > 0"):
        kto_undesirable_weight(3, 0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta=0.0)
    with pytest.raises(ValueError, match="desirable has shape"):
        kto_loss(policy, ref, desirable[:3], kl_policy, kl_ref, beta=0.1)
