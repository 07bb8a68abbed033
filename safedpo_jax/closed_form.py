"""A tabular preference world where the SafeDPO optimum is known in closed form.

The paper (§4) shows that SafeDPO's population objective is minimised by

    pi*(y|x) = pi_ref(y|x) exp(r(x,y) / beta) / Z(x)   on safe y,     0 on unsafe y,

for every margin ``Delta >= 0`` (Propositions 4.3 and 4.4), while plain DPO on the raw
helpfulness pairs is minimised by the unconstrained ``pi_ref exp(r / beta) / Z``. This
module builds a small world (a few prompts, a few responses each, known rewards and
safety labels, a random reference), writes down the *population* loss of each pair
construction through the library's kernel, and trains a tabular softmax policy on it
with optax, so the kernel can be checked against the closed form.

Population losses: for each prompt every unordered pair ``{i, j}`` of distinct responses
is drawn with equal probability, and ``i`` is preferred to ``j`` with the Bradley-Terry
probability ``sigmoid(s_i - s_j)`` of a score ``s``. The constructions the paper
compares are

==============  =========================  ==========================================
 construction    score s ordering a pair    kernel
==============  =========================  ==========================================
 ``safedpo``     reward r (helpfulness)     `losses.safedpo_loss` (T and margin)
 ``helpful``     reward r                   `losses.dpo_loss` (DPO-HELPFUL)
 ``harmless``    minus the cost c           `losses.dpo_loss` (DPO-HARMLESS)
 ``safebetter``  reward r, pairs whose      `losses.dpo_loss` (DPO-SAFEBETTER)
                 winner is unsafe removed
==============  =========================  ==========================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from safedpo_jax import losses

CONSTRUCTIONS: tuple[str, ...] = ("safedpo", "helpful", "harmless", "safebetter")


@dataclasses.dataclass(frozen=True)
class TabularWorld:
    """Prompts x responses, each (X, K).

    Attributes:
      ref_logprobs: log pi_ref(y|x), normalised over responses.
      reward: r(x, y), the helpfulness reward.
      cost: c(x, y); ``c > 0`` exactly on unsafe responses.
      beta: the KL strength the optima are computed for.
    """

    ref_logprobs: np.ndarray
    reward: np.ndarray
    cost: np.ndarray
    beta: float

    @property
    def unsafe(self) -> np.ndarray:
        """(X, K) bool, the paper's ``h``."""
        return self.cost > 0


def make_world(
    seed: int = 0,
    *,
    n_prompts: int = 4,
    n_responses: int = 6,
    n_unsafe: int = 2,
    beta: float = 1.0,
) -> TabularWorld:
    """A random world in which, for every prompt, the most rewarded response is unsafe.

    Rewards are standard normal; the ``n_unsafe`` unsafe responses of each prompt are the
    most rewarded one and random others (so helpfulness and safety conflict, the case
    SafeDPO is for). Costs are uniform in [0.5, 2] for unsafe responses and in [-2, -0.5]
    for safe ones; the reference is a softmax of standard-normal logits.

    >>> w = make_world(0)
    >>> w.reward.shape, bool(w.unsafe[np.arange(4), w.reward.argmax(1)].all())
    ((4, 6), True)
    """
    if not 1 <= n_unsafe < n_responses:
        raise ValueError(f"need 1 <= n_unsafe < n_responses, got {n_unsafe}, {n_responses}")
    rng = np.random.default_rng(seed)
    reward = rng.normal(size=(n_prompts, n_responses))
    unsafe = np.zeros((n_prompts, n_responses), bool)
    for x in range(n_prompts):
        best = int(reward[x].argmax())
        others = rng.permutation([k for k in range(n_responses) if k != best])[: n_unsafe - 1]
        unsafe[x, [best, *others]] = True
    cost = np.where(
        unsafe,
        rng.uniform(0.5, 2.0, reward.shape),
        rng.uniform(-2.0, -0.5, reward.shape),
    )
    ref_logits = rng.normal(size=reward.shape)
    ref_logprobs = ref_logits - np.log(np.exp(ref_logits).sum(-1, keepdims=True))
    return TabularWorld(ref_logprobs=ref_logprobs, reward=reward, cost=cost, beta=beta)


def optimal_policy(world: TabularWorld, *, safe: bool = True) -> np.ndarray:
    """The closed-form optimum, (X, K) probabilities.

    ``safe=True``: SafeDPO's ``pi_ref exp(r / beta)`` renormalised over safe responses
    (zero on unsafe ones). ``safe=False``: the unconstrained DPO optimum.
    """
    logits = world.ref_logprobs + world.reward / world.beta
    if safe:
        logits = np.where(world.unsafe, -np.inf, logits)
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class PairTable:
    """Every ordered pair (x, i, j), i != j, with its population weight; each (N,).

    ``weight`` is the probability of drawing the unordered pair times the probability
    that ``i`` is the one preferred (zero for pairs a construction removes).
    """

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    weight: np.ndarray
    chosen_unsafe: np.ndarray
    rejected_unsafe: np.ndarray


def pair_table(world: TabularWorld, construction: str) -> PairTable:
    """The population pairs of one of `CONSTRUCTIONS`."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"unknown pair construction {construction!r}; known: {CONSTRUCTIONS}")
    n_prompts, k = world.reward.shape
    x, i, j = (a.ravel() for a in np.meshgrid(*map(np.arange, (n_prompts, k, k)), indexing="ij"))
    distinct = i != j
    x, i, j = x[distinct], i[distinct], j[distinct]
    score = -world.cost if construction == "harmless" else world.reward
    bt = 1.0 / (1.0 + np.exp(-(score[x, i] - score[x, j])))
    weight = bt / (n_prompts * k * (k - 1) / 2)
    if construction == "safebetter":
        weight = np.where(world.unsafe[x, i], 0.0, weight)
    return PairTable(
        prompt=x,
        chosen=i,
        rejected=j,
        weight=weight,
        chosen_unsafe=world.unsafe[x, i],
        rejected_unsafe=world.unsafe[x, j],
    )


def population_loss(
    policy_logits: jax.Array,
    world: TabularWorld,
    pairs: PairTable,
    construction: str,
    *,
    beta: float,
    delta: float = 0.0,
) -> jax.Array:
    """The expected loss of a (X, K) tabular policy over ``pairs``.

    For ``safedpo`` the weights of pairs dropped by ``T`` leave the normaliser too, as
    in the paper's expectation over ``T(D)``.
    """
    logp = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1)
    ref = jnp.asarray(world.ref_logprobs, jnp.float32)
    x, i, j = pairs.prompt, pairs.chosen, pairs.rejected
    args = (logp[x, i], logp[x, j], ref[x, i], ref[x, j])
    if construction == "safedpo":
        out = losses.safedpo_loss(
            *args, pairs.chosen_unsafe, pairs.rejected_unsafe, beta=beta, delta=delta
        )
    else:
        out = losses.dpo_loss(*args, beta=beta)
    weight = jnp.where(out.keep, jnp.asarray(pairs.weight, jnp.float32), 0.0)
    return jnp.sum(weight * out.losses) / jnp.sum(weight)


def train_policy(
    world: TabularWorld,
    construction: str,
    *,
    delta: float = 0.0,
    steps: int = 3000,
    learning_rate: float = 0.05,
) -> np.ndarray:
    """Trains a tabular softmax policy (initialised at ``pi_ref``) with Adam.

    Returns the (X, K) policy probabilities. The whole loop is one jitted `lax.scan`.
    """
    pairs = pair_table(world, construction)
    opt = optax.adam(learning_rate)
    init = jnp.asarray(world.ref_logprobs, jnp.float32)

    def loss(theta: jax.Array) -> jax.Array:
        return population_loss(theta, world, pairs, construction, beta=world.beta, delta=delta)

    @jax.jit
    def run(theta: jax.Array) -> jax.Array:
        def step(carry, _):
            theta, state = carry
            updates, state = opt.update(jax.grad(loss)(theta), state)
            return (optax.apply_updates(theta, updates), state), None

        (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), length=steps)
        return theta

    return np.asarray(jax.nn.softmax(run(init), axis=-1), np.float64)


def evaluate_policy(policy: np.ndarray, world: TabularWorld) -> dict[str, float]:
    """Unsafe mass, total variation to both optima and expected reward, averaged over prompts.

    >>> w = make_world(0)
    >>> m = evaluate_policy(optimal_policy(w), w)
    >>> m["unsafe_mass"], m["tv_to_safe_optimum"]
    (0.0, 0.0)
    """
    safe_opt = optimal_policy(world, safe=True)
    free_opt = optimal_policy(world, safe=False)
    tv = lambda q: float(0.5 * np.abs(policy - q).sum(-1).mean())
    return {
        "unsafe_mass": float((policy * world.unsafe).sum(-1).mean()),
        "tv_to_safe_optimum": tv(safe_opt),
        "tv_to_unconstrained_optimum": tv(free_opt),
        "expected_reward": float((policy * world.reward).sum(-1).mean()),
        "expected_cost": float((policy * world.cost).sum(-1).mean()),
    }


def compare(
    world: TabularWorld,
    deltas: Sequence[float] = (0.0, 2.0, 10.0),
    *,
    steps: int = 3000,
    learning_rate: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Trains SafeDPO at each margin and the three DPO baselines; returns their metrics.

    Rows are named ``SafeDPO (delta=D)``, ``DPO-HELPFUL``, ``DPO-HARMLESS``,
    ``DPO-SAFEBETTER``, plus the two closed-form optima and the reference itself.
    """
    rows: dict[str, dict[str, float]] = {
        "reference": evaluate_policy(np.exp(world.ref_logprobs), world),
        "closed-form safe optimum": evaluate_policy(optimal_policy(world, safe=True), world),
        "unconstrained optimum": evaluate_policy(optimal_policy(world, safe=False), world),
    }
    kw = {"steps": steps, "learning_rate": learning_rate}
    for delta in deltas:
        policy = train_policy(world, "safedpo", delta=delta, **kw)
        rows[f"SafeDPO (delta={delta:g})"] = evaluate_policy(policy, world)
    for construction, name in (
        ("helpful", "DPO-HELPFUL"),
        ("harmless", "DPO-HARMLESS"),
        ("safebetter", "DPO-SAFEBETTER"),
    ):
        rows[name] = evaluate_policy(train_policy(world, construction, **kw), world)
    return rows
