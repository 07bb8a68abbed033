"""The step without the loop: `setup_step`, cached against in-step reference, log-prob chunking.

A 2-layer Llama with hidden size 32 and a 64-token vocabulary on 4 random pairs of 16
tokens, on one device. Cached and in-step references run the same arithmetic laid out
differently (rtol 1e-6 on the loss); chunked and full log-probs differ by float32
summation order (rtol 1e-5, as in tests/test_losses.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainhelpers import MICRO, B, T, batch, build

from safedpo_jax import logprobs, models, sharding
from safedpo_jax.train.config import from_preset
from safedpo_jax.train.setup import setup_step


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(1, 1, 1)


def config(**overrides):
    fields = dict(model_config=MICRO, pairs="helpful", batch_size=B, max_length=T)
    return from_preset("tiny", **{**fields, **overrides})


def first_loss(setup, *, reference_in_step, step_batch):
    fn = setup.compile(reference_in_step=reference_in_step)
    reference = setup.reference if reference_in_step else None
    with jax.set_mesh(setup.mesh):
        _, metrics = fn(setup.state, reference, step_batch)
    return float(metrics["loss"])


def test_setup_step_cached_reference_equals_in_step(mesh):
    setup = lambda: setup_step(  # noqa: E731
        config(), build(mesh, 0), mesh, reference=build(mesh, 1), total_steps=4
    )
    in_step, cached = setup(), setup()
    ref = cached.reference_logps()(cached.reference, batch())
    assert ref.shape == (B, 2) and ref.dtype == jnp.float32
    want = first_loss(in_step, reference_in_step=True, step_batch=batch())
    got = first_loss(cached, reference_in_step=False, step_batch=batch(ref))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert abs(want - np.log(2)) > 1e-3  # a different reference: not the ln 2 of a copy


def test_setup_step_without_reference_copies_the_policy(mesh):
    setup = setup_step(config(), build(mesh, 0), mesh, total_steps=4)
    ref, policy = jax.tree.leaves(setup.reference.params), jax.tree.leaves(setup.state.params)
    for a, b in zip(ref, policy, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(
        first_loss(setup, reference_in_step=True, step_batch=batch()), np.log(2), rtol=1e-6
    )
    sft = setup_step(config(objective="sft"), build(mesh, 0), mesh, total_steps=4)
    assert sft.reference is None


def test_auto_chunk_size_rule():
    assert logprobs.auto_chunk_size(8, 64, 678) == 0  # small logits: full
    for rows, length, vocab in [(2, 512, 32000), (4, 2048, 128256), (32, 512, 32000)]:
        c = logprobs.auto_chunk_size(rows, length, vocab)
        assert 0 < c <= length and c % 8 == 0
        # a block of c positions fits, up to the multiple-of-8 rounding, and is not
        # needlessly small: one chunk fewer would not fit
        assert 4 * rows * (c - 8) * vocab <= logprobs.LOGITS_CHUNK_BYTES
        n = -(-length // c)
        assert n == 1 or 4 * rows * -(-length // (n - 1)) * vocab > logprobs.LOGITS_CHUNK_BYTES


@pytest.mark.parametrize("chunked", [False, True])
def test_auto_chunked_log_probs_equal_full(mesh, monkeypatch, chunked):
    if chunked:  # shrink the thresholds so that this micro model gets 2 chunks
        monkeypatch.setattr(logprobs, "LOGITS_FULL_MAX_BYTES", 1)
        monkeypatch.setattr(logprobs, "LOGITS_CHUNK_BYTES", 4 * 2 * B * 8 * 64)
    assert logprobs.auto_chunk_size(2 * B, T, 64) == (8 if chunked else 0)
    model = models.Model.split(build(mesh, 0))
    params = model.params
    b = batch()

    def logps(chunk):
        fn = lambda p: logprobs.sequence_logps(  # noqa: E731
            model.with_params(p), b.input_ids, b.attention_mask, b.loss_mask, chunk_size=chunk
        )
        return jax.jit(jax.value_and_grad(lambda p: fn(p).sum()))(params), jax.jit(fn)(params)

    (want_sum, want_grad), want = logps(0)
    (got_sum, got_grad), got = logps(None)
    assert got.shape == (B, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, g in zip(jax.tree.leaves(want_grad), jax.tree.leaves(got_grad), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(a), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- memory
# XLA's own accounting of the compiled step (`memory_analysis`), nothing run: the
# buffers the step adds to the state must follow from the shapes.


def compiled_step(mesh, hf, **overrides):
    setup = setup_step(
        config(model_config=hf, **overrides),
        build(mesh, 0, hf),
        mesh,
        reference=build(mesh, 1, hf),
        total_steps=4,
    )
    with jax.set_mesh(mesh):
        compiled = setup.compile().lower(setup.state, setup.reference, batch()).compile()
    return setup, compiled.memory_analysis()


def test_step_donates_the_state_and_bounds_its_temp_buffers(mesh):
    """At a vocabulary-dominated shape (the [V, D] embedding and head are 97% of the
    parameters): every byte of the new state (parameters, both AdamW moments, counters) is
    written over the donated old one, and the step's temporary buffers hold the gradients
    (one parameter-sized block), the clipped gradients of the two [V, D] tables and at
    most half a table more (log-prob chunks, activations). Selecting between the updated
    and the old state with `where` made XLA copy the old moments before updating them in
    place (5.2 tables over the gradients here instead of 4.1)."""
    hf = {**MICRO, "vocab_size": 16384, "hidden_size": 128}
    setup, analysis = compiled_step(mesh, hf, logprob_chunk_size=8)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(setup.state))
    grads = sum(x.nbytes for x in jax.tree.leaves(setup.state.params))
    assert analysis.alias_size_in_bytes == state_bytes and state_bytes > 3 * grads
    table = 16384 * 128 * 4
    assert grads < 2.1 * table  # the shape is what the bound assumes
    assert analysis.temp_size_in_bytes <= grads + 2.5 * table, analysis.temp_size_in_bytes / table


def test_non_finite_step_leaves_the_state_untouched(mesh):
    setup = setup_step(config(), build(mesh, 0), mesh, reference=build(mesh, 1), total_steps=4)
    fn = setup.compile()
    state = setup.state
    with jax.set_mesh(mesh):
        state, metrics = fn(state, setup.reference, batch())  # a finite step: moments move
    assert bool(metrics["finite"]) and int(state.step) == 1
    norm = state.params["model"]["norm"]["scale"]
    norm.set_value(norm.get_value().at[0].set(jnp.nan))
    before = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(state.opt_state[1][0].mu))
    with jax.set_mesh(mesh):
        after, metrics = fn(state, setup.reference, batch())
    assert not bool(metrics["finite"])
    for a, b in zip(before, jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # NaN where NaN, every bit else
    assert int(after.step) == 1
