"""Scorers: anything that maps (prompts, responses) to one float score per response.

A `Scorer` is a callable ``(prompts: Sequence[str], responses: Sequence[str]) ->
np.ndarray`` of float64 scores, one per pair; prompts are raw (not templated). Three
kinds plug in:

- `ModelScorer`: a score model (``safedpo_jax.models.ScoreModel``, e.g. the
  beaver-7b-unified reward or cost model) with its tokenizer. It scores the text
  ``template.format(prompt=prompt) + response + EOS``, exactly how safe-rlhf trained
  those models, at the last real token.
- `function_scorer`: a plain Python function ``(prompt, response) -> float``.
- `oracle_scorers`: a reward and a cost scorer from one programmatic oracle returning an
  object with ``helpfulness`` and ``cost`` (the synthetic world's ``oracle``).

>>> length = function_scorer(lambda prompt, response: len(response.split()))
>>> length(["q1", "q2"], ["a b c", "d"])
array([3., 1.])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from safedpo_jax import sharding
from safedpo_jax.data.batches import default_bucket_lengths
from safedpo_jax.data.tokenization import SAFE_RLHF_TEMPLATE  # the one template (re-exported)

__all__ = [
    "SAFE_RLHF_TEMPLATE",
    "ModelScorer",
    "Scorer",
    "check_scores",
    "check_vocabulary",
    "function_scorer",
    "ORACLES",
    "Oracle",
    "oracle_scorers",
    "resolve_oracle",
]


def check_vocabulary(model: Any, tokenizer: Any, *, where: str = "the model") -> None:
    """ValueError when the tokenizer has more tokens than the model has embeddings.

    Token ids at or above the model's ``vocab_size`` have no embedding row: on an
    accelerator such lookups are clamped or read garbage instead of failing, so generations
    silently come out empty or wrong. The trainer's `build_model` checks the same.
    """
    vocab = int(model.config.vocab_size)
    if vocab < len(tokenizer):
        raise ValueError(
            f"{where}: the model's vocabulary ({vocab} tokens) is smaller than the "
            f"tokenizer's ({len(tokenizer)} tokens); use the tokenizer the model was trained "
            "with (--tokenizer)"
        )


# The safe-rlhf prompt template the beaver score models were trained with (no space
# between "ASSISTANT:" and the response).


class Scorer(Protocol):
    """``(prompts, responses) -> float scores [N]``."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


def check_scores(scores: Any, n: int, what: str = "scorer") -> np.ndarray:
    """``scores`` as a float64 array of shape [n]; ValueError when not finite or mis-sized.

    >>> check_scores([1, 2], 2)
    array([1., 2.])
    """
    a = np.asarray(scores, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{what} returned scores of shape {a.shape}, expected ({n},)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} returned non-finite scores at {np.flatnonzero(~np.isfinite(a))}")
    return a


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


def function_scorer(fn: Callable[[str, str], float]) -> Scorer:
    """A `Scorer` from a per-pair function ``fn(prompt, response) -> float``."""

    def score(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_pairs(prompts, responses)
        return check_scores(
            [float(fn(p, r)) for p, r in zip(prompts, responses, strict=True)],
            len(prompts),
            getattr(fn, "__name__", "function scorer"),
        )

    return score


def oracle_scorers(
    oracle: Callable[[str, str], Any], *, reward: str = "helpfulness", cost: str = "cost"
) -> tuple[Scorer, Scorer]:
    """(reward scorer, cost scorer) reading attributes ``reward`` and ``cost`` of
    ``oracle(prompt, response)``.

    >>> from types import SimpleNamespace
    >>> toy = lambda p, r: SimpleNamespace(helpfulness=len(r), cost=1.0 if "!" in r else -1.0)
    >>> r, c = oracle_scorers(toy)
    >>> r(["q"], ["hi!"]), c(["q"], ["hi!"])
    (array([3.]), array([1.]))
    """
    return (
        function_scorer(lambda p, r: getattr(oracle(p, r), reward)),
        function_scorer(lambda p, r: getattr(oracle(p, r), cost)),
    )


@dataclasses.dataclass(frozen=True)
class Oracle:
    """A world's exact judge, handed to the evaluation as a value (the evaluation never
    imports a world).

    name: how reports and errors call it.
    score: ``(prompt, response) -> object`` with ``helpfulness`` and ``cost`` attributes
      (cost > 0 means unsafe), what the reward and cost models stand in for.
    is_harmful: ``prompt -> bool``; raises ValueError for a prompt outside the world.

    >>> from types import SimpleNamespace
    >>> def harmful(p):
    ...     if not p.endswith("?"):
    ...         raise ValueError("not a question")
    ...     return "steal" in p
    >>> toy = Oracle("toy", lambda p, r: SimpleNamespace(helpfulness=1.0, cost=-1.0), harmful)
    >>> toy.category("how do i steal ?"), toy.category("hello")
    ('unsafe', None)
    """

    name: str
    score: Callable[[str, str], Any]
    is_harmful: Callable[[str], bool]

    def scorers(self) -> tuple[Scorer, Scorer]:
        """(reward scorer, cost scorer), `oracle_scorers` of ``score``."""
        return oracle_scorers(self.score)

    def category(self, prompt: str) -> str | None:
        """``"unsafe"`` / ``"benign"`` for a prompt of the world, None for any other."""
        try:
            return "unsafe" if self.is_harmful(prompt) else "benign"
        except ValueError:
            return None

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """ValueError naming the prompts this oracle cannot judge (before any generation)."""
        bad = [f"{i} {p[:60]!r}" for i, p in enumerate(prompts) if self.category(p) is None]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ValueError(
                f"--oracle {self.name} scores only prompts of its world, but {len(bad)} of "
                f"{len(prompts)} prompts are not: {'; '.join(bad[:3])}{more}"
            )


# Oracles by name, as ``module:attribute`` (imported when asked for, so the evaluation
# itself depends on no world).
ORACLES: dict[str, str] = {"synthetic": "safedpo_jax.worlds.synthetic:ORACLE"}


def resolve_oracle(name: str) -> Oracle:
    """The `Oracle` called ``name`` in `ORACLES`, or at ``module:attribute``."""
    target = ORACLES.get(name, name)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"unknown oracle {name!r}; known: {sorted(ORACLES)} or module:attr")
    import importlib

    oracle = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(oracle, Oracle):
        raise ValueError(f"{target} is not an Oracle")
    return oracle


def jit_forward(model: Any) -> Callable[..., Any]:
    """A jitted ``(input_ids, attention_mask) -> output`` for an NNX model (split/merge),
    or the callable itself when it is not an `nnx.Module`."""
    if not isinstance(model, nnx.Module):
        return model
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(input_ids, attention_mask)

    return lambda input_ids, attention_mask: forward(state, input_ids, attention_mask)


@dataclasses.dataclass
class ModelScorer:
    """A score model with its tokenizer, as a `Scorer`.

    Each pair becomes ``template.format(prompt=prompt) + response`` tokenized with the
    tokenizer's special tokens (BOS for Llama), then EOS appended when ``append_eos``
    (safe-rlhf's training format); sequences longer than ``max_length`` keep their first
    ``max_length - 1`` tokens and their last one (the EOS). Batches of ``batch_size`` rows
    are RIGHT-padded to a length bucket (`safedpo_jax.data.default_bucket_lengths`), so
    the jitted forward compiles a few times, and on a ``mesh`` placed with the batch over
    ``("data", "fsdp")``.

    Attributes:
      model: ``model(input_ids int32 [B, T], attention_mask int32 [B, T]) -> float [B]``,
        the score at the last real token (a ``ScoreModel``, or any such callable).
      tokenizer: a Hugging Face tokenizer (``__call__``, ``eos_token_id``, ``pad_token_id``).
      template: the prompt template with a ``{prompt}`` field.
      batch_size: rows per forward (a multiple of the mesh's data x fsdp size).
      max_length: the longest sequence scored.
      append_eos: append the tokenizer's EOS to each sequence.
      mesh: a `safedpo_jax.sharding` mesh, or None for the default device.
    """

    model: Any
    tokenizer: Any
    template: str = SAFE_RLHF_TEMPLATE
    batch_size: int = 8
    max_length: int = 512
    append_eos: bool = True
    mesh: Mesh | None = None

    def __post_init__(self) -> None:
        self._forward = jit_forward(self.model)
        if self.mesh is not None:
            shards = math.prod(self.mesh.shape[a] for a in ("data", "fsdp"))
            if self.batch_size % shards:
                raise ValueError(
                    f"batch_size {self.batch_size} is not a multiple of the mesh's "
                    f"data x fsdp size {shards}"
                )

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        tokenizer: str | Any | None = None,
        dtype: Any = jnp.float32,
        mesh: Mesh | None = None,
        **kwargs: Any,
    ) -> ModelScorer:
        """Loads a score model directory (``safedpo_jax.models.from_pretrained``) and its
        tokenizer (from ``tokenizer``, a path or a tokenizer object; default ``path``)."""
        from safedpo_jax.models import ScoreModel, from_pretrained

        model = from_pretrained(path, dtype=dtype, mesh=mesh)
        if not isinstance(model, ScoreModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a score model")
        if tokenizer is None or isinstance(tokenizer, str):
            from safedpo_jax.data import load_tokenizer

            tokenizer = load_tokenizer(tokenizer or path)
        check_vocabulary(model, tokenizer, where=str(path))
        return cls(model, tokenizer, mesh=mesh, **kwargs)

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """The token ids scored for each pair (see the class docstring)."""
        _check_pairs(prompts, responses)
        texts = [
            self.template.format(prompt=p) + r for p, r in zip(prompts, responses, strict=True)
        ]
        eos = self.tokenizer.eos_token_id
        out = []
        for ids in self.tokenizer(texts)["input_ids"]:
            ids = list(ids)
            if self.append_eos and (not ids or ids[-1] != eos):
                ids.append(eos)
            if len(ids) > self.max_length:
                ids = ids[: self.max_length - 1] + [ids[-1]]
            out.append(ids)
        return out

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        seqs = self.tokenize(prompts, responses)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        buckets = default_bucket_lengths(self.max_length)
        scores = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start : start + self.batch_size]
            rows = chunk + [chunk[0]] * (self.batch_size - len(chunk))  # fill: repeat a row
            length = next(b for b in buckets if b >= max(len(s) for s in rows))
            ids = np.full((self.batch_size, length), pad, np.int32)
            mask = np.zeros((self.batch_size, length), np.int32)
            for i, s in enumerate(rows):
                ids[i, : len(s)], mask[i, : len(s)] = s, 1
            if self.mesh is not None:
                ids, mask = jax.device_put((ids, mask), sharding.batch_sharding(self.mesh, 2))
            out = np.asarray(jax.device_get(self._forward(ids, mask)), np.float64)
            if out.shape != (self.batch_size,):
                raise ValueError(
                    f"the score model returned shape {out.shape} for {self.batch_size} "
                    "sequences; a scorer needs one score per sequence (score_dim 1)"
                )
            scores.append(out[: len(chunk)])
        return check_scores(np.concatenate(scores) if scores else np.zeros(0), len(seqs))
