"""Padding-free packing: the packer, attention confined to segments, per-segment log-probs.

The reference for every packed figure is the same sequences run the ordinary way: one per
row, right-padded (`safedpo_jax.logprobs.sequence_logps` on a `PairBatch`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safedpo_jax import losses
from safedpo_jax.data.batches import PairBatch, pack_pairs
from safedpo_jax.logprobs import segment_logps, sequence_logps
from safedpo_jax.models import DecoderConfig, Model, init_model
from safedpo_jax.models.decoder import segment_positions

CONFIG = DecoderConfig(
    vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return Model.split(init_model(CONFIG, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))


def ragged_batch(lengths, prompt_lengths, t=12, seed=0):
    """A PairBatch with the given [B, 2] lengths; the first prompt_lengths tokens are prompt."""
    rng = np.random.default_rng(seed)
    lengths, prompts = np.asarray(lengths), np.asarray(prompt_lengths)
    b = lengths.shape[0]
    pos = np.arange(t)
    mask = pos[None, None] < lengths[..., None]
    ids = np.where(mask, rng.integers(1, CONFIG.vocab_size, (b, 2, t)), 0).astype(np.int32)
    loss = mask & (pos[None, None] >= prompts[..., None])
    return PairBatch(
        input_ids=ids,
        attention_mask=mask.astype(np.int32),
        loss_mask=loss,
        unsafe=np.zeros((b, 2), bool),
        pair_index=np.arange(b, dtype=np.int32),
        valid=np.ones(b, bool),
    )


LENGTHS = [[12, 5], [7, 9], [3, 4]]
PROMPTS = [[2, 2], [3, 3], [1, 1]]


def test_segment_positions_restart():
    seg = jnp.array([[1, 1, 2, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert segment_positions(seg).tolist() == [[0, 1, 0, 1, 2, 0, 0], list(range(7))]


def test_packer_keeps_every_token_and_fills_rows():
    batch = ragged_batch(LENGTHS, PROMPTS)
    packed = pack_pairs(batch, 16)
    assert packed.input_ids.shape[0] == 3  # 40 tokens in rows of 16: first-fit decreasing
    assert (packed.segment_ids > 0).sum() == np.sum(LENGTHS)
    for i in range(3):
        for s in range(2):
            row, sid = packed.pair_rows[i, s], packed.pair_segments[i, s]
            where = packed.segment_ids[row] == sid
            n = LENGTHS[i][s]
            np.testing.assert_array_equal(packed.input_ids[row][where], batch.input_ids[i, s, :n])
            np.testing.assert_array_equal(packed.loss_mask[row][where], batch.loss_mask[i, s, :n])
    with pytest.raises(ValueError, match="pair 0 slot 0 has 12 tokens, more than row_length 8"):
        pack_pairs(batch, 8)
    with pytest.raises(ValueError, match="need 3 rows, only 2 given"):
        pack_pairs(batch, 16, rows=2)


def _padded_logits(model, batch):
    ids = jnp.asarray(batch.input_ids.reshape(-1, batch.input_ids.shape[-1]))
    mask = jnp.asarray(batch.attention_mask.reshape(ids.shape))
    return np.asarray(model.merge()(ids, mask)).reshape(*batch.input_ids.shape, -1)


def test_packed_logits_equal_each_sequence_alone(model):
    batch = ragged_batch(LENGTHS, PROMPTS)
    packed = pack_pairs(batch, 16)
    logits = np.asarray(
        model.merge()(jnp.asarray(packed.input_ids), segment_ids=jnp.asarray(packed.segment_ids))
    )
    want = _padded_logits(model, batch)
    for i in range(3):
        for s in range(2):
            row, sid = packed.pair_rows[i, s], packed.pair_segments[i, s]
            got = logits[row][packed.segment_ids[row] == sid]
            np.testing.assert_allclose(got, want[i, s, : LENGTHS[i][s]], atol=2e-5, rtol=0)


def test_no_attention_across_segments(model):
    # two segments in one row: changing either one's tokens leaves the other's logits
    ids = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10]])
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    forward = lambda x: np.asarray(model.merge()(x, segment_ids=seg))  # noqa: E731
    base = forward(ids)
    later = forward(ids.at[0, 3:7].set(11))
    earlier = forward(ids.at[0, :3].set(12))
    np.testing.assert_array_equal(later[0, :3], base[0, :3])
    np.testing.assert_allclose(earlier[0, 3:7], base[0, 3:7], atol=1e-6, rtol=0)
    assert not np.allclose(later[0, 3:7], base[0, 3:7])


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_segment_logps_equal_the_padded_path_and_the_dpo_loss(model, chunk_size):
    batch = ragged_batch(LENGTHS, PROMPTS, seed=1)
    packed = pack_pairs(batch, 16)
    args = (jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask))
    want = np.asarray(sequence_logps(model, *args, jnp.asarray(batch.loss_mask), chunk_size=0))
    per_segment = segment_logps(
        model,
        jnp.asarray(packed.input_ids),
        jnp.asarray(packed.segment_ids),
        jnp.asarray(packed.loss_mask),
        num_segments=packed.max_segments,
        chunk_size=chunk_size,
    )
    got = np.asarray(per_segment)[packed.pair_rows, packed.pair_segments - 1]  # [B, 2]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-6)
    ref = want + np.array([[0.3, -0.2]])
    loss = lambda lp: losses.dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], beta=0.1).losses  # noqa: E731
    np.testing.assert_allclose(np.asarray(loss(got)), np.asarray(loss(want)), atol=1e-5)


def test_a_target_never_crosses_a_segment_boundary(model):
    # every token of both segments is in the loss: the first token of segment 2 must not
    # be scored from segment 1's last position
    ids = jnp.array([[3, 4, 5, 6, 7, 8]])
    seg = jnp.array([[1, 1, 1, 2, 2, 2]])
    ones = jnp.ones_like(ids, dtype=bool)
    got = np.asarray(segment_logps(model, ids, seg, ones, num_segments=2, chunk_size=0))
    alone = [
        float(sequence_logps(model, ids[:, a:b], ones[:, a:b], ones[:, a:b], chunk_size=0)[0])
        for a, b in ((0, 3), (3, 6))
    ]
    np.testing.assert_allclose(got[0], alone, atol=1e-5)


def test_rotary_positions_restart_per_segment(model, monkeypatch):
    # Rotary attention scores depend on position differences only, so within confined
    # segments unrestarted positions give the same logits up to rounding: check the
    # positions the decoder hands to the rotation directly.
    from safedpo_jax.models import decoder

    seen = []
    original = decoder._rotate

    def spy(x, positions, inv_freq):
        seen.append(positions)
        return original(x, positions, inv_freq)

    monkeypatch.setattr(decoder, "_rotate", spy)
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    model.merge()(jnp.array([[3, 4, 5, 6, 7, 0]]), segment_ids=seg)
    assert seen and all(np.asarray(p)[0, :5].tolist() == [0, 1, 2, 0, 1] for p in seen)
