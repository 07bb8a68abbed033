"""The loss kernel: closed forms, NumPy parity, gradients, invariants, sharding.

Tolerances: float32 math everywhere; parity with the float64 NumPy reference to
rtol 1e-5 / atol 1e-5 (a few float32 ulps of values of order 1-10); bf16 inputs are
compared against the reference evaluated on the same bf16-rounded inputs.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from safedpo_jax import losses
from safedpo_jax.losses import (
    chunked_sequence_logprobs,
    dpo_loss,
    finalize_metrics,
    hinge_loss,
    ipo_loss,
    kept_mean,
    metric_sums,
    safe_hinge_loss,
    safe_ipo_loss,
    safedpo_loss,
    safety_transform,
    sequence_logprobs,
)

RTOL = ATOL = 1e-5
LABELS = [(False, False), (False, True), (True, False), (True, True)]


# ----------------------------------------------------------------------------- NumPy reference
def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_safe_reference(pc, pr, rc, rr, hw, hl, beta, delta, link):
    """Straight from the paper's table and Eq. 12, pair by pair, in float64."""
    pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
    losses_, keep = [], []
    for i in range(len(pc)):
        if hw[i] and hl[i]:
            losses_.append(0.0)
            keep.append(False)
            continue
        win, lose = (1, 0) if (hw[i] and not hl[i]) else (0, 1)
        lp = [(pc[i] - rc[i]), (pr[i] - rr[i])]
        h = [hw[i], hl[i]]
        gap = lp[win] - lp[lose]
        margin = (float(h[lose]) - float(h[win])) * delta
        losses_.append(link(beta * gap - margin))
        keep.append(True)
    return np.array(losses_), np.array(keep)


def np_sigmoid(u, eps=0.0):
    return -(1 - eps) * np_log_sigmoid(u) - eps * np_log_sigmoid(-u)


def random_batch(seed, b=64, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    logps = rng.normal(-40.0, 15.0, size=(4, b))
    hw = rng.random(b) < 0.4
    hl = rng.random(b) < 0.4
    return [jnp.asarray(x, dtype) for x in logps], jnp.asarray(hw), jnp.asarray(hl)


# ----------------------------------------------------------------------------- exact values
def test_transform_table():
    hw = jnp.array([a for a, _ in LABELS])
    hl = jnp.array([b for _, b in LABELS])
    t = safety_transform(hw, hl)
    assert t.swap.tolist() == [False, False, True, False]
    assert t.drop.tolist() == [False, False, False, True]
    assert t.mixed.tolist() == [False, True, True, False]


@pytest.mark.parametrize("delta", [0.0, 2.0, 10.0])
def test_at_reference_loss_is_ln2_or_softplus_delta(delta):
    z = jnp.full(4, -12.5)
    hw = jnp.array([a for a, _ in LABELS])
    hl = jnp.array([b for _, b in LABELS])
    out = safedpo_loss(z, z, z, z, hw, hl, beta=0.1, delta=delta)
    softplus = float(np.logaddexp(0.0, delta))
    np.testing.assert_allclose(out.losses, [np.log(2), softplus, softplus, 0.0], rtol=1e-6)
    assert out.keep.tolist() == [True, True, True, False]
    assert out.swapped.tolist() == [False, False, True, False]
    assert out.dropped.tolist() == [False, False, False, True]
    assert out.losses.dtype == jnp.float32


def test_paper_values():
    # safedpo.md: Delta = 10 gives softplus(10) = 10.0000454; beta 0.1 and a gap of 2
    # gives 0.598139 for DPO and 9.800055 for SafeDPO with Delta = 10.
    z = jnp.zeros(1)
    out = safedpo_loss(z, z, z, z, jnp.array([False]), jnp.array([True]), beta=0.1, delta=10.0)
    np.testing.assert_allclose(out.losses, [10.0000454], rtol=1e-7)
    two = jnp.array([2.0])
    np.testing.assert_allclose(dpo_loss(two, z, z, z, beta=0.1).losses, [0.598139], atol=1e-6)
    out = safedpo_loss(two, z, z, z, jnp.array([False]), jnp.array([True]), beta=0.1, delta=10.0)
    np.testing.assert_allclose(out.losses, [9.800055], atol=1e-5)


def test_margin_shifts_logit_by_delta_only_on_mixed_pairs():
    (pc, pr, rc, rr), _, _ = random_batch(0, b=4)
    hw = jnp.array([a for a, _ in LABELS])
    hl = jnp.array([b for _, b in LABELS])
    base = safedpo_loss(pc, pr, rc, rr, hw, hl, beta=0.3, delta=0.0)
    shifted = safedpo_loss(pc, pr, rc, rr, hw, hl, beta=0.3, delta=7.0)
    diff = np.asarray(base.logits - shifted.logits)
    np.testing.assert_allclose(diff[:3], [0.0, 7.0, 7.0], atol=1e-5)
    np.testing.assert_array_equal(shifted.margin, [0.0, 7.0, 7.0, 0.0])


def test_swap_exchanges_winner_and_loser():
    pc, pr = jnp.array([-3.0]), jnp.array([-7.0])
    rc, rr = jnp.array([-4.0]), jnp.array([-5.0])
    out = safedpo_loss(pc, pr, rc, rr, jnp.array([True]), jnp.array([False]), beta=0.5, delta=0)
    # After T the winner is the formerly rejected (safe) response.
    np.testing.assert_allclose(out.chosen_rewards, [0.5 * (-7.0 + 5.0)])
    np.testing.assert_allclose(out.rejected_rewards, [0.5 * (-3.0 + 4.0)])
    np.testing.assert_allclose(out.chosen_logps, [-7.0])
    np.testing.assert_allclose(out.losses, np_sigmoid(np.array([0.5 * (-2.0 - 1.0)])), rtol=1e-6)


def test_dropped_pair_has_zero_loss_and_zero_gradient():
    def total(pc, pr):
        z = jnp.zeros(2)
        hw, hl = jnp.array([True, False]), jnp.array([True, True])
        return safedpo_loss(pc, pr, z, z, hw, hl, beta=0.1, delta=10.0).losses.sum()

    pc, pr = jnp.array([-3.0, -1.0]), jnp.array([-2.0, -5.0])
    g_c, g_r = jax.grad(total, argnums=(0, 1))(pc, pr)
    assert float(g_c[0]) == 0.0 and float(g_r[0]) == 0.0
    assert float(g_c[1]) != 0.0


def test_where_masks_padding_pairs():
    (pc, pr, rc, rr), hw, hl = random_batch(1, b=8)
    where = jnp.arange(8) < 5
    out = safedpo_loss(pc, pr, rc, rr, hw, hl, beta=0.1, delta=2.0, where=where)
    sliced = safedpo_loss(pc[:5], pr[:5], rc[:5], rr[:5], hw[:5], hl[:5], beta=0.1, delta=2.0)
    np.testing.assert_array_equal(out.losses[5:], 0.0)
    assert not out.keep[5:].any() and not out.dropped[5:].any()
    np.testing.assert_allclose(out.losses[:5], sliced.losses, rtol=1e-6)
    a = finalize_metrics(metric_sums(out, where))
    b = finalize_metrics(metric_sums(sliced))
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- NumPy parity
LINKS = {
    "sigmoid": (
        lambda *a, **k: safedpo_loss(*a, **k),
        lambda b: np_sigmoid,
    ),
    "cdpo": (
        lambda *a, **k: safedpo_loss(*a, label_smoothing=0.1, **k),
        lambda b: lambda u: np_sigmoid(u, 0.1),
    ),
    "ipo": (safe_ipo_loss, lambda b: lambda u: ((u - 0.5) / b) ** 2),
    "hinge": (safe_hinge_loss, lambda b: lambda u: max(0.0, 1.0 - u)),
}


@pytest.mark.parametrize("name", LINKS)
@pytest.mark.parametrize("delta", [0.0, 2.0, 10.0])
def test_parity_with_numpy(name, delta):
    fn, np_link = LINKS[name]
    beta = 0.1
    (pc, pr, rc, rr), hw, hl = random_batch(2)
    out = fn(pc, pr, rc, rr, hw, hl, beta=beta, delta=delta)
    want, keep = np_safe_reference(pc, pr, rc, rr, hw, hl, beta, delta, np_link(beta))
    np.testing.assert_array_equal(out.keep, keep)
    np.testing.assert_allclose(out.losses, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("plain", "safe", "extra"),
    [
        (dpo_loss, safedpo_loss, {}),
        (ipo_loss, safe_ipo_loss, {}),
        (hinge_loss, safe_hinge_loss, {}),
    ],
)
def test_plain_equals_safe_on_all_safe_pairs(plain, safe, extra):
    (pc, pr, rc, rr), _, _ = random_batch(3)
    f = jnp.zeros_like(pc, dtype=bool)
    a = plain(pc, pr, rc, rr, beta=0.2)
    b = safe(pc, pr, rc, rr, f, f, beta=0.2, delta=5.0)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    assert a.keep.all() and not a.swapped.any()


def test_bf16_inputs_give_float32_accurate_results():
    (pc, pr, rc, rr), hw, hl = random_batch(4, dtype=jnp.bfloat16)
    out = safedpo_loss(pc, pr, rc, rr, hw, hl, beta=0.1, delta=10.0)
    assert out.losses.dtype == jnp.float32 and out.chosen_rewards.dtype == jnp.float32
    up = [np.asarray(x.astype(jnp.float32), np.float64) for x in (pc, pr, rc, rr)]
    want, _ = np_safe_reference(*up, hw, hl, 0.1, 10.0, np_sigmoid)
    np.testing.assert_allclose(out.losses, want, rtol=RTOL, atol=ATOL)


def test_finite_at_huge_gaps():
    gaps = jnp.array([5000.0, -5000.0, 3000.0, -3000.0])
    z = jnp.zeros(4)
    hw = jnp.array([False, False, True, False])
    hl = jnp.array([True, False, False, False])

    def total(pc):
        return safedpo_loss(pc, z, z, z, hw, hl, beta=1.0, delta=10.0).losses.sum()

    value, grad = jax.value_and_grad(total)(gaps)
    assert np.isfinite(value) and np.isfinite(grad).all()
    for fn in (dpo_loss, ipo_loss, hinge_loss):
        v, g = jax.value_and_grad(lambda p, fn=fn: fn(p, z, z, z, beta=1.0).losses.sum())(gaps)
        assert np.isfinite(v) and np.isfinite(g).all(), fn.__name__


def test_non_finite_logps_of_ignored_pairs_do_not_leak():
    pc = jnp.array([-jnp.inf, -2.0, jnp.nan])
    z = jnp.zeros(3)
    hw, hl = jnp.array([True, False, False]), jnp.array([True, True, False])
    where = jnp.array([True, True, False])

    def total(pc):
        out = safedpo_loss(pc, z, z, z, hw, hl, beta=0.1, delta=1.0, where=where)
        return out.losses.sum()

    value, grad = jax.value_and_grad(total)(pc)
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_invalid_hyperparameters_are_clear_errors():
    z = jnp.zeros(1)
    f = jnp.array([False])
    with pytest.raises(ValueError, match="beta"):
        safedpo_loss(z, z, z, z, f, f, beta=0.0, delta=1.0)
    with pytest.raises(ValueError, match="delta"):
        safedpo_loss(z, z, z, z, f, f, beta=0.1, delta=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="safety labels"):
        losses.safe_daa_loss(losses.sigmoid_link(), z, z, z, z, beta=0.1, delta=1.0)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", LINKS)
def test_gradients_numerically(name):
    fn, _ = LINKS[name]
    rng = np.random.default_rng(5)
    pc, pr, rc, rr = (jnp.asarray(rng.normal(-5, 2, 8), jnp.float32) for _ in range(4))
    hw = jnp.asarray(rng.random(8) < 0.5)
    hl = jnp.asarray(rng.random(8) < 0.5)
    if name == "hinge":  # keep away from the hinge's kink, where the derivative jumps
        pr = pc - 1.0 / 0.7 + jnp.where(hw != hl, 3.0, 0.0) + 5.0

    def f(pc, pr, rc, rr):
        return fn(pc, pr, rc, rr, hw, hl, beta=0.7, delta=2.0).losses

    check_grads(f, (pc, pr, rc, rr), order=1, modes=["rev", "fwd"], atol=1e-2, rtol=1e-2, eps=1e-2)


def test_sequence_logprobs_gradients():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 7, size=(2, 5)))
    mask = jnp.asarray(rng.random((2, 5)) < 0.7)
    check_grads(lambda x: sequence_logprobs(x, ids, mask), (logits,), order=1, eps=1e-2)


# ----------------------------------------------------------------------------- invariants
def test_jit_equals_eager():
    (pc, pr, rc, rr), hw, hl = random_batch(7)
    f = lambda *a: safedpo_loss(*a, beta=0.1, delta=10.0)
    eager, jitted = f(pc, pr, rc, rr, hw, hl), jax.jit(f)(pc, pr, rc, rr, hw, hl)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vmap_equals_batched_call():
    args = [jnp.stack(x) for x in zip(*[random_batch(s, b=16)[0] for s in range(3)], strict=True)]
    hw = jnp.asarray(np.random.default_rng(8).random((3, 16)) < 0.4)
    hl = jnp.asarray(np.random.default_rng(9).random((3, 16)) < 0.4)
    f = lambda *a: safedpo_loss(*a, beta=0.1, delta=5.0).losses
    vm = jax.vmap(f)(*args, hw, hl)
    flat = f(*(a.reshape(-1) for a in args), hw.reshape(-1), hl.reshape(-1))
    np.testing.assert_allclose(vm.reshape(-1), flat, rtol=1e-6)


def test_sharded_over_8_devices_equals_unsharded():
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Explicit,))
    (pc, pr, rc, rr), hw, hl = random_batch(10, b=64)
    sharding = jax.sharding.NamedSharding(mesh, jax.P("batch"))
    sharded = [jax.device_put(x, sharding) for x in (pc, pr, rc, rr, hw, hl)]

    @jax.jit
    def step(*a):
        out = safedpo_loss(*a, beta=0.1, delta=10.0)
        return out.losses, kept_mean(out.losses, out.keep), metric_sums(out)

    with jax.set_mesh(mesh):
        losses_s, mean_s, sums_s = step(*sharded)
    assert losses_s.sharding.spec == jax.P("batch")
    losses_u, mean_u, sums_u = step(pc, pr, rc, rr, hw, hl)
    np.testing.assert_allclose(losses_s, losses_u, rtol=1e-6)
    np.testing.assert_allclose(mean_s, mean_u, rtol=1e-6)
    for k in sums_u:
        np.testing.assert_allclose(sums_s[k], sums_u[k], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_reduction_over_k_parts_equals_whole_batch(k):
    (pc, pr, rc, rr), hw, hl = random_batch(11, b=64)
    args = (pc, pr, rc, rr, hw, hl)
    whole = safedpo_loss(*args, beta=0.1, delta=10.0)
    n_kept = int(whole.keep.sum())
    # Loss: each part contributes sum(losses) / (kept count of the whole batch).
    parts = [
        safedpo_loss(*(a[i::k] for a in args), beta=0.1, delta=10.0) for i in range(k)
    ]  # strided split: parts have different kept counts
    total = sum(float(p.losses.sum()) for p in parts) / n_kept
    np.testing.assert_allclose(total, kept_mean(whole.losses, whole.keep), rtol=1e-5)
    # Metrics: sums add up.
    summed = jax.tree.map(lambda *x: sum(x), *[metric_sums(p) for p in parts])
    want = finalize_metrics(metric_sums(whole))
    got = finalize_metrics(summed)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # The gradient accumulated over the parts equals the whole-batch gradient.
    def whole_loss(pc):
        out = safedpo_loss(pc, *args[1:], beta=0.1, delta=10.0)
        return kept_mean(out.losses, out.keep)

    def part_loss(pc_part, i):
        rest = [a[i::k] for a in args[1:]]
        return safedpo_loss(pc_part, *rest, beta=0.1, delta=10.0).losses.sum() / n_kept

    g_acc = jnp.zeros_like(pc)
    for i in range(k):
        g_acc = g_acc.at[i::k].set(jax.grad(part_loss)(pc[i::k], i))
    np.testing.assert_allclose(g_acc, jax.grad(whole_loss)(pc), rtol=1e-5, atol=1e-8)


def test_metrics_values():
    pc = jnp.array([-1.0, -2.0, -3.0, -4.0])
    pr = jnp.array([-2.0, -1.0, -3.5, -4.0])
    z = jnp.zeros(4)
    hw = jnp.array([False, True, False, True])
    hl = jnp.array([False, False, True, True])
    out = safedpo_loss(pc, pr, z, z, hw, hl, beta=1.0, delta=1.0)
    m = {k: float(v) for k, v in finalize_metrics(metric_sums(out)).items()}
    # Kept: pairs 0, 1 (swapped: winner -1, loser -2), 2 (winner -3, loser -3.5).
    assert m["safety/kept"] == 0.75 and m["safety/swapped"] == 0.25
    assert m["safety/dropped"] == 0.25 and m["safety/mixed"] == 0.5
    np.testing.assert_allclose(m["rewards/chosen"], (-1 - 1 - 3) / 3)
    np.testing.assert_allclose(m["rewards/rejected"], (-2 - 2 - 3.5) / 3)
    np.testing.assert_allclose(m["rewards/margins"], (1 + 1 + 0.5) / 3)
    assert m["rewards/accuracies"] == 1.0 and m["safety/mixed_accuracy"] == 1.0
    np.testing.assert_allclose(m["safety/margin"], 2 / 3)
    np.testing.assert_allclose(m["logps/chosen"], (-1 - 1 - 3) / 3)


# ----------------------------------------------------------------------------- log-probs
def np_sequence_logprobs(logits, ids, mask):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    out = np.zeros(logits.shape[:-1][:-1])
    for idx in np.ndindex(*logits.shape[:-2]):
        for t in range(logits.shape[-2]):
            if mask[idx + (t,)]:
                out[idx] += logits[idx + (t, ids[idx + (t,)])] - lse[idx + (t,)]
    return out


def test_sequence_logprobs_parity_and_masking():
    rng = np.random.default_rng(12)
    logits = rng.normal(0, 3, size=(3, 2, 9, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(3, 2, 9))
    mask = rng.random((3, 2, 9)) < 0.6
    got = sequence_logprobs(logits, ids, mask)
    np.testing.assert_allclose(got, np_sequence_logprobs(logits, ids, mask), rtol=1e-5, atol=1e-5)
    # Garbage ids and huge logits at masked positions change nothing and make no NaN.
    bad_ids = np.where(mask, ids, -100)
    np.testing.assert_allclose(sequence_logprobs(logits, bad_ids, mask), got, rtol=1e-6)
    f = lambda x: sequence_logprobs(x, bad_ids, mask).sum()
    value, grad = jax.value_and_grad(f)(jnp.where(mask[..., None], logits, 1e4))
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_sequence_logprobs_bf16_logits_in_float32():
    rng = np.random.default_rng(13)
    logits = jnp.asarray(rng.normal(size=(2, 6, 50)), jnp.bfloat16)
    ids = jnp.asarray(rng.integers(0, 50, (2, 6)))
    mask = jnp.ones((2, 6), bool)
    got = sequence_logprobs(logits, ids, mask)
    assert got.dtype == jnp.float32
    want = np_sequence_logprobs(
        np.asarray(logits.astype(jnp.float32)), np.asarray(ids), np.asarray(mask)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_chunked_logprobs_equal_full_in_value_and_gradient(chunk):
    rng = np.random.default_rng(14)
    h = jnp.asarray(rng.normal(size=(2, 2, 13, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 37)) / 4, jnp.float32)
    ids = jnp.asarray(rng.integers(0, 37, (2, 2, 13)))
    mask = jnp.asarray(rng.random((2, 2, 13)) < 0.7)
    precision = jax.lax.Precision.HIGHEST
    full = lambda h, w: sequence_logprobs(
        jnp.einsum("...td,dv->...tv", h, w, precision=precision), ids, mask
    )
    with jax.default_matmul_precision("highest"):
        chunked = lambda h, w: chunked_sequence_logprobs(h, w, ids, mask, chunk_size=chunk)
        np.testing.assert_allclose(chunked(h, w), full(h, w), rtol=1e-5, atol=1e-5)
        g_full = jax.grad(lambda h, w: full(h, w).sum(), argnums=(0, 1))(h, w)
        g_chunk = jax.grad(lambda h, w: chunked(h, w).sum(), argnums=(0, 1))(h, w)
    for a, b in zip(g_chunk, g_full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def middle_responses(seed, rows=6, t=29, lengths=(1, 2, 4, 5, 3, 4)):
    """Hidden states and a mask with one response per row at a row-dependent offset (a
    prompt before it, padding after it), as the training batches lay them out."""
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(rows, t, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 37)) / 4, jnp.float32)
    ids = jnp.asarray(rng.integers(0, 37, (rows, t)))
    start = rng.integers(3, t - max(lengths), rows)
    pos = np.arange(t)
    mask = (pos >= start[:, None]) & (pos < start[:, None] + np.asarray(lengths)[:, None])
    return h, w, ids, jnp.asarray(mask)


@pytest.mark.parametrize("chunk", [1, 4, 8, 32])
def test_chunked_logprobs_skipping_masked_chunks_equal_projecting_all(chunk):
    """The responses gathered to the front and all-masked chunks skipped: the same sums
    and gradients (float32 summation order only) as projecting every position and as
    full logits."""
    h, w, ids, mask = middle_responses(15)
    precision = jax.lax.Precision.HIGHEST
    full = lambda h, w: sequence_logprobs(
        jnp.einsum("...td,dv->...tv", h, w, precision=precision), ids, mask
    )
    weights = jnp.arange(1.0, 7.0)  # a different cotangent per row
    with jax.default_matmul_precision("highest"):
        results = {
            name: jax.value_and_grad(lambda h, w, f=f: (f(h, w) * weights).sum(), (0, 1))(h, w)
            for name, f in {
                "full": full,
                "all": lambda h, w: chunked_sequence_logprobs(
                    h, w, ids, mask, chunk_size=chunk, skip_masked=False
                ),
                "skip": lambda h, w: chunked_sequence_logprobs(h, w, ids, mask, chunk_size=chunk),
            }.items()
        }
    for name in ("all", "skip"):
        value, grads = results[name]
        np.testing.assert_allclose(value, results["full"][0], rtol=1e-6)
        for a, b in zip(grads, results["full"][1], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_logprobs_skip_the_chunks_without_responses():
    """Every response is 4 tokens and a chunk 4 positions: after the gather one chunk
    holds all responses and the other 7 are skipped, so hidden states that are NaN outside
    the responses never reach the projection (projecting them would make the weight
    gradient NaN, as it does with ``skip_masked=False``)."""
    h, w, ids, mask = middle_responses(16, lengths=(4,) * 6)
    h = jnp.where(mask[..., None], h, jnp.nan)

    def grads(skip):
        f = lambda w: chunked_sequence_logprobs(h, w, ids, mask, chunk_size=4, skip_masked=skip)
        return jax.value_and_grad(lambda w: f(w).sum())(w)

    value, grad_w = grads(True)
    assert np.isfinite(value) and np.isfinite(grad_w).all() and np.abs(grad_w).max() > 0
    assert np.isnan(grads(False)[1]).any()


# ----------------------------------------------------------------------------- packaging
def test_importing_the_kernel_pulls_in_jax_and_numpy_only():
    code = (
        "import sys, safedpo_jax.losses;"
        "heavy = {'flax', 'optax', 'transformers', 'datasets', 'torch', 'orbax'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- TRL's IPO form
def np_trl_ipo(pc, pr, rc, rr, len_c, len_r, beta):
    """TRL's ``loss_type="ipo"``, written here from its definition: every summed log-prob
    is divided by its completion's token count, then ``(logits - 1 / (2 beta))^2`` with
    ``logits = (pi_c - pi_r) - (ref_c - ref_r)``."""
    pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
    len_c, len_r = np.asarray(len_c, np.float64), np.asarray(len_r, np.float64)
    logits = (pc / len_c - pr / len_r) - (rc / len_c - rr / len_r)
    return (logits - 1.0 / (2.0 * beta)) ** 2


def test_ipo_length_normalised_equals_trl_definition():
    (pc, pr, rc, rr), hw, hl = random_batch(11)
    rng = np.random.default_rng(12)
    len_c, len_r = rng.integers(1, 300, 64), rng.integers(1, 300, 64)
    beta = 0.1
    want = np_trl_ipo(pc, pr, rc, rr, len_c, len_r, beta)
    out = ipo_loss(pc, pr, rc, rr, beta=beta, chosen_lengths=len_c, rejected_lengths=len_r)
    np.testing.assert_allclose(out.losses, want, rtol=1e-5)
    # Summed log-probs (the default, the IPO paper's form) give a different, larger loss.
    summed = ipo_loss(pc, pr, rc, rr, beta=beta)
    assert float(jnp.mean(summed.losses)) > 10 * float(np.mean(want))
    # Safe IPO: T swaps the lengths with their responses; the reference is TRL's form on
    # the transformed pairs.
    out = safe_ipo_loss(pc, pr, rc, rr, hw, hl, beta=beta, delta=0.0,
                        chosen_lengths=len_c, rejected_lengths=len_r)  # fmt: skip
    hw_, hl_ = np.asarray(hw), np.asarray(hl)
    swap = hw_ & ~hl_
    keep = ~(hw_ & hl_)
    sw = lambda a, b: (np.where(swap, b, a), np.where(swap, a, b))  # noqa: E731
    (a, b), (c, d), (lc, lr) = sw(pc, pr), sw(rc, rr), sw(len_c, len_r)
    want = np.where(keep, np_trl_ipo(a, b, c, d, lc, lr, beta), 0.0)
    np.testing.assert_allclose(out.losses, want, rtol=1e-5, atol=1e-6)
    assert out.swapped.any() and (~out.keep).any()


def test_lengths_come_in_pairs_and_default_off():
    (pc, pr, rc, rr), _, _ = random_batch(13, b=4)
    with pytest.raises(ValueError, match="chosen_lengths and rejected_lengths"):
        ipo_loss(pc, pr, rc, rr, beta=0.1, chosen_lengths=jnp.ones(4))
    ones = jnp.ones(4)
    same = ipo_loss(pc, pr, rc, rr, beta=0.1, chosen_lengths=ones, rejected_lengths=ones)
    np.testing.assert_array_equal(same.losses, ipo_loss(pc, pr, rc, rr, beta=0.1).losses)
