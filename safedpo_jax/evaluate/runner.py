"""One run end to end: prompts -> generations -> scores -> `ScoredResponse` records.

- `load_prompts`: a prompt set as `Prompt`s (text, category, subset).
- `generate_responses`: batched, length-sorted, bucketed generation with a progress bar.
- `score_texts`: a `Scorer` over many pairs in chunks, with a progress bar.
- `assemble`: generations + reward and cost scores + refusal labels -> records.
- `evaluate_run`: all of the above for one model; `report.write_report` then writes the
  tables, plot and failure cases for several runs.

Prompt sources (`load_prompts`):

- a ``.txt`` file: one prompt per line;
- a ``.jsonl`` / ``.json`` / ``.csv`` file of records with a ``prompt`` field and no
  ``response_0`` (a plain prompt list, e.g. XSTest): the optional ``category`` field
  (``unsafe`` / ``benign``) or XSTest's ``label`` (``unsafe`` / ``safe``) gives the category;
- anything else goes to `safedpo_jax.data.load_rows` (``"sample"``, PKU-SafeRLHF-style
  files and directories, Hub names): its distinct prompts, in first-seen order.

Without a category field, a prompt gets ``unsafe`` / ``benign`` from the world's `Oracle`
when one is given (``oracle=``, e.g. the synthetic world's for the ``"sample"`` source);
other prompts stay uncategorised.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from safedpo_jax.evaluate.generation import decode, generate
from safedpo_jax.evaluate.metrics import BENIGN, MAIN, UNSAFE, Category, ScoredResponse
from safedpo_jax.evaluate.refusal import DEFAULT_MATCHER, RefusalMatcher
from safedpo_jax.evaluate.scoring import Oracle, Scorer, check_scores, check_vocabulary

__all__ = [
    "Generation",
    "Prompt",
    "assemble",
    "evaluate_run",
    "generate_responses",
    "load_prompts",
    "score_texts",
]

_CATEGORY_NAMES: dict[str, Category] = {
    "unsafe": UNSAFE,
    "harmful": UNSAFE,
    "benign": BENIGN,
    "safe": BENIGN,
}


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt to evaluate: raw text, ``"unsafe"`` / ``"benign"`` / None, its subset."""

    text: str
    category: Category | None = None
    subset: str = MAIN


@dataclasses.dataclass(frozen=True)
class Generation:
    """One generated response: its prompt, decoded text, tokens (EOS included), EOS hit."""

    prompt: Prompt
    response: str
    num_tokens: int
    finished: bool


def _category(value: Any) -> Category | None:
    if value is None or value == "":
        return None
    key = str(value).strip().lower()
    if key not in _CATEGORY_NAMES:
        raise ValueError(f"unknown prompt category {value!r}; use one of {sorted(_CATEGORY_NAMES)}")
    return _CATEGORY_NAMES[key]


def _read_records(path: Path) -> list[dict[str, Any]] | None:
    """Records of a plain prompt file, or None when it is a preference-row file."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            records = list(csv.DictReader(f))
    elif path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        data = json.loads(path.read_text())
        records = data if isinstance(data, list) else None
    if not records or not isinstance(records[0], dict) or "response_0" in records[0]:
        return None
    if "prompt" not in records[0]:
        raise ValueError(f"{path}: prompt records need a 'prompt' field, got {sorted(records[0])}")
    return records


def load_prompts(
    source: str | Path,
    *,
    split: str = "test",
    subset: str = MAIN,
    limit: int | None = None,
    category: Category | None = None,
    oracle: Oracle | None = None,
) -> list[Prompt]:
    """The prompts of ``source`` (see the module docstring), the first ``limit`` of them.

    ``category`` forces one category on every prompt (``"benign"`` for an over-refusal
    set); ``oracle`` (a world's `Oracle`) labels the prompts that carry no category.
    """
    path = Path(str(source)).expanduser()
    records = None
    if path.is_file() and path.suffix == ".txt":
        records = [{"prompt": line} for line in path.read_text().splitlines() if line.strip()]
    elif path.is_file() and path.suffix in (".jsonl", ".json", ".csv"):
        records = _read_records(path)
    if records is None:
        from safedpo_jax.data import load_rows

        raw = load_rows(str(source), split=split)
        texts = [p for t in raw.tables for p in t.columns.get("prompt", [])]
        records = [{"prompt": p} for p in dict.fromkeys(texts) if isinstance(p, str) and p.strip()]
    prompts = []
    for r in records[:limit]:
        text = str(r["prompt"])
        cat = category or _category(r.get("category", r.get("label")))
        if cat is None and oracle is not None:
            cat = oracle.category(text)
        prompts.append(Prompt(text, cat, subset))
    if not prompts:
        raise ValueError(f"{source} (split {split!r}) holds no prompts")
    return prompts


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    template: str = "safe_rlhf",
    max_prompt_length: int | None = None,
    mesh: Mesh | None = None,
    progress: bool | str = False,
) -> list[Generation]:
    """One response per prompt from a ``CausalLM``, in the order of ``prompts``.

    Prompts are formatted with the training ``template`` and tokenised by
    `safedpo_jax.data.tokenize_prompts`, sorted by length (longest first), batched by
    ``batch_size`` (a short last batch is filled with repeats, then dropped) and
    LEFT-padded to a bucket length, so `generate` compiles once per bucket. A tokenizer
    larger than the model's vocabulary is a ValueError (`check_vocabulary`). Prompt ``i``
    samples with row id ``i``: results do not depend on ``batch_size``. ``progress``: show
    a tqdm bar (a string sets its label).
    """
    from safedpo_jax.data import bucket_length, default_bucket_lengths, tokenize_prompts

    check_vocabulary(model, tokenizer)
    texts = [p.text for p in prompts]
    ds = tokenize_prompts(texts, tokenizer, template=template, max_length=max_prompt_length)
    buckets = default_bucket_lengths(ds.max_length)
    eos, pad = tokenizer.eos_token_id, ds.pad_id
    order = np.argsort(-ds.example_lengths, kind="stable")
    out: list[Generation | None] = [None] * len(prompts)
    label = progress if isinstance(progress, str) else "generate"
    with tqdm(total=len(prompts), desc=label, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk))])
            length = bucket_length(int(ds.example_lengths[rows].max()), buckets)
            batch = ds.batch(rows, length)
            gen = generate(
                model,
                batch.input_ids,
                batch.attention_mask,
                max_new_tokens=max_new_tokens,
                eos_id=eos,
                pad_id=pad,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                row_ids=rows,
                mesh=mesh,
            )
            responses = decode(tokenizer, gen)
            lengths, finished = np.asarray(gen.lengths), np.asarray(gen.finished)
            for j, i in enumerate(chunk):
                out[i] = Generation(prompts[i], responses[j], int(lengths[j]), bool(finished[j]))
            bar.update(len(chunk))
    return [g for g in out if g is not None]


def score_texts(
    scorer: Scorer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    chunk_size: int = 64,
    progress: bool | str = False,
) -> np.ndarray:
    """``scorer`` over all pairs in chunks of ``chunk_size`` (a tqdm bar with ``progress``)."""
    label = progress if isinstance(progress, str) else "score"
    scores = []
    with tqdm(total=len(prompts), desc=label, unit="response", disable=not progress) as bar:
        for start in range(0, len(prompts), chunk_size):
            p = list(prompts[start : start + chunk_size])
            r = list(responses[start : start + chunk_size])
            scores.append(check_scores(scorer(p, r), len(p), label))
            bar.update(len(p))
    return np.concatenate(scores) if scores else np.zeros(0)


def assemble(
    generations: Sequence[Generation],
    rewards: np.ndarray,
    costs: np.ndarray,
    *,
    matcher: RefusalMatcher = DEFAULT_MATCHER,
) -> list[ScoredResponse]:
    """`ScoredResponse` records from generations, their scores and the refusal matcher."""
    n = len(generations)
    rewards, costs = check_scores(rewards, n, "rewards"), check_scores(costs, n, "costs")
    return [
        ScoredResponse(
            prompt=g.prompt.text,
            response=g.response,
            reward=float(r),
            cost=float(c),
            refusal=matcher.classify(g.response),
            category=g.prompt.category,
            subset=g.prompt.subset,
            num_tokens=g.num_tokens,
            finished=g.finished,
        )
        for g, r, c in zip(generations, rewards, costs, strict=True)
    ]


def evaluate_run(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    reward: Scorer,
    cost: Scorer,
    matcher: RefusalMatcher = DEFAULT_MATCHER,
    progress: bool | str = False,
    **generation: Any,
) -> list[ScoredResponse]:
    """Generates one response per prompt, scores it and labels refusals.

    ``generation`` holds the keyword arguments of `generate_responses` (``max_new_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``batch_size``, ``template``, ``mesh``, ...).
    Summarise the records with `metrics.summarize` or write them with
    `report.write_report`.
    """
    gens = generate_responses(model, tokenizer, prompts, progress=progress, **generation)
    texts = [g.prompt.text for g in gens]
    responses = [g.response for g in gens]
    rewards = score_texts(reward, texts, responses, progress="reward" if progress else False)
    costs = score_texts(cost, texts, responses, progress="cost" if progress else False)
    return assemble(gens, rewards, costs, matcher=matcher)
