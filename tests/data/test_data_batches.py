"""The iterator: determinism, resumption, process shares, buckets, padding."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest

from safedpo_jax.data import (
    BatchIterator,
    bucket_length,
    default_bucket_lengths,
    load_preference_data,
)


@pytest.fixture(scope="module")
def dataset():
    ds, _ = load_preference_data(
        "sample", split="test", pairs="safedpo", tokenizer="sample", max_length=64
    )
    assert len(ds) == 280  # 360 test rows - 80 both-unsafe pairs
    return ds


def indices(batches):
    return [b.pair_index.tolist() for b in batches]


def test_same_seed_same_order_other_seed_other_order(dataset):
    a = indices(BatchIterator(dataset, batch_size=32, seed=3))
    b = indices(BatchIterator(dataset, batch_size=32, seed=3))
    c = indices(BatchIterator(dataset, batch_size=32, seed=4))
    assert a == b and a != c
    # Every epoch visits every pair exactly once, in a new order.
    it = BatchIterator(dataset, batch_size=32, seed=3, num_epochs=2)
    epochs = np.array([i for b in it for i in b.pair_index.tolist()]).reshape(2, -1)
    for e in epochs:
        assert sorted(e[e >= 0].tolist()) == list(range(280))
    assert epochs[0].tolist() != epochs[1].tolist()


@pytest.mark.parametrize("stop", [3, 9, 12])  # mid-epoch, at the epoch boundary, past it
def test_exact_continuation_from_a_saved_state(dataset, stop):
    # 280 pairs / 32 = 9 batches per epoch (the last padded).
    reference = indices(islice(BatchIterator(dataset, batch_size=32, seed=7, num_epochs=3), 25))
    it = BatchIterator(dataset, batch_size=32, seed=7, num_epochs=3)
    head = indices(islice(it, stop))
    state = json.loads(json.dumps(it.state()))  # plain ints survive JSON
    assert all(isinstance(v, int) for v in state.values())
    resumed = BatchIterator(dataset, batch_size=32, seed=7, num_epochs=3, state=state)
    assert head + indices(islice(resumed, 25 - stop)) == reference
    other = BatchIterator(dataset, batch_size=32, seed=7, num_epochs=3)
    other.restore(state)
    assert indices(islice(other, 25 - stop)) == reference[stop:]


def test_state_at_an_epoch_end_names_the_next_epoch(dataset):
    it = BatchIterator(dataset, batch_size=32, seed=0, num_epochs=2)
    list(islice(it, 9))
    assert (it.state()["epoch"], it.state()["step"]) == (1, 0)
    assert len(it) == 9


def test_restore_refuses_another_data_order(dataset):
    state = BatchIterator(dataset, batch_size=32, seed=0).state()
    for kwargs in ({"seed": 1}, {"batch_size": 16}, {"shuffle": False}):
        params = {"batch_size": 32, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match="cannot restore"):
            BatchIterator(dataset, **params, state=state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shares_partition_the_global_batch(dataset, process_count):
    full = list(BatchIterator(dataset, batch_size=32, seed=5))
    shares = [
        list(
            BatchIterator(
                dataset, batch_size=32, seed=5, process_index=p, process_count=process_count
            )
        )
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(full):
        local = [s[step] for s in shares]
        assert all(
            b.input_ids.shape == (32 // process_count, 2, global_batch.input_ids.shape[-1])
            for b in local
        )
        for field in ("input_ids", "attention_mask", "loss_mask", "unsafe", "pair_index", "valid"):
            joined = np.concatenate([getattr(b, field) for b in local])
            np.testing.assert_array_equal(joined, getattr(global_batch, field))


def test_process_arguments_are_checked(dataset):
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(dataset, batch_size=30, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        BatchIterator(dataset, batch_size=32, process_index=2, process_count=2)


def test_bucket_lengths(dataset):
    assert default_bucket_lengths(64) == (16, 32, 64)
    assert default_bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
    assert default_bucket_lengths(8) == (8,)
    assert bucket_length(32, (16, 32)) == 32
    with pytest.raises(ValueError, match="no bucket"):
        bucket_length(33, (16, 32))
    lengths = dataset.example_lengths
    for buckets in (None, (24, 36, 48, 64)):
        it = BatchIterator(dataset, batch_size=8, seed=1, bucket_lengths=buckets)
        allowed = buckets or (16, 32, 64)
        seen = set()
        for batch in it:
            t = batch.input_ids.shape[-1]
            longest = lengths[batch.pair_index[batch.valid]].max()
            assert t == min(b for b in allowed if b >= longest)
            assert batch.attention_mask.sum(-1).max() == longest
            seen.add(t)
        assert seen <= set(allowed) and len(seen) >= 1
    with pytest.raises(ValueError, match="more than the largest bucket"):
        BatchIterator(dataset, batch_size=8, bucket_lengths=(16, 32))


def test_final_short_batch_is_padded_or_dropped(dataset):
    batches = list(BatchIterator(dataset, batch_size=32, shuffle=False))
    assert len(batches) == 9
    last = batches[-1]
    assert last.valid.tolist() == [True] * 24 + [False] * 8
    assert last.pair_index.tolist()[24:] == [-1] * 8
    assert not last.loss_mask[24:].any() and not last.attention_mask[24:].any()
    assert not last.unsafe[24:].any()
    dropped = list(BatchIterator(dataset, batch_size=32, drop_remainder=True, shuffle=False))
    assert len(dropped) == 8 and all(b.valid.all() for b in dropped)


def test_in_order_pass_visits_every_pair_once(dataset):
    it = BatchIterator(dataset, batch_size=48, shuffle=False)
    seen = [i for b in it for i in b.pair_index.tolist() if i >= 0]
    assert seen == list(range(len(dataset)))
    batch = next(iter(BatchIterator(dataset, batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(batch.unsafe, dataset.unsafe[:4])


def test_forever_and_empty(dataset):
    it = BatchIterator(dataset, batch_size=32, seed=0, num_epochs=None)
    assert len(list(islice(it, 25))) == 25
    with pytest.raises(TypeError):
        len(it)
    with pytest.raises(ValueError, match="no full batch"):
        BatchIterator(dataset, batch_size=320, drop_remainder=True, num_epochs=None)
