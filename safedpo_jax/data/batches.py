"""Batches of numpy arrays, bucket lengths, and the resumable, multi-host iterator.

Every batch has a fixed number of examples (the local batch size; a final short batch
is filled with padding examples whose ``valid`` is False) and a length T taken from a
few bucket lengths (`default_bucket_lengths`), so a jitted step compiles a handful of
times. T is the smallest bucket that holds the longest example of the GLOBAL batch, so
every process gets the same T for the same step.

`BatchIterator` walks a tokenized dataset (`PairDataset`, `SFTDataset`, `PromptDataset`
from `safedpo_jax.data.tokenization`) in global batches:

- order: epoch e visits ``numpy.random.default_rng([seed, e]).permutation(N)`` (or
  ``range(N)`` with ``shuffle=False``); epochs never mix, the last batch of an epoch is
  padded (or dropped with ``drop_remainder=True``).
- processes: each of ``process_count`` processes yields rows
  ``[process_index * b, (process_index + 1) * b)`` of every global batch,
  ``b = batch_size // process_count``.
- position: `BatchIterator.state` is a dict of plain ints naming the next batch;
  `BatchIterator.restore` (or ``state=`` in the constructor) continues exactly there.

>>> default_bucket_lengths(64), default_bucket_lengths(100)
((16, 32, 64), (16, 32, 64, 100))
>>> bucket_length(17, (16, 32, 64))
32
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BatchIterator",
    "PackedPairBatch",
    "PairBatch",
    "PromptBatch",
    "SFTBatch",
    "bucket_length",
    "default_bucket_lengths",
    "pack_pair_groups",
    "pack_pairs",
]

STATE_VERSION = 1


@dataclass(frozen=True)
class PairBatch:
    """A batch of preference pairs (B = local batch size, T = bucket length).

    input_ids: int32 [B, 2, T]. Slot 0 = chosen/winner and slot 1 = rejected/loser as
        constructed (`safedpo_jax.data.pairs`); each sequence is prompt ids + response
        ids + EOS, RIGHT-padded with the tokenizer's pad id.
    attention_mask: int32 [B, 2, T]. 1 on real tokens (prompt, response, EOS), 0 on padding.
    loss_mask: bool [B, 2, T]. True at the positions of the response tokens and the EOS,
        the tokens whose log-probs count; built from lengths, never from pad ids. The
        consumer shifts it by one for next-token prediction (the logits at t - 1 score
        the token at t).
    unsafe: bool [B, 2]. True = that slot's response is unsafe (h = 1).
    pair_index: int32 [B]. Position of the pair in ``PairDataset.pairs`` (the key for
        cached reference log-probs); -1 for padding pairs.
    valid: bool [B]. False for padding pairs that fill a final short batch: they have
        all-zero masks and must not count anywhere (loss, metrics, denominators).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    unsafe: np.ndarray
    pair_index: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class SFTBatch:
    """A batch of (prompt + one response) examples for supervised fine-tuning.

    input_ids: int32 [B, T], prompt ids + response ids + EOS, RIGHT-padded with pad id.
    attention_mask: int32 [B, T], 1 on real tokens.
    loss_mask: bool [B, T], True on the response tokens and the EOS (shift by one as in
        `PairBatch`).
    example_index: int32 [B], position in ``SFTDataset.examples``; -1 for padding.
    valid: bool [B], False for padding examples.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    example_index: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class PromptBatch:
    """Formatted prompts for generation.

    input_ids: int32 [B, T], prompt ids LEFT-padded with pad id, so every prompt ends at
        position T - 1 and generation appends at T. Positions of real tokens are
        ``cumsum(attention_mask) - 1`` (compute them; padding must not shift positions).
    attention_mask: int32 [B, T], 1 on real tokens.
    prompt_index: int32 [B], position in ``PromptDataset.prompts``; -1 for padding.
    valid: bool [B], False for padding prompts.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    prompt_index: np.ndarray
    valid: np.ndarray


def default_bucket_lengths(max_length: int, *, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_length``, then ``max_length``."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    out = []
    n = smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return (*out, max_length)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; ValueError when none is."""
    for b in sorted(buckets):
        if b >= n:
            return int(b)
    raise ValueError(f"no bucket length holds {n} tokens (buckets: {tuple(buckets)})")


class Batchable(Protocol):
    """What `BatchIterator` needs from a tokenized dataset."""

    max_length: int

    def __len__(self) -> int: ...

    @property
    def example_lengths(self) -> np.ndarray:
        """int [N], the longest sequence of each example."""
        ...

    def batch(self, indices: np.ndarray, length: int) -> Any:
        """The batch of examples ``indices`` (-1 = padding) at length ``length``."""
        ...


class BatchIterator:
    """Deterministic, resumable batches of a tokenized dataset for one process.

    Args:
      dataset: a `PairDataset`, `SFTDataset` or `PromptDataset`.
      batch_size: GLOBAL batch size (over all processes); divisible by process_count.
      seed: shuffling seed.
      shuffle: False walks the examples in order (reference log-prob caching, eval).
      num_epochs: epochs to run; None runs forever.
      drop_remainder: drop each epoch's final short batch instead of padding it.
      process_index, process_count: this process's share of every global batch.
      bucket_lengths: allowed T values; default `default_bucket_lengths(dataset.max_length)`.
      state: a `state` dict to start from (same as calling `restore`).

    >>> import numpy as np
    >>> class Toy:
    ...     max_length = 16
    ...     example_lengths = np.array([3, 5, 4, 2, 7])
    ...     def __len__(self): return 5
    ...     def batch(self, indices, length): return indices.tolist(), length
    >>> it = BatchIterator(Toy(), batch_size=2, shuffle=False)
    >>> list(it)
    [([0, 1], 16), ([2, 3], 16), ([4, -1], 16)]
    >>> it = BatchIterator(Toy(), batch_size=2, seed=0, num_epochs=None)
    >>> first = next(it); saved = it.state(); second = next(it)
    >>> it2 = BatchIterator(Toy(), batch_size=2, seed=0, num_epochs=None, state=saved)
    >>> next(it2) == second
    True
    """

    def __init__(
        self,
        dataset: Batchable,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = 1,
        drop_remainder: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        bucket_lengths: Sequence[int] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or process_count < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"process_count ({process_count})"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        self.process_index = process_index
        self.process_count = process_count
        buckets = bucket_lengths or default_bucket_lengths(dataset.max_length)
        self.bucket_lengths = tuple(sorted(int(b) for b in buckets))
        self._num_examples = len(dataset)
        self._lengths = np.asarray(dataset.example_lengths)
        if self._lengths.size and self._lengths.max() > self.bucket_lengths[-1]:
            raise ValueError(
                f"an example has {self._lengths.max()} tokens, more than the largest bucket "
                f"{self.bucket_lengths[-1]}"
            )
        if 0 < self._num_examples < batch_size and not drop_remainder:
            warnings.warn(
                f"batch_size {batch_size} is larger than the dataset ({self._num_examples} "
                f"examples): {batch_size - self._num_examples} of the {batch_size} slots of "
                "every batch are padding (valid=False)",
                stacklevel=2,
            )
        if num_epochs is None and self.steps_per_epoch == 0:
            raise ValueError("no full batch to iterate over forever (empty dataset?)")
        self._epoch = 0
        self._step = 0
        self._order_epoch = -1
        self._order = np.arange(0)
        if state is not None:
            self.restore(state)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        full, rest = divmod(self._num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def __len__(self) -> int:
        """Batches left to yield (finite ``num_epochs`` only)."""
        if self.num_epochs is None:
            raise TypeError("an iterator with num_epochs=None has no length")
        return max(0, (self.num_epochs - self._epoch) * self.steps_per_epoch - self._step)

    def __iter__(self) -> Iterator[Any]:
        return self

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = self._num_examples
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = epoch
        return self._order

    def global_indices(self) -> np.ndarray:
        """Example indices of the next global batch (-1 = padding), without advancing."""
        epoch, step = self._normalized()
        order = self._epoch_order(epoch)
        idx = order[step * self.batch_size : (step + 1) * self.batch_size]
        return np.concatenate([idx, np.full(self.batch_size - len(idx), -1, dtype=idx.dtype)])

    def _normalized(self) -> tuple[int, int]:
        epoch, step = self._epoch, self._step
        if self.steps_per_epoch and step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        return epoch, step

    def __next__(self) -> Any:
        self._epoch, self._step = self._normalized()
        if self.steps_per_epoch == 0 or (
            self.num_epochs is not None and self._epoch >= self.num_epochs
        ):
            raise StopIteration
        indices = self.global_indices()
        real = indices[indices >= 0]
        length = bucket_length(
            int(self._lengths[real].max()) if real.size else 1, self.bucket_lengths
        )
        local = self.batch_size // self.process_count
        mine = indices[self.process_index * local : (self.process_index + 1) * local]
        self._step += 1
        return self.dataset.batch(mine, length)

    def state(self) -> dict[str, int]:
        """The position of the next batch, as plain ints (JSON-serialisable)."""
        epoch, step = self._normalized()
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "shuffle": int(self.shuffle),
            "drop_remainder": int(self.drop_remainder),
            "num_examples": self._num_examples,
            "batch_size": self.batch_size,
            "epoch": epoch,
            "step": step,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state` dict; ValueError if it describes another data order."""
        mine = self.state()
        for key in ("version", "seed", "shuffle", "drop_remainder", "num_examples", "batch_size"):
            if int(state.get(key, -1)) != mine[key]:
                raise ValueError(
                    f"cannot restore: state has {key}={state.get(key)!r}, "
                    f"this iterator has {mine[key]!r}"
                )
        self._epoch, self._step = int(state["epoch"]), int(state["step"])


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class PackedPairBatch:
    """The sequences of a `PairBatch` packed padding-free into ``R`` rows of ``L`` tokens.

    input_ids: int32 [R, L], sequences one after another, 0 after the last.
    segment_ids: int32 [R, L], 1, 2, ... numbering the sequences of each row in order;
        0 on the row's padding.
    loss_mask: bool [R, L], each sequence's `PairBatch` loss mask, moved with it.
    pair_rows, pair_segments: int32 [B, 2], the row and the segment id of each pair's
        slot (chosen, rejected); the row is 0 and the segment 0 for padding pairs.
    unsafe, pair_index, valid: as in `PairBatch` ([B, 2], [B], [B]).
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    loss_mask: np.ndarray
    pair_rows: np.ndarray
    pair_segments: np.ndarray
    unsafe: np.ndarray
    pair_index: np.ndarray
    valid: np.ndarray

    @property
    def max_segments(self) -> int:
        """The largest number of segments in a row (the per-row segment count to reserve)."""
        return int(self.segment_ids.max(initial=0))


def pack_pairs(batch: PairBatch, row_length: int, *, rows: int | None = None) -> PackedPairBatch:
    """Packs the real sequences of ``batch`` (both slots of every valid pair) into rows.

    First-fit decreasing by length: each sequence (its real tokens, ``attention_mask``
    1; right-padded as `PairBatch` guarantees) goes into the first row with room, longest
    first; ties keep batch order. ``rows`` fixes the row count (an error when the
    sequences do not fit, naming how many rows they need); None uses as many as needed.
    Every sequence must fit in ``row_length``.

    >>> ids = np.array([[[5, 6, 7, 0], [5, 8, 0, 0]]], np.int32)
    >>> mask = (ids > 0).astype(np.int32)
    >>> b = PairBatch(ids, mask, mask.astype(bool), np.zeros((1, 2), bool),
    ...               np.array([0], np.int32), np.array([True]))
    >>> p = pack_pairs(b, 6)
    >>> p.input_ids.tolist(), p.segment_ids.tolist()
    ([[5, 6, 7, 5, 8, 0]], [[1, 1, 1, 2, 2, 0]])
    >>> p.pair_rows.tolist(), p.pair_segments.tolist()
    ([[0, 0]], [[1, 2]])
    """
    if row_length < 1:
        raise ValueError(f"pack_pairs: row_length must be positive, got {row_length}")
    lengths = np.asarray(batch.attention_mask).sum(axis=-1)  # [B, 2]
    items = [
        (int(lengths[i, s]), i, s)
        for i in range(lengths.shape[0])
        if batch.valid[i]
        for s in range(2)
    ]
    too_long = [(i, s, n) for n, i, s in items if n > row_length]
    if too_long:
        i, s, n = too_long[0]
        raise ValueError(
            f"pack_pairs: pair {i} slot {s} has {n} tokens, more than row_length {row_length}"
        )
    order = sorted(range(len(items)), key=lambda k: (-items[k][0], k))
    free: list[int] = []  # room left per row
    placed: dict[tuple[int, int], tuple[int, int]] = {}  # (pair, slot) -> (row, offset)
    for k in order:
        n, i, s = items[k]
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            free.append(row_length)
            row = len(free) - 1
        placed[(i, s)] = (row, row_length - free[row])
        free[row] -= n
    n_rows = len(free) if rows is None else rows
    if n_rows < len(free):
        raise ValueError(f"pack_pairs: the sequences need {len(free)} rows, only {rows} given")
    b = lengths.shape[0]
    ids = np.zeros((n_rows, row_length), np.int32)
    seg = np.zeros((n_rows, row_length), np.int32)
    loss = np.zeros((n_rows, row_length), bool)
    pair_rows = np.zeros((b, 2), np.int32)
    pair_segments = np.zeros((b, 2), np.int32)
    # segment ids follow the order of offsets inside each row
    for (i, s), (row, offset) in sorted(placed.items(), key=lambda kv: kv[1]):
        n = int(lengths[i, s])
        sid = int(seg[row, offset - 1]) + 1 if offset else 1
        ids[row, offset : offset + n] = batch.input_ids[i, s, :n]
        seg[row, offset : offset + n] = sid
        loss[row, offset : offset + n] = batch.loss_mask[i, s, :n]
        pair_rows[i, s], pair_segments[i, s] = row, sid
    return PackedPairBatch(
        input_ids=ids,
        segment_ids=seg,
        loss_mask=loss,
        pair_rows=pair_rows,
        pair_segments=pair_segments,
        unsafe=np.asarray(batch.unsafe),
        pair_index=np.asarray(batch.pair_index),
        valid=np.asarray(batch.valid),
    )


@dataclass(frozen=True)
class PackedPairGroups:
    """A `PairBatch` packed group by group: ``G`` groups of ``P`` consecutive pairs, each
    packed into ``R`` rows of ``L`` tokens (`pack_pairs`; ``R`` is common to all groups).

    input_ids, segment_ids, loss_mask: [G, R, L]; attention_mask: int32 [G, R, L]
    (``segment_ids > 0``). pair_rows, pair_segments: int32 [G, P, 2], row within the
    group and segment id of each slot. unsafe [G, P, 2], valid [G, P], pair_index [G, P].
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    loss_mask: np.ndarray
    attention_mask: np.ndarray
    pair_rows: np.ndarray
    pair_segments: np.ndarray
    unsafe: np.ndarray
    pair_index: np.ndarray
    valid: np.ndarray


def rows_needed(batch: PairBatch, row_length: int, groups: int) -> int:
    """The most rows any of ``groups`` equal groups of ``batch``'s pairs packs into."""
    packed = [pack_pairs(_group(batch, g, groups), row_length) for g in range(groups)]
    return max(p.input_ids.shape[0] for p in packed)


def _group(batch: PairBatch, g: int, groups: int) -> PairBatch:
    b = batch.input_ids.shape[0]
    if b % groups:
        raise ValueError(f"pack_pair_groups: {b} pairs do not split into {groups} groups")
    size = b // groups
    part = slice(g * size, (g + 1) * size)
    return PairBatch(*(np.asarray(getattr(batch, f))[part] for f in PairBatch.__dataclass_fields__))


def round_rows(rows: int) -> int:
    """Rows rounded up to ``2^k`` or ``3 * 2^k`` (few distinct shapes, so few compilations,
    and at most a third of the rows empty).

    >>> [round_rows(n) for n in (1, 3, 4, 5, 7, 9, 13)]
    [1, 3, 4, 6, 8, 12, 16]
    """
    rows = max(1, rows)
    power = 1 << (rows - 1).bit_length()  # the power of two >= rows
    three = 3 * power // 4  # 3 * 2^(k-2), between power / 2 and power
    return three if three >= rows and power >= 4 else power


def pack_pair_groups(
    batch: PairBatch, row_length: int, groups: int, *, rows: int | None = None
) -> PackedPairGroups:
    """Packs each of ``groups`` groups of consecutive pairs into the same number of rows.

    ``rows`` None: `round_rows` of `rows_needed`. Every sequence is kept (one longer than
    ``row_length`` is an error naming it, as in `pack_pairs`); nothing is dropped.
    """
    rows = round_rows(rows_needed(batch, row_length, groups)) if rows is None else rows
    parts = [pack_pairs(_group(batch, g, groups), row_length, rows=rows) for g in range(groups)]
    stack = lambda name: np.stack([getattr(p, name) for p in parts])  # noqa: E731
    segment_ids = stack("segment_ids")
    return PackedPairGroups(
        input_ids=stack("input_ids"),
        segment_ids=segment_ids,
        loss_mask=stack("loss_mask"),
        attention_mask=(segment_ids > 0).astype(np.int32),
        pair_rows=stack("pair_rows"),
        pair_segments=stack("pair_segments"),
        unsafe=stack("unsafe"),
        pair_index=stack("pair_index"),
        valid=stack("valid"),
    )
