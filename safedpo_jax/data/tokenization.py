"""Prompt templates and tokenisation into pair, SFT and prompt datasets.

Templates (``template=``):

``"safe_rlhf"`` (default)
    ``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:`` (safe-rlhf's PROMPT_INPUT,
    no trailing space). The formatted prompt is tokenised WITH the tokenizer's leading
    special tokens (BOS for Llama; trailing ones such as an appended EOS are not used).
``"chat"``
    ``tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
    add_generation_prompt=True)`` as text, tokenised WITHOUT special tokens (the chat
    template writes its own BOS if it has one).
any string holding ``{prompt}``
    formatted like ``"safe_rlhf"``.

Sequences: ``ids = prompt_ids + response_ids + [eos_id]``. The prompt and the response
are tokenised separately (the response without special tokens, and with special-token text
such as ``"</s>"`` inside a response tokenised as plain text, so the only EOS token is the
appended one), so the response boundary
is exact: ``loss_mask`` covers exactly ``response_ids`` and the EOS, computed from lengths
(so an EOS equal to the pad id stays inside the mask). safe-rlhf instead tokenises the
joined string ``prompt + response + eos``; the two agree for word-level tokenizers and
differ only at the seam for BPE/SentencePiece ones (e.g. a SentencePiece tokenizer gives
the first response word its word-start marker here, as if a space followed "ASSISTANT:").

Truncation to ``max_length`` keeps the start: the whole prompt, then as many response
tokens as fit. A response that does not fit with its EOS is cut and gets NO EOS (counted
as truncated). A pair whose prompt leaves no room for one response token is dropped
(``prompt_too_long``). The tokenizer's pad id pads (its EOS id when it has no pad token).
When more than 10% (`UNKNOWN_WARN_SHARE`) of the tokens are the tokenizer's unknown token,
a UserWarning gives the share (the wrong tokenizer for the data, most likely).

>>> tok = load_tokenizer("sample")
>>> pair = Pair("how do i bake bread ?", "sure .", "it depends .", (False, False), row=0)
>>> ds = tokenize_pairs([pair], tok, max_length=32)
>>> tok.convert_ids_to_tokens(ds.sequences[0][0].tolist())
['<s>', 'BEGINNING', 'OF', 'CONVERSATION:', 'USER:', 'how', 'do', 'i', 'bake', 'bread', '?',
 'ASSISTANT:', 'sure', '.', '</s>']
>>> int(ds.prompt_lengths[0]), ds.lengths[0].tolist()
(12, [15, 16])
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from safedpo_jax.data.batches import PairBatch, PromptBatch, SFTBatch
from safedpo_jax.data.pairs import Pair
from safedpo_jax.data.rows import SAMPLE, SAMPLE_TOKENIZER_DIR, PreferenceRow

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Any Hugging Face tokenizer. The alias is evaluated lazily, so transformers (slow to import)
# is only imported by `load_tokenizer`.
type Tokenizer = PreTrainedTokenizerBase

__all__ = [
    "SAFE_RLHF_TEMPLATE",
    "PairDataset",
    "PromptDataset",
    "SFTDataset",
    "SFTExample",
    "encode_prompts",
    "format_prompt",
    "load_tokenizer",
    "sft_examples",
    "tokenize_pairs",
    "tokenize_prompts",
    "tokenize_sft",
]

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"

SFTResponses = Literal["both", "better", "safer", "safe"]
SFT_RESPONSES: tuple[str, ...] = get_args(SFTResponses)


def load_tokenizer(name_or_path: str | Path, *, revision: str | None = None) -> Tokenizer:
    """``transformers.AutoTokenizer.from_pretrained``; ``"sample"`` is the sample tokenizer.

    A local directory, or a Hub id ``org/name`` (``revision``: branch, tag or commit;
    offline, ``HF_HUB_OFFLINE=1``, from the Hub cache). A missing path, a Hub id that
    cannot be used and a directory without a tokenizer each raise ONE line naming it
    (`FileNotFoundError`, or `ValueError` for a directory that holds no tokenizer).
    """
    from transformers import AutoTokenizer

    text = str(name_or_path)
    path = SAMPLE_TOKENIZER_DIR if text == SAMPLE else Path(text).expanduser()
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # one line instead of a transformers traceback
            raise ValueError(f"{path}: cannot load a tokenizer from this directory: "
                             f"{type(exc).__name__}: {_first_line(exc)}") from None  # fmt: skip
    if path.exists():
        raise ValueError(f"{path}: is a file; a tokenizer is a directory or a Hub id 'org/name'")
    if text.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise FileNotFoundError(
            f"tokenizer {text!r}: no such directory (and not a Hub id 'org/name')"
        )
    try:
        return AutoTokenizer.from_pretrained(text, revision=revision)
    except Exception as exc:  # no such repository, revision, or network
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"tokenizer {text!r}: not a local directory, and Hub repository {text!r}{at} "
            f"cannot be used: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def format_prompt(
    prompt: str, *, template: str = "safe_rlhf", tokenizer: Tokenizer | None = None
) -> str:
    """The prompt text before the response.

    >>> format_prompt("hi")
    'BEGINNING OF CONVERSATION: USER: hi ASSISTANT:'
    >>> format_prompt("hi", template="Q: {prompt} A:")
    'Q: hi A:'
    """
    if template == "safe_rlhf":
        return SAFE_RLHF_TEMPLATE.replace("{prompt}", prompt)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if "{prompt}" in template:
        return template.replace("{prompt}", prompt)
    raise ValueError(f"template must be 'safe_rlhf', 'chat' or hold '{{prompt}}', got {template!r}")


def _leading_special_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids the tokenizer puts before the text when adding special tokens (e.g. BOS)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode_prompts(
    prompts: Sequence[str], tokenizer: Tokenizer, *, template: str = "safe_rlhf"
) -> list[list[int]]:
    """Token ids of each formatted prompt (see the module docstring); repeats are tokenised once."""
    unique = list(dict.fromkeys(prompts))
    texts = [format_prompt(p, template=template, tokenizer=tokenizer) for p in unique]
    prefix = [] if template == "chat" else _leading_special_ids(tokenizer)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    by_prompt = {p: prefix + list(ids) for p, ids in zip(unique, encoded, strict=True)}
    return [by_prompt[p] for p in prompts]


def _encode_responses(responses: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Response ids; special-token TEXT in a response (e.g. ``"</s>"``) stays text."""
    if not responses:
        return []
    encoded = tokenizer(list(responses), add_special_tokens=False, split_special_tokens=True)
    return [list(ids) for ids in encoded["input_ids"]]


UNKNOWN_WARN_SHARE = 0.1


def _warn_unknown(tokenizer: Tokenizer, sequences: Sequence[Sequence[int]], what: str) -> None:
    """Warn when more than `UNKNOWN_WARN_SHARE` of the tokens are the unknown token."""
    unk = tokenizer.unk_token_id
    total = sum(len(ids) for ids in sequences)
    if unk is None or not total:
        return
    share = sum(ids.count(unk) for ids in sequences) / total
    if share > UNKNOWN_WARN_SHARE:
        warnings.warn(
            f"the tokenizer maps {share:.1%} of the {what} tokens to the unknown token "
            f"{tokenizer.unk_token!r}; is it the tokenizer the data was written for?",
            stacklevel=3,
        )


def _special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; sequences must end with one")
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def _assemble(
    prompt: list[int], response: list[int], eos: int, max_length: int
) -> tuple[np.ndarray, bool]:
    """prompt + response + eos, cut to max_length keeping the start; (ids, truncated)."""
    room = max_length - len(prompt)
    if len(response) + 1 <= room:
        return np.asarray(prompt + response + [eos], dtype=np.int32), False
    return np.asarray(prompt + response[:room], dtype=np.int32), True


@dataclass(frozen=True, eq=False)
class PairDataset:
    """Tokenised pairs, ready for `BatchIterator`.

    pairs[i] is pair i (``PairBatch.pair_index`` refers to it); sequences[i] its two token
    id arrays (slot 0, slot 1); prompt_lengths [N] and lengths [N, 2] their lengths (the
    loss mask of slot s is ``[prompt_lengths[i], lengths[i, s])``). truncated counts pairs
    with a cut response, truncated_responses the cut responses; dropped holds
    ``prompt_too_long``.
    """

    pairs: tuple[Pair, ...]
    sequences: tuple[tuple[np.ndarray, np.ndarray], ...]
    prompt_lengths: np.ndarray
    lengths: np.ndarray
    pad_id: int
    eos_id: int
    max_length: int
    truncated: int = 0
    truncated_responses: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def example_lengths(self) -> np.ndarray:
        """Longest of the two sequences of each pair, [N]."""
        return self.lengths.max(axis=1) if len(self) else np.zeros(0, np.int32)

    @property
    def unsafe(self) -> np.ndarray:
        """bool [N, 2], slot order."""
        return np.array([p.unsafe for p in self.pairs], dtype=bool).reshape(-1, 2)

    def batch(self, indices: np.ndarray, length: int) -> PairBatch:
        """The `PairBatch` of pairs ``indices`` (-1 = padding pair), padded to ``length``."""
        size = len(indices)
        ids = np.full((size, 2, length), self.pad_id, dtype=np.int32)
        attention = np.zeros((size, 2, length), dtype=np.int32)
        loss = np.zeros((size, 2, length), dtype=bool)
        unsafe = np.zeros((size, 2), dtype=bool)
        for b, i in enumerate(int(i) for i in indices):
            if i < 0:
                continue
            start = int(self.prompt_lengths[i])
            for s, seq in enumerate(self.sequences[i]):
                ids[b, s, : len(seq)] = seq
                attention[b, s, : len(seq)] = 1
                loss[b, s, start : len(seq)] = True
            unsafe[b] = self.pairs[i].unsafe
        valid = np.asarray(indices) >= 0
        index = np.where(valid, indices, -1).astype(np.int32)
        return PairBatch(ids, attention, loss, unsafe, index, valid)


def tokenize_pairs(
    pairs: Sequence[Pair], tokenizer: Tokenizer, *, max_length: int, template: str = "safe_rlhf"
) -> PairDataset:
    """Tokenise pairs (see the module docstring for the layout and truncation rules)."""
    eos, pad = _special_ids(tokenizer)
    prompt_ids = encode_prompts([p.prompt for p in pairs], tokenizer, template=template)
    responses = _encode_responses([r for p in pairs for r in p.responses], tokenizer)
    _warn_unknown(tokenizer, prompt_ids + responses, "prompt and response")
    kept, seqs, prompt_lengths, lengths = [], [], [], []
    truncated = truncated_responses = too_long = 0
    for k, (pair, prompt) in enumerate(zip(pairs, prompt_ids, strict=True)):
        if len(prompt) >= max_length:
            too_long += 1
            continue
        a, cut_a = _assemble(prompt, responses[2 * k], eos, max_length)
        b, cut_b = _assemble(prompt, responses[2 * k + 1], eos, max_length)
        truncated += cut_a or cut_b
        truncated_responses += cut_a + cut_b
        kept.append(pair)
        seqs.append((a, b))
        prompt_lengths.append(len(prompt))
        lengths.append((len(a), len(b)))
    return PairDataset(
        pairs=tuple(kept),
        sequences=tuple(seqs),
        prompt_lengths=np.asarray(prompt_lengths, dtype=np.int32).reshape(-1),
        lengths=np.asarray(lengths, dtype=np.int32).reshape(-1, 2),
        pad_id=pad,
        eos_id=eos,
        max_length=max_length,
        truncated=int(truncated),
        truncated_responses=int(truncated_responses),
        dropped={"prompt_too_long": too_long} if too_long else {},
    )


@dataclass(frozen=True)
class SFTExample:
    """A prompt and one response to imitate; ``row`` is the source row's index."""

    prompt: str
    response: str
    unsafe: bool
    row: int


def sft_examples(
    rows: Sequence[PreferenceRow], *, responses: SFTResponses = "both", unique: bool = False
) -> list[SFTExample]:
    """Examples for supervised fine-tuning of the reference model.

    responses: ``"both"`` (every response of every row, response_0 then response_1),
    ``"better"`` (``better_response_id`` only), ``"safer"`` (``safer_response_id``
    only) or ``"safe"`` (every safe response). unique: keep the first of repeated
    (prompt, response) examples.

    >>> from safedpo_jax.data.rows import PreferenceRow
    >>> row = PreferenceRow("q", ("a", "b"), (True, False), 0, 1, index=7)
    >>> [e.response for e in sft_examples([row])], sft_examples([row], responses="safer")
    (['a', 'b'], [SFTExample(prompt='q', response='b', unsafe=False, row=7)])
    """
    out = []
    for row in rows:
        if responses == "both":
            slots = [0, 1]
        elif responses == "better":
            slots = [row.better_response_id]
        elif responses == "safer":
            slots = [row.safer_response_id]
        elif responses == "safe":
            slots = [s for s in (0, 1) if not row.unsafe[s]]
        else:
            raise ValueError(f"responses must be both, better, safer or safe, got {responses!r}")
        out += [SFTExample(row.prompt, row.responses[s], row.unsafe[s], row.index) for s in slots]
    if unique:
        first = {(e.prompt, e.response): e for e in reversed(out)}  # the first occurrence wins
        out = [e for e in out if first[(e.prompt, e.response)] is e]
    return out


@dataclass(frozen=True, eq=False)
class SFTDataset:
    """Tokenised SFT examples (fields as in `PairDataset`, one sequence per example)."""

    examples: tuple[SFTExample, ...]
    sequences: tuple[np.ndarray, ...]
    prompt_lengths: np.ndarray
    lengths: np.ndarray
    pad_id: int
    eos_id: int
    max_length: int
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def example_lengths(self) -> np.ndarray:
        """Sequence length of each example, [N]."""
        return self.lengths

    def batch(self, indices: np.ndarray, length: int) -> SFTBatch:
        """The `SFTBatch` of examples ``indices`` (-1 = padding), right-padded to ``length``."""
        size = len(indices)
        ids = np.full((size, length), self.pad_id, dtype=np.int32)
        attention = np.zeros((size, length), dtype=np.int32)
        loss = np.zeros((size, length), dtype=bool)
        for b, i in enumerate(int(i) for i in indices):
            if i < 0:
                continue
            seq = self.sequences[i]
            ids[b, : len(seq)] = seq
            attention[b, : len(seq)] = 1
            loss[b, int(self.prompt_lengths[i]) : len(seq)] = True
        valid = np.asarray(indices) >= 0
        return SFTBatch(ids, attention, loss, np.where(valid, indices, -1).astype(np.int32), valid)


def tokenize_sft(
    examples: Sequence[SFTExample],
    tokenizer: Tokenizer,
    *,
    max_length: int,
    template: str = "safe_rlhf",
) -> SFTDataset:
    """Tokenise SFT examples with the same layout and truncation rules as `tokenize_pairs`."""
    eos, pad = _special_ids(tokenizer)
    prompt_ids = encode_prompts([e.prompt for e in examples], tokenizer, template=template)
    responses = _encode_responses([e.response for e in examples], tokenizer)
    _warn_unknown(tokenizer, prompt_ids + responses, "prompt and response")
    kept, seqs, prompt_lengths = [], [], []
    truncated = too_long = 0
    for example, prompt, response in zip(examples, prompt_ids, responses, strict=True):
        if len(prompt) >= max_length:
            too_long += 1
            continue
        seq, cut = _assemble(prompt, response, eos, max_length)
        truncated += cut
        kept.append(example)
        seqs.append(seq)
        prompt_lengths.append(len(prompt))
    return SFTDataset(
        examples=tuple(kept),
        sequences=tuple(seqs),
        prompt_lengths=np.asarray(prompt_lengths, dtype=np.int32),
        lengths=np.asarray([len(s) for s in seqs], dtype=np.int32),
        pad_id=pad,
        eos_id=eos,
        max_length=max_length,
        truncated=int(truncated),
        dropped={"prompt_too_long": too_long} if too_long else {},
    )


@dataclass(frozen=True, eq=False)
class PromptDataset:
    """Formatted, tokenised prompts for generation; batches are LEFT-padded."""

    prompts: tuple[str, ...]
    sequences: tuple[np.ndarray, ...]
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def example_lengths(self) -> np.ndarray:
        """Prompt length of each prompt, [N]."""
        return np.asarray([len(s) for s in self.sequences], dtype=np.int32)

    def batch(self, indices: np.ndarray, length: int) -> PromptBatch:
        """The `PromptBatch` of prompts ``indices`` (-1 = padding), left-padded to ``length``."""
        size = len(indices)
        ids = np.full((size, length), self.pad_id, dtype=np.int32)
        attention = np.zeros((size, length), dtype=np.int32)
        for b, i in enumerate(int(i) for i in indices):
            if i < 0:
                continue
            seq = self.sequences[i]
            ids[b, length - len(seq) :] = seq
            attention[b, length - len(seq) :] = 1
        valid = np.asarray(indices) >= 0
        return PromptBatch(ids, attention, np.where(valid, indices, -1).astype(np.int32), valid)


def tokenize_prompts(
    prompts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    template: str = "safe_rlhf",
    max_length: int | None = None,
) -> PromptDataset:
    """Tokenise prompts for generation with the training template.

    ``max_length`` (default: the longest prompt) bounds the prompt length; a longer prompt
    raises ValueError naming it (prompts are never cut for evaluation).
    """
    _, pad = _special_ids(tokenizer)
    encoded = encode_prompts(prompts, tokenizer, template=template)
    _warn_unknown(tokenizer, encoded, "prompt")
    longest = max((len(ids) for ids in encoded), default=1)
    limit = longest if max_length is None else max_length
    for i, ids in enumerate(encoded):
        if len(ids) > limit:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_length={limit}")
    return PromptDataset(
        prompts=tuple(prompts),
        sequences=tuple(np.asarray(ids, dtype=np.int32) for ids in encoded),
        pad_id=pad,
        max_length=limit,
    )
