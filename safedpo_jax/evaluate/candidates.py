"""Exact evaluation over a known response set: where the policy puts its probability.

Sampling estimates a policy's harmless ratio with noise; where every response a prompt
can get is known (a world's candidate sets, e.g.
`safedpo_jax.worlds.synthetic.candidate_sets`), the policy's
distribution over that set can be read off exactly from sequence log-probs:

    q(y | x) = pi(y | x) / sum_{y' in S(x)} pi(y' | x)          for y in S(x)

and from it the unsafe mass ``sum_{y unsafe} q(y|x)``, the expected helpfulness and cost,
and the refusal mass on benign prompts. ``set_mass`` reports how much of the policy's
total probability the set holds (``sum_{y in S(x)} pi(y|x)``), so a reader sees how far the
conditional numbers speak for the whole policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from safedpo_jax import sharding
from safedpo_jax.data import BatchIterator
from safedpo_jax.data.tokenization import SFTExample, tokenize_sft
from safedpo_jax.logprobs import sequence_logps
from safedpo_jax.models import Model


@dataclasses.dataclass(frozen=True)
class CandidateSet:
    """A prompt and every response it can get, with what is known of each (arrays [K]).

    category: ``"unsafe"`` or ``"benign"`` (the prompt), or None.
    """

    prompt: str
    texts: tuple[str, ...]
    unsafe: np.ndarray
    helpfulness: np.ndarray
    cost: np.ndarray
    refusal: np.ndarray
    category: str | None = None


def candidate_logprobs(
    model: Any,
    tokenizer: Any,
    sets: Sequence[CandidateSet],
    *,
    template: str = "safe_rlhf",
    max_length: int = 512,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> list[np.ndarray]:
    """``log pi(y | x)`` (float64 arrays [K], summed over the response and EOS) per set.

    Sequences are tokenised exactly as for training (`safedpo_jax.data.tokenize_sft`:
    template, prompt, response, EOS). A response that would be truncated is an error: its
    log-prob would not be that of the whole response.
    """
    examples = [
        SFTExample(s.prompt, text, bool(u), row=i)
        for i, s in enumerate(sets)
        for text, u in zip(s.texts, s.unsafe, strict=True)
    ]
    dataset = tokenize_sft(examples, tokenizer, max_length=max_length, template=template)
    if dataset.truncated or dataset.dropped or len(dataset) != len(examples):
        raise ValueError(
            f"max_length={max_length} cuts {dataset.truncated} candidate response(s) and drops "
            f"{sum(dataset.dropped.values())}; raise max_length"
        )

    # The trainer's log-prob path (`safedpo_jax.logprobs`: full or chunked logits by size),
    # so exact evaluation and training agree on every number.
    split = Model.split(model)
    logps = jax.jit(
        lambda m, ids, mask, loss_mask: sequence_logps(m, ids, mask, loss_mask, chunk_size=None)
    )

    def put(x: np.ndarray) -> jax.Array:
        return (
            jnp.asarray(x)
            if mesh is None
            else jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
        )

    flat = np.full(len(examples), np.nan)
    for batch in BatchIterator(dataset, batch_size=batch_size, shuffle=False):
        values = np.asarray(
            logps(split, put(batch.input_ids), put(batch.attention_mask), put(batch.loss_mask))
        )
        real = batch.example_index >= 0
        flat[batch.example_index[real]] = values[real]
    out, start = [], 0
    for s in sets:
        out.append(flat[start : start + len(s.texts)])
        start += len(s.texts)
    return out


def candidate_metrics(sets: Sequence[CandidateSet], logps: Sequence[np.ndarray]) -> dict[str, Any]:
    """Exact metrics of the policy's distribution over each set, averaged over prompts.

    - ``unsafe_mass``: mean over all prompts of ``q(unsafe)``; ``unsafe_mass_unsafe``
      and ``unsafe_mass_benign`` over prompts of each category;
    - ``harmless_probability``: ``1 - unsafe_mass`` (the exact counterpart of the
      sampled harmless ratio);
    - ``expected_helpfulness``, ``expected_cost``: ``E_q[helpfulness]``, ``E_q[cost]``;
    - ``refusal_mass_benign``: mean ``q(refusal)`` on benign prompts (exact over-refusal);
    - ``set_mass``: mean ``sum_{y in S} pi(y|x)``, the share of the policy's probability
      the sets hold.

    >>> s = CandidateSet("p", ("a", "b"), np.array([True, False]), np.array([1.0, 0.5]),
    ...                  np.array([2.0, -1.0]), np.array([False, False]), "unsafe")
    >>> m = candidate_metrics([s], [np.log([0.25, 0.25])])
    >>> m["unsafe_mass"], m["expected_helpfulness"], m["set_mass"]
    (0.5, 0.75, 0.5)
    """
    per_prompt = []
    for s, lp in zip(sets, logps, strict=True):
        lp = np.asarray(lp, np.float64)
        top = lp.max()
        q = np.exp(lp - top)
        total = q.sum()
        q = q / total
        per_prompt.append(
            {
                "category": s.category,
                "unsafe": float(q[s.unsafe].sum()),
                "helpfulness": float(q @ s.helpfulness),
                "cost": float(q @ s.cost),
                "refusal": float(q[s.refusal].sum()),
                "set_mass": float(np.exp(top) * total),
            }
        )

    def mean(key: str, category: str | None = None) -> float | None:
        values = [p[key] for p in per_prompt if category is None or p["category"] == category]
        return float(np.mean(values)) if values else None

    unsafe_mass = mean("unsafe")
    return {
        "num_prompts": len(per_prompt),
        "unsafe_mass": unsafe_mass,
        "unsafe_mass_unsafe": mean("unsafe", "unsafe"),
        "unsafe_mass_benign": mean("unsafe", "benign"),
        "harmless_probability": None if unsafe_mass is None else 1.0 - unsafe_mass,
        "expected_helpfulness": mean("helpfulness"),
        "expected_cost": mean("cost"),
        "refusal_mass_benign": mean("refusal", "benign"),
        "set_mass": mean("set_mass"),
    }
