"""Packed batches through the one train step: same losses and gradients as padded batches.

The micro Llama of trainhelpers on 8 pairs of up to 16 tokens with ragged lengths, packed
into rows of 16 tokens (`--pack-length 16`) on a mesh of 2 batch devices with 2
microbatches, so 4 groups of 2 pairs. Packed and padded runs do the same arithmetic laid out
differently (different row counts and key lengths in attention, different summation
order), so they agree to float32 rounding: measured 4e-7 relative on the loss and 3e-7
absolute on gradients of size up to 0.5; stated tolerances rtol 1e-5 (loss, metrics) and
atol 1e-5 (gradients).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from trainhelpers import MICRO, build

from safedpo_jax import sharding
from safedpo_jax.data import PairBatch
from safedpo_jax.train.config import from_preset
from safedpo_jax.train.objectives.base import PackedStepBatch
from safedpo_jax.train.setup import setup_step

B, T = 8, 16


def host_batch(seed: int = 0) -> PairBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, T // 2 + 1, (B, 2))  # two or more per packed row
    pos = np.arange(T)
    attention = pos[None, None] < lengths[..., None]
    ids = np.where(attention, rng.integers(1, 64, (B, 2, T)), 0)
    unsafe = rng.random((B, 2)) < 0.4
    valid = np.ones(B, bool)
    valid[-1] = False  # a padding pair: counts nowhere in either layout
    attention &= valid[:, None, None]
    return PairBatch(
        input_ids=ids.astype(np.int32),
        attention_mask=attention.astype(np.int32),
        loss_mask=attention & (pos >= 3)[None, None],
        unsafe=unsafe,
        pair_index=np.where(valid, np.arange(B), -1).astype(np.int32),
        valid=valid,
    )


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(2, 1, 1)


def config(**overrides):
    fields = dict(model_config=MICRO, pairs="safedpo", batch_size=B, max_length=T)
    return from_preset("tiny", **{**fields, "micro_batches": 2, **overrides})


def run(mesh, cfg):
    setup = setup_step(cfg, build(mesh, 0), mesh, reference=build(mesh, 1), total_steps=4)
    batch = setup.objective.device_batch(host_batch(), mesh, None)
    objective, policy, reference = setup.objective, setup.policy, setup.reference

    @jax.jit
    def grads(params, batch):
        denominator = objective.denominator(batch)
        loss = lambda p: objective.sums(policy.with_params(p), reference, batch)[0]  # noqa: E731
        return jax.grad(loss)(params), denominator

    with jax.set_mesh(mesh):
        g, denominator = grads(setup.state.params, batch)
        ref = setup.reference_logps()(reference, batch)
        _, metrics = setup.compile()(setup.state, reference, batch)
    return batch, g, float(denominator), np.asarray(ref), jax.device_get(metrics)


def test_packed_step_equals_padded_step(mesh):
    padded = run(mesh, config())
    packed = run(mesh, config(pack_length=T))
    batch = packed[0]
    assert isinstance(batch, PackedStepBatch) and batch.input_ids.shape[0] == 4  # groups
    # padding-free: fewer token slots than the padded [B, 2, T] layout, all real tokens kept
    assert batch.input_ids.size < B * 2 * T
    assert int(batch.attention_mask.sum()) == int(padded[0].attention_mask.sum())
    assert packed[2] == padded[2] > 0  # the denominator (kept pairs)
    # reference log-probs (the cached-reference path) in pair order, padding pair 0
    np.testing.assert_allclose(packed[3], padded[3], rtol=1e-6, atol=1e-5)
    assert np.all(padded[3][:-1] < 0)
    for name in ("loss", "rewards/margins", "logps/chosen", "grad_norm", "safety/kept"):
        np.testing.assert_allclose(packed[4][name], padded[4][name], rtol=1e-5, err_msg=name)
    assert packed[4]["tokens"] == padded[4]["tokens"]
    leaves_packed, leaves_padded = jax.tree.leaves(packed[1]), jax.tree.leaves(padded[1])
    assert max(float(np.abs(x).max()) for x in leaves_padded) > 1e-2  # gradients are not ~0
    for a, b in zip(leaves_packed, leaves_padded, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_packing_options_are_checked():
    with pytest.raises(ValueError, match=r"pack_length \(8\) must be 0 \(off\) or >= max_length"):
        config(pack_length=8)
    with pytest.raises(ValueError, match="applies to --objective preference, not sft"):
        config(pack_length=T, objective="sft")
    with pytest.raises(ValueError, match="length_normalize is not implemented with packing"):
        from safedpo_jax.train.objectives import build_objective

        build_objective(config(pack_length=T, length_normalize=True))
