"""The proof that the kernel is the paper's: training on the population loss reaches pi*.

A tabular softmax policy trained with Adam on the population SafeDPO loss must converge to
pi*(y|x) proportional to pi_ref(y|x) exp(r(x,y)/beta) on safe responses and 0 on unsafe
ones for every margin (Proposition 4.4); plain DPO on the raw helpfulness pairs must
converge to the unconstrained optimum instead and keep its unsafe mass. Thresholds:
unsafe mass < 1e-3 and total variation < 1e-2 (averaged over prompts).
"""

import numpy as np
import pytest

from safedpo_jax import closed_form as cf


@pytest.fixture(scope="module", params=[0, 1])
def world(request):
    return cf.make_world(request.param, n_prompts=4, n_responses=6, n_unsafe=2, beta=1.0)


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


def test_harmless_order_keeps_some_unsafe_mass_and_loses_reward(world):
    m = cf.evaluate_policy(cf.train_policy(world, "harmless", steps=3000), world)
    safe = cf.evaluate_policy(cf.optimal_policy(world, safe=True), world)
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
