"""The proof that the kernels are the papers': training on population losses reaches the optima.

SafeDPO. A tabular softmax policy trained with Adam on the population SafeDPO loss must
converge to pi*(y|x) proportional to pi_ref(y|x) exp(r(x,y)/beta) on safe responses and
0 on unsafe ones for every margin (Proposition 4.4). The world uses beta = 0.5, not 1, so
that a kernel with beta squared or without beta converges somewhere else. Two things the
optimum cannot see are checked besides: the population loss and its gradient at pi_ref
against their closed forms (they depend on the margin *outside* beta and on the pairs T
keeps), and the swap itself: SafeDPO, which turns an unsafe-winner pair around, must empty
the unsafe responses faster than DPO-SAFEBETTER, which drops those pairs (both share the
optimum). `test_mutant_is_caught` runs these checks on deliberately wrong kernels.

Then the other methods' closed forms: SACPO's chained stages, P-SACPO's merge, BFPO.
Thresholds: unsafe mass < 1e-3 and total variation (TV) < 1e-2, averaged over prompts.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safedpo_jax import losses
from safedpo_jax.worlds import closed_form as cf

BETA = 0.5


@pytest.fixture(scope="module", params=[0, 1])
def world(request):
    return cf.make_world(request.param, n_prompts=4, n_responses=6, n_unsafe=2, beta=BETA)


@pytest.fixture(scope="module")
def world0():
    return cf.make_world(0, n_prompts=4, n_responses=6, n_unsafe=2, beta=BETA)


# ----------------------------------------------------------------------------- SafeDPO proof
def np_loss_and_grad_at_reference(world, beta, delta):
    """The population SafeDPO loss and its gradient in the logits at theta = log pi_ref.

    At the reference every log-ratio is 0, so a kept pair's loss is -log sigmoid(-m) with
    m its margin, and d loss / d gap = -beta sigmoid(m). After T a mixed pair {safe s,
    unsafe u} always has s winning (both orders), with margin delta; a safe pair has i
    winning with Bradley-Terry probability sigmoid(r_i - r_j); unsafe pairs are dropped.
    d log pi(k|x) / d theta(x, k') = [k = k'] - pi(k'|x), whose pi term cancels in a gap.
    """
    n_prompts, k = world.reward.shape
    total_weight, loss, grad = 0.0, 0.0, np.zeros((n_prompts, k))
    for x in range(n_prompts):
        for i, j in itertools.combinations(range(k), 2):
            hi, hj = world.unsafe[x, i], world.unsafe[x, j]
            if hi and hj:
                continue
            total_weight += 1.0
            if hi != hj:
                s, u = (j, i) if hi else (i, j)
                loss += np.logaddexp(0.0, delta)
                grad[x, s] -= beta / (1.0 + np.exp(-delta))
                grad[x, u] += beta / (1.0 + np.exp(-delta))
            else:
                p_ij = 1.0 / (1.0 + np.exp(-(world.reward[x, i] - world.reward[x, j])))
                loss += np.log(2.0)
                # i over j with p_ij, j over i with 1 - p_ij; each slope -beta / 2.
                grad[x, i] -= 0.5 * beta * (2.0 * p_ij - 1.0)
                grad[x, j] += 0.5 * beta * (2.0 * p_ij - 1.0)
    return loss / total_weight, grad / total_weight


def proof_failures(world, kernel=None):
    """The checks a SafeDPO kernel must pass; returns the names of those it fails."""
    failures = []
    for delta in (0.0, 2.0):
        m = cf.evaluate_policy(cf.train_policy(world, "safedpo", delta=delta, kernel=kernel), world)
        if not (m["unsafe_mass"] < 1e-3 and m["tv_to_safe_optimum"] < 1e-2):
            failures.append("converges to pi*")
    pairs = cf.pair_table(world, "safedpo")
    for delta in (0.0, 2.0):
        loss, grad = jax.value_and_grad(cf.population_loss)(
            jnp.asarray(world.ref_logprobs, jnp.float32),
            world,
            pairs,
            "safedpo",
            beta=world.beta,
            delta=delta,
            kernel=kernel,
        )
        want_loss, want_grad = np_loss_and_grad_at_reference(world, world.beta, delta)
        if not (
            np.allclose(loss, want_loss, rtol=1e-5) and np.allclose(grad, want_grad, atol=1e-6)
        ):
            failures.append("loss and gradient at pi_ref")
    budget = {"steps": 100}
    swap = cf.evaluate_policy(cf.train_policy(world, "safedpo", kernel=kernel, **budget), world)
    drop = cf.evaluate_policy(cf.train_policy(world, "safebetter", **budget), world)
    if not swap["unsafe_mass"] < 0.75 * drop["unsafe_mass"]:
        failures.append("swap beats drop")
    return sorted(set(failures))


# Deliberately wrong SafeDPO kernels (same signature as losses.safedpo_loss), each with
# the checks that must reject it (others may too).
def beta_squared(pc, pr, rc, rr, hw, hl, *, beta, delta):
    return losses.safedpo_loss(pc, pr, rc, rr, hw, hl, beta=beta**2, delta=delta)


def no_beta(pc, pr, rc, rr, hw, hl, *, beta, delta):
    return losses.safedpo_loss(pc, pr, rc, rr, hw, hl, beta=1.0, delta=delta)


def margin_inside_beta(pc, pr, rc, rr, hw, hl, *, beta, delta):
    # -log sigmoid(beta * (gap - delta)) = -log sigmoid(beta * gap - beta * delta)
    return losses.safedpo_loss(pc, pr, rc, rr, hw, hl, beta=beta, delta=beta * delta)


def drop_instead_of_swap(pc, pr, rc, rr, hw, hl, *, beta, delta):
    # Pairs whose helpfulness winner is unsafe and loser safe are removed, not turned round.
    unsafe_winner = jnp.asarray(hw) & ~jnp.asarray(hl)
    return losses.safedpo_loss(pc, pr, rc, rr, hw, hl, beta=beta, delta=delta, where=~unsafe_winner)


MUTANTS = {
    "beta squared": (beta_squared, {"converges to pi*", "loss and gradient at pi_ref"}),
    "no beta": (no_beta, {"converges to pi*", "loss and gradient at pi_ref"}),
    "margin inside beta": (margin_inside_beta, {"loss and gradient at pi_ref"}),
    "drop instead of swap": (
        drop_instead_of_swap,
        {"loss and gradient at pi_ref", "swap beats drop"},
    ),
}


def test_the_kernel_passes_every_check_of_the_proof(world):
    assert proof_failures(world) == []


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_caught(world0, name):
    kernel, expected = MUTANTS[name]
    failures = proof_failures(world0, kernel)
    assert expected <= set(failures), (name, failures)


@pytest.mark.parametrize("delta", [0.0, 2.0, 10.0])
def test_safedpo_converges_to_the_safe_closed_form(world, delta):
    policy = cf.train_policy(world, "safedpo", delta=delta, steps=3000)
    m = cf.evaluate_policy(policy, world)
    assert m["unsafe_mass"] < 1e-3, m
    assert m["tv_to_safe_optimum"] < 1e-2, m


def test_plain_dpo_converges_to_the_unconstrained_optimum_and_keeps_unsafe_mass(world):
    policy = cf.train_policy(world, "helpful", steps=3000)
    m = cf.evaluate_policy(policy, world)
    assert m["tv_to_unconstrained_optimum"] < 1e-2, m
    want = cf.evaluate_policy(cf.optimal_policy(world, safe=False), world)["unsafe_mass"]
    assert want > 0.1  # the world is built so that the helpful optimum is unsafe
    np.testing.assert_allclose(m["unsafe_mass"], want, atol=1e-2)


def test_margin_speeds_up_the_push_away_from_unsafe_responses(world):
    masses = [
        cf.evaluate_policy(cf.train_policy(world, "safedpo", delta=d, steps=100), world)[
            "unsafe_mass"
        ]
        for d in (0.0, 2.0, 10.0)
    ]
    assert masses[0] > masses[1] > masses[2], masses


def test_harmless_order_converges_to_its_tilt_keeps_some_unsafe_mass_and_loses_reward(world):
    policy = cf.train_policy(world, "harmless", steps=3000)
    own = cf.softmax_tilt(world.ref_logprobs, -world.cost, world.beta)
    m = cf.evaluate_policy(policy, world, own)
    safe = cf.evaluate_policy(cf.optimal_policy(world, safe=True), world)
    assert m["tv_to_own_optimum"] < 1e-2, m
    assert m["unsafe_mass"] > 1e-3
    assert m["expected_reward"] < safe["expected_reward"]


def test_population_pairs():
    w = cf.make_world(3, n_prompts=2, n_responses=3, n_unsafe=1)
    for construction in cf.CONSTRUCTIONS:
        t = cf.pair_table(w, construction)
        assert len(t.prompt) == 2 * 3 * 2  # ordered pairs of distinct responses
        both = {}
        for x, i, j, wt in zip(t.prompt, t.chosen, t.rejected, t.weight, strict=True):
            both[(x, min(i, j), max(i, j))] = both.get((x, min(i, j), max(i, j)), 0) + wt
        if construction == "safebetter":
            assert (t.weight[t.chosen_unsafe] == 0).all()
        else:  # the two orders of an unordered pair share its probability
            np.testing.assert_allclose(sum(both.values()), 1.0)
            np.testing.assert_allclose(list(both.values()), 1 / len(both))
    with pytest.raises(ValueError, match="unknown pair construction"):
        cf.pair_table(w, "nope")


# ----------------------------------------------------------------------------- SACPO
@pytest.fixture(scope="module")
def stage1(world0):
    return cf.train_logits(world0, "helpful", beta=BETA)


def test_sacpo_stage1_is_the_helpful_optimum(world0, stage1):
    m = cf.evaluate_policy(cf.probabilities(stage1), world0)
    assert m["tv_to_unconstrained_optimum"] < 1e-2, m


@pytest.mark.parametrize("beta2", [0.1, 0.025])
def test_sacpo_dpo_stage2_converges_to_pi1_tilted_by_the_harmlessness_reward(world0, stage1, beta2):
    out = cf.train_sacpo(world0, beta2=beta2, stage1_logits=stage1)
    pi_1 = cf.probabilities(stage1)
    m = cf.evaluate_policy(
        cf.probabilities(out.stage2_logits), world0, cf.sacpo_stage2_optimum(pi_1, world0, beta2)
    )
    assert m["tv_to_own_optimum"] < 1e-2, m
    assert m["unsafe_mass"] < 1e-3, m


def test_sacpo_stage2_starts_from_and_is_referenced_to_stage1(world0, stage1):
    pi_1 = cf.probabilities(stage1)
    # Started from pi_1: after no step the stage-2 policy is pi_1.
    start = cf.train_sacpo(world0, beta2=0.5, stage1_logits=stage1, steps=0)
    np.testing.assert_allclose(cf.probabilities(start.stage2_logits), pi_1, atol=1e-6)
    # Referenced to pi_1: with beta2 large enough for the reference to matter, stage 2
    # reaches pi_1 exp(-c / beta2), not pi_ref exp(-c / beta2), which lies far from it.
    beta2 = 0.5
    chained = cf.sacpo_stage2_optimum(pi_1, world0, beta2)
    from_ref = cf.sacpo_stage2_optimum(np.exp(world0.ref_logprobs), world0, beta2)
    assert 0.5 * np.abs(chained - from_ref).sum(-1).mean() > 0.1
    policy = cf.probabilities(
        cf.train_sacpo(world0, beta2=beta2, stage1_logits=stage1).stage2_logits
    )
    assert cf.evaluate_policy(policy, world0, chained)["tv_to_own_optimum"] < 1e-2
    assert cf.evaluate_policy(policy, world0, from_ref)["tv_to_own_optimum"] > 0.1


def test_sacpo_kto_stage2_empties_unsafe_responses(world0, stage1):
    out = cf.train_sacpo(world0, beta2=0.1, stage2="kto", stage1_logits=stage1)
    m = cf.evaluate_policy(cf.probabilities(out.stage2_logits), world0)
    assert m["unsafe_mass"] < 1e-3, m
    # At its start (policy = reference, z0 = 0) every example costs its weight / 2.
    safe = ~world0.unsafe
    w_u = safe.sum() / (~safe).sum()
    pi_1 = cf.log_probabilities(stage1)
    at_start = cf.kto_population_loss(
        jnp.asarray(pi_1), pi_1, safe, beta=0.1, undesirable_weight=w_u
    )
    np.testing.assert_allclose(
        at_start, (safe.sum() * 0.5 + (~safe).sum() * w_u * 0.5) / safe.size, rtol=1e-6
    )
    with pytest.raises(ValueError, match="stage2 must be"):
        cf.train_sacpo(world0, beta2=0.1, stage2="ipo", stage1_logits=stage1)


def test_p_sacpo_merge_of_the_optima_is_sacpo_at_beta2_over_q(world0, stage1):
    helpful = world0.ref_logprobs + world0.reward / BETA
    pi_h = cf.probabilities(helpful)
    for q, beta2 in [(0.25, 0.5), (0.5, 0.1), (0.75, 0.01)]:
        sacpo = np.log(cf.sacpo_stage2_optimum(pi_h, world0, beta2))
        merged = cf.probabilities(cf.merge_logits(helpful, sacpo, q))
        want = cf.p_sacpo_optimum(world0, beta1=BETA, beta2=beta2, q=q)
        np.testing.assert_allclose(merged, want, atol=1e-12)
        np.testing.assert_allclose(
            want, cf.sacpo_stage2_optimum(pi_h, world0, beta2 / q), atol=1e-12
        )
    # Merging trained policies (beta2 where stage 2's logits converge) reaches it too.
    stage2 = cf.train_sacpo(world0, beta2=0.5, stage1_logits=stage1).stage2_logits
    merged = cf.probabilities(cf.merge_logits(stage1, stage2, 0.5))
    want = cf.p_sacpo_optimum(world0, beta1=BETA, beta2=0.5, q=0.5)
    assert cf.evaluate_policy(merged, world0, want)["tv_to_own_optimum"] < 1e-2
    with pytest.raises(ValueError, match="merge weight q"):
        cf.merge_logits(stage1, stage2, 1.5)


def test_p_sacpo_at_the_papers_merge_beta2_reaches_its_closed_form_once_logits_converge(world0):
    # SACPO merges at beta2 = 0.01: stage 2's probabilities converge within 3000 steps but
    # its logits (which the merge adds) need about 20000.
    out = cf.train_sacpo(world0, beta2=0.01, steps=20000)
    for q in (0.25, 0.75):
        merged = cf.probabilities(cf.merge_logits(out.stage1_logits, out.stage2_logits, q))
        want = cf.p_sacpo_optimum(world0, beta1=BETA, beta2=0.01, q=q)
        assert cf.evaluate_policy(merged, world0, want)["tv_to_own_optimum"] < 1e-3


# ----------------------------------------------------------------------------- BFPO
def test_bfpo_optimum_is_stationary_and_training_reaches_it(world0):
    opt = cf.bfpo_optimum(world0, beta=BETA)
    grad = jax.grad(cf.bfpo_population_loss)(
        jnp.asarray(np.log(opt), jnp.float32), world0, beta=BETA
    )
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)
    m = cf.evaluate_policy(cf.probabilities(cf.train_bfpo(world0)), world0, opt)
    assert m["tv_to_own_optimum"] < 1e-3, m
    # BFPO fits finite log-ratio targets: it lowers the unsafe mass but leaves some.
    assert m["unsafe_mass"] > 1e-2, m
    assert m["unsafe_mass"] < cf.evaluate_policy(np.exp(world0.ref_logprobs), world0)["unsafe_mass"]
