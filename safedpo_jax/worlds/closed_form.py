"""A tabular preference world where SafeDPO's and its baselines' optima are known.

The paper (§4) shows that SafeDPO's population objective is minimised by

    pi*(y|x) = pi_ref(y|x) exp(r(x,y) / beta) / Z(x)   on safe y,     0 on unsafe y,

for every margin ``Delta >= 0`` (Propositions 4.3 and 4.4), while plain DPO on the raw
helpfulness pairs is minimised by the unconstrained ``pi_ref exp(r / beta) / Z``. This
module builds a small world (a few prompts, a few responses each, known rewards, costs and
safety labels, a random reference), writes down the *population* loss of each method
through the library's kernels, and trains a tabular softmax policy (free logits) on it
with optax, so each kernel can be checked against its closed form.

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

and the other safety methods, with their population optima where they have one:

- SACPO (Wachi et al. 2024), two chained stages. Stage 1: DPO on the ``helpful`` pairs
  from and referenced to ``pi_ref`` (``beta1``), optimum
  ``pi_1 = pi_ref exp(r / beta1) / Z``. Stage 2 from and referenced to the stage-1 policy
  ``pi_1`` *as trained* (``beta2``): DPO on the ``harmless`` pairs, whose Bradley-Terry
  score is ``-c``, optimum ``pi_1 exp(-c / beta2) / Z`` (`sacpo_stage2_optimum`); or KTO
  on the safety labels (`kto_population_loss`; no closed form: the reference point is a
  non-smooth function of the policy).
- P-SACPO: the linear merge ``(1 - q) theta_helpful + q theta_sacpo`` of the two
  policies' logits (`merge_logits`). Merging the two optima gives
  ``pi_ref exp(r / beta1 - q c / beta2) / Z`` (`p_sacpo_optimum`): SACPO at ``beta2 / q``.
- BFPO (Zhang et al. 2025): the squared loss of `losses.bfpo_loss` on the ``helpful``
  pairs. It is a weighted least-squares problem in the log-ratios, solved exactly per
  prompt by `bfpo_optimum`; unlike SafeDPO it leaves finite mass on unsafe responses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from safedpo_jax import losses

CONSTRUCTIONS: tuple[str, ...] = ("safedpo", "helpful", "harmless", "safebetter")

#: A kernel with `losses.safedpo_loss`'s signature, returning an object with per-pair
#: ``losses`` and ``keep`` (a `losses.PreferenceOutput`).
Kernel = Callable[..., losses.PreferenceOutput]


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
    beta: float = 0.5,
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


def softmax_tilt(
    log_base: np.ndarray, score: np.ndarray, beta: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """``base exp(score / beta)`` renormalised per prompt (zero where ``exclude``), (X, K).

    The Gibbs / DPO optimum of a KL-regularised objective with reward ``score``.

    >>> softmax_tilt(np.log([[0.5, 0.5]]), np.array([[np.log(3.0), 0.0]]), 1.0).round(6)
    array([[0.75, 0.25]])
    """
    logits = np.asarray(log_base, np.float64) + np.asarray(score, np.float64) / beta
    if exclude is not None:
        logits = np.where(exclude, -np.inf, logits)
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def optimal_policy(world: TabularWorld, *, safe: bool = True) -> np.ndarray:
    """The closed-form optimum, (X, K) probabilities.

    ``safe=True``: SafeDPO's ``pi_ref exp(r / beta)`` renormalised over safe responses
    (zero on unsafe ones). ``safe=False``: the unconstrained DPO optimum.
    """
    return softmax_tilt(
        world.ref_logprobs, world.reward, world.beta, world.unsafe if safe else None
    )


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
    reference: np.ndarray | None = None,
    kernel: Kernel | None = None,
) -> jax.Array:
    """The expected loss of a (X, K) tabular policy over ``pairs``.

    For ``safedpo`` the weights of pairs dropped by ``T`` leave the normaliser too, as
    in the paper's expectation over ``T(D)``. ``reference`` is the (X, K) reference
    log-probs (default ``world.ref_logprobs``). ``kernel`` replaces `losses.safedpo_loss`
    for the ``safedpo`` construction (same signature; the tests pass deliberately wrong
    kernels through it); the other constructions use `losses.dpo_loss`.
    """
    logp = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1)
    ref = jnp.asarray(world.ref_logprobs if reference is None else reference, jnp.float32)
    x, i, j = pairs.prompt, pairs.chosen, pairs.rejected
    args = (logp[x, i], logp[x, j], ref[x, i], ref[x, j])
    if construction == "safedpo":
        kernel = losses.safedpo_loss if kernel is None else kernel
        out = kernel(*args, pairs.chosen_unsafe, pairs.rejected_unsafe, beta=beta, delta=delta)
    else:
        out = losses.dpo_loss(*args, beta=beta)
    weight = jnp.where(out.keep, jnp.asarray(pairs.weight, jnp.float32), 0.0)
    return jnp.sum(weight * out.losses) / jnp.sum(weight)


def fit_logits(
    loss: Callable[[jax.Array], jax.Array],
    init_logits: np.ndarray,
    *,
    steps: int = 3000,
    learning_rate: float = 0.05,
) -> np.ndarray:
    """Minimises ``loss`` over free (X, K) logits with Adam, from ``init_logits``.

    The whole loop is one jitted `lax.scan`; returns the final logits (float64 copy).
    """
    opt = optax.adam(learning_rate)

    @jax.jit
    def run(theta: jax.Array) -> jax.Array:
        def step(carry, _):
            theta, state = carry
            updates, state = opt.update(jax.grad(loss)(theta), state)
            return (optax.apply_updates(theta, updates), state), None

        (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), length=steps)
        return theta

    return np.asarray(run(jnp.asarray(init_logits, jnp.float32)), np.float64)


def train_logits(
    world: TabularWorld,
    construction: str,
    *,
    delta: float = 0.0,
    steps: int = 3000,
    learning_rate: float = 0.05,
    beta: float | None = None,
    reference: np.ndarray | None = None,
    kernel: Kernel | None = None,
) -> np.ndarray:
    """Trains a tabular policy on one construction's population loss; returns its logits.

    The policy starts *at* its reference (``reference``, log-probs, default ``pi_ref``),
    as every stage of these methods does; ``beta`` defaults to ``world.beta``.
    """
    pairs = pair_table(world, construction)
    beta = world.beta if beta is None else beta
    ref = world.ref_logprobs if reference is None else np.asarray(reference)

    def loss(theta: jax.Array) -> jax.Array:
        return population_loss(
            theta,
            world,
            pairs,
            construction,
            beta=beta,
            delta=delta,
            reference=ref,
            kernel=kernel,
        )

    return fit_logits(loss, ref, steps=steps, learning_rate=learning_rate)


def train_policy(
    world: TabularWorld,
    construction: str,
    *,
    delta: float = 0.0,
    steps: int = 3000,
    learning_rate: float = 0.05,
    beta: float | None = None,
    reference: np.ndarray | None = None,
    kernel: Kernel | None = None,
) -> np.ndarray:
    """`train_logits`, returned as (X, K) probabilities."""
    logits = train_logits(
        world,
        construction,
        delta=delta,
        steps=steps,
        learning_rate=learning_rate,
        beta=beta,
        reference=reference,
        kernel=kernel,
    )
    return probabilities(logits)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over responses, in float64.

    >>> probabilities(np.log([[1.0, 3.0]]))
    array([[0.25, 0.75]])
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def log_probabilities(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over responses, in float64 (a reference for the next stage)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# --------------------------------------------------------------------------------------
# SACPO and P-SACPO
# --------------------------------------------------------------------------------------


def sacpo_stage2_optimum(
    stage1_policy: np.ndarray, world: TabularWorld, beta2: float
) -> np.ndarray:
    """Stage 2 DPO's optimum on the ``harmless`` pairs: ``pi_1 exp(-c / beta2) / Z``.

    The harmless pairs are ordered with Bradley-Terry probability ``sigmoid(c_j - c_i)``,
    so their implied reward is ``-c`` (up to a per-prompt constant that ``Z`` absorbs),
    and DPO referenced to ``pi_1`` is minimised by ``pi_1`` tilted by it.

    >>> w = make_world(0)
    >>> p = sacpo_stage2_optimum(np.exp(w.ref_logprobs), w, 1e-3)
    >>> bool((p.argmax(-1) == w.cost.argmin(-1)).all())  # small beta2: least harmful only
    True
    """
    return softmax_tilt(np.log(stage1_policy), -world.cost, beta2)


def kto_population_loss(
    policy_logits: jax.Array,
    reference: np.ndarray,
    desirable: np.ndarray,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> jax.Array:
    """KTO's expected loss (`losses.kto_loss`) with every (prompt, response) equally likely.

    Responses are drawn uniformly per prompt (as the pairs draw them); the reference point
    is KTO's ``max(0, mean log-ratio)`` over mismatched completions, which in this world
    (response slots shared by all prompts, drawn uniformly) is the mean log-ratio over
    all (prompt, response) cells, with no gradient. The batch loss is the plain mean, as
    in TRL.
    """
    logp = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1).ravel()
    ref = jnp.asarray(reference, jnp.float32).ravel()
    out = losses.kto_loss(
        logp,
        ref,
        jnp.asarray(desirable).ravel(),
        logp,
        ref,
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    return jnp.mean(out.losses)


@dataclasses.dataclass(frozen=True)
class SACPOResult:
    """Logits of SACPO's two stages, each (X, K): stage 2 started from and referenced to stage 1."""

    stage1_logits: np.ndarray
    stage2_logits: np.ndarray


def train_sacpo(
    world: TabularWorld,
    *,
    beta2: float,
    beta1: float | None = None,
    stage2: str = "dpo",
    steps: int = 3000,
    learning_rate: float = 0.05,
    stage1_logits: np.ndarray | None = None,
) -> SACPOResult:
    """SACPO: stage 1 DPO on helpfulness from ``pi_ref``, stage 2 from the stage-1 policy.

    Args:
      beta1: stage 1's beta (default ``world.beta``). beta2: stage 2's.
      stage2: ``"dpo"`` (the ``harmless`` pairs) or ``"kto"`` (safety labels, desirable =
        safe, desirable weight 1 and undesirable ``n_safe / n_unsafe`` as in SACPO).
      stage1_logits: reuse a trained stage 1 (e.g. across a sweep of ``beta2``).
    """
    if stage2 not in ("dpo", "kto"):
        raise ValueError(f"stage2 must be 'dpo' or 'kto', got {stage2!r}")
    kw = {"steps": steps, "learning_rate": learning_rate}
    if stage1_logits is None:
        stage1_logits = train_logits(world, "helpful", beta=beta1, **kw)
    pi_1 = log_probabilities(stage1_logits)
    if stage2 == "dpo":
        theta = train_logits(world, "harmless", beta=beta2, reference=pi_1, **kw)
    else:
        safe = ~world.unsafe
        w_u = losses.kto_undesirable_weight(int(safe.sum()), int((~safe).sum()))

        def loss(theta: jax.Array) -> jax.Array:
            return kto_population_loss(theta, pi_1, safe, beta=beta2, undesirable_weight=w_u)

        theta = fit_logits(loss, pi_1, **kw)
    return SACPOResult(stage1_logits=np.asarray(stage1_logits), stage2_logits=theta)


def merge_logits(helpful_logits: np.ndarray, sacpo_logits: np.ndarray, q: float) -> np.ndarray:
    """P-SACPO's linear merge ``(1 - q) theta_helpful + q theta_sacpo`` of two tabular policies.

    >>> merge_logits(np.zeros((1, 2)), np.array([[2.0, 0.0]]), 0.25)
    array([[0.5, 0. ]])
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"the merge weight q must be in [0, 1], got {q}")
    return (1.0 - q) * np.asarray(helpful_logits) + q * np.asarray(sacpo_logits)


def p_sacpo_optimum(world: TabularWorld, *, beta1: float, beta2: float, q: float) -> np.ndarray:
    """The merge of the two stages' optima: ``pi_ref exp(r / beta1 - q c / beta2) / Z``.

    The helpful optimum's logits are ``log pi_ref + r / beta1`` and SACPO's add
    ``-c / beta2`` (each up to a per-prompt constant, which a softmax ignores), so their
    ``q``-merge is SACPO with ``beta2 / q``.
    """
    helpful = np.asarray(world.ref_logprobs) + world.reward / beta1
    return softmax_tilt(helpful, -q * world.cost, beta2)


# --------------------------------------------------------------------------------------
# BFPO
# --------------------------------------------------------------------------------------


def bfpo_population_loss(
    policy_logits: jax.Array,
    world: TabularWorld,
    *,
    beta: float,
    b1: float = 3.0,
    alpha: float = 0.5,
) -> jax.Array:
    """BFPO's expected loss over the ``helpful`` pairs (helpfulness order, both labels)."""
    pairs = pair_table(world, "helpful")
    logp = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1)
    ref = jnp.asarray(world.ref_logprobs, jnp.float32)
    x, i, j = pairs.prompt, pairs.chosen, pairs.rejected
    out = losses.bfpo_loss(
        logp[x, i],
        logp[x, j],
        ref[x, i],
        ref[x, j],
        pairs.chosen_unsafe,
        pairs.rejected_unsafe,
        beta=beta,
        b1=b1,
        alpha=alpha,
    )
    weight = jnp.asarray(pairs.weight, jnp.float32)
    return jnp.sum(weight * out.losses) / jnp.sum(weight)


def bfpo_optimum(
    world: TabularWorld, *, beta: float, b1: float = 3.0, alpha: float = 0.5
) -> np.ndarray:
    """The exact minimiser of `bfpo_population_loss` over tabular policies, (X, K).

    With log-ratios ``l = log pi - log pi_ref`` (free up to a per-prompt constant) the
    loss is ``sum_{i != j} w_ij (l_i - l_j - tau_ij)^2``, a weighted least-squares problem
    in ``l`` per prompt; its minimum-norm solution gives ``pi = pi_ref exp(l) / Z``.
    """
    pairs = pair_table(world, "helpful")
    tau = (
        np.asarray(
            losses.bfpo_target(pairs.chosen_unsafe, pairs.rejected_unsafe, b1=b1, alpha=alpha),
            np.float64,
        )
        / beta
    )
    n_prompts, k = world.reward.shape
    log_ratio = np.zeros((n_prompts, k))
    for x in range(n_prompts):
        sel = pairs.prompt == x
        root_w = np.sqrt(pairs.weight[sel])
        design = np.zeros((int(sel.sum()), k))
        rows = np.arange(len(design))
        design[rows, pairs.chosen[sel]] = root_w
        design[rows, pairs.rejected[sel]] = -root_w
        log_ratio[x] = np.linalg.lstsq(design, root_w * tau[sel], rcond=None)[0]
    return softmax_tilt(world.ref_logprobs, log_ratio, 1.0)


def train_bfpo(
    world: TabularWorld,
    *,
    beta: float | None = None,
    steps: int = 3000,
    learning_rate: float = 0.05,
) -> np.ndarray:
    """Trains a tabular policy (from ``pi_ref``) on BFPO's population loss; returns logits."""
    beta = world.beta if beta is None else beta
    return fit_logits(
        lambda theta: bfpo_population_loss(theta, world, beta=beta),
        world.ref_logprobs,
        steps=steps,
        learning_rate=learning_rate,
    )


# --------------------------------------------------------------------------------------
# Evaluation and comparison tables
# --------------------------------------------------------------------------------------


def evaluate_policy(
    policy: np.ndarray, world: TabularWorld, own_optimum: np.ndarray | None = None
) -> dict[str, float]:
    """Unsafe mass, total variation to the optima and expected reward, averaged over prompts.

    ``tv_to_own_optimum`` is the TV to ``own_optimum`` (the method's own closed form), NaN
    when none is given.

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
        "tv_to_own_optimum": float("nan") if own_optimum is None else tv(own_optimum),
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
    ``DPO-SAFEBETTER``, plus the two closed-form optima and the reference itself; each
    method's ``tv_to_own_optimum`` is to its own population optimum.
    """
    safe_opt = optimal_policy(world, safe=True)
    free_opt = optimal_policy(world, safe=False)
    rows: dict[str, dict[str, float]] = {
        "reference": evaluate_policy(np.exp(world.ref_logprobs), world),
        "closed-form safe optimum": evaluate_policy(safe_opt, world, safe_opt),
        "unconstrained optimum": evaluate_policy(free_opt, world, free_opt),
    }
    kw = {"steps": steps, "learning_rate": learning_rate}
    for delta in deltas:
        policy = train_policy(world, "safedpo", delta=delta, **kw)
        rows[f"SafeDPO (delta={delta:g})"] = evaluate_policy(policy, world, safe_opt)
    harmless_opt = softmax_tilt(world.ref_logprobs, -world.cost, world.beta)
    for construction, name, own in (
        ("helpful", "DPO-HELPFUL", free_opt),
        ("harmless", "DPO-HARMLESS", harmless_opt),
        ("safebetter", "DPO-SAFEBETTER", safe_opt),
    ):
        rows[name] = evaluate_policy(train_policy(world, construction, **kw), world, own)
    return rows


def compare_methods(
    world: TabularWorld,
    beta2s: Sequence[float] = (0.1, 0.05, 0.025, 0.01),
    qs: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    merge_beta2: float = 0.01,
    steps: int = 3000,
    learning_rate: float = 0.05,
) -> dict[str, dict[str, float]]:
    """SACPO (DPO and KTO stage 2, each ``beta2``), P-SACPO (each ``q``) and BFPO.

    Stage 1 and BFPO use ``world.beta``; P-SACPO merges the stage-1 policy with SACPO's
    DPO stage 2 at ``merge_beta2`` (SACPO's merges use 0.01). Rows as in `compare`, with
    ``tv_to_own_optimum`` to the method's closed form (NaN for KTO, which has none here).
    """
    kw = {"steps": steps, "learning_rate": learning_rate}
    beta1 = world.beta
    stage1 = train_logits(world, "helpful", beta=beta1, **kw)
    pi_1 = probabilities(stage1)
    rows = {
        f"SACPO stage 1 (DPO-HELPFUL, beta={beta1:g})": evaluate_policy(
            pi_1, world, optimal_policy(world, safe=False)
        )
    }
    stage2 = {}
    for beta2 in sorted({*beta2s, merge_beta2}, reverse=True):
        for kind in ("dpo", "kto"):
            out = train_sacpo(world, beta2=beta2, stage2=kind, stage1_logits=stage1, **kw)
            own = sacpo_stage2_optimum(pi_1, world, beta2) if kind == "dpo" else None
            if kind == "dpo":
                stage2[beta2] = out.stage2_logits
            if beta2 in beta2s:
                name = f"SACPO ({kind.upper()} stage 2, beta2={beta2:g})"
                rows[name] = evaluate_policy(probabilities(out.stage2_logits), world, own)
    for q in qs:
        merged = probabilities(merge_logits(stage1, stage2[merge_beta2], q))
        own = p_sacpo_optimum(world, beta1=beta1, beta2=merge_beta2, q=q)
        rows[f"P-SACPO (q={q:g}, beta2={merge_beta2:g})"] = evaluate_policy(merged, world, own)
    bfpo = probabilities(train_bfpo(world, **kw))
    rows[f"BFPO (beta={world.beta:g})"] = evaluate_policy(
        bfpo, world, bfpo_optimum(world, beta=world.beta)
    )
    return rows
