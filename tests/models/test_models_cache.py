"""KV-cache decoding equals the full forward on the concatenated sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safedpo_jax.models import DecoderConfig, KVCache, init_model


def _rngs():
    # rbg keys compile ~3x faster than threefry on CPU; sharding invariance is not needed here.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


CONFIGS = {
    "llama-gqa2": DecoderConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
    ),
    "mistral-window3": DecoderConfig(
        model_type="mistral", vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, sliding_window=3,
        initializer_range=0.2,
    ),
    "qwen3-tied": DecoderConfig(
        model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        tie_word_embeddings=True, initializer_range=0.2,
    ),
}  # fmt: skip


@nnx.jit
def full_forward(model, ids, mask):
    return model(ids, mask)


@nnx.jit(donate_argnums=3)
def step(model, ids, mask, cache):
    return model(ids, mask, cache=cache)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_with_cache_equals_full_forward(name):
    model = init_model(CONFIGS[name], rngs=_rngs())
    rng = np.random.RandomState(0)
    batch, prompt, new, max_length = 3, 6, 4, 12
    lengths = np.array([6, 3, 1])
    prompt_mask = (np.arange(prompt)[None] >= prompt - lengths[:, None]).astype(np.int32)
    prompt_ids = np.where(prompt_mask, rng.randint(1, 64, (batch, prompt)), 0)
    new_ids = rng.randint(1, 64, (batch, new))

    cache = model.init_cache(batch, max_length)
    assert isinstance(cache, KVCache) and cache.max_length == max_length
    logits, cache = step(model, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask), cache)
    steps = [np.asarray(logits)]
    for i in range(new):
        ones = jnp.ones((batch, 1), jnp.int32)
        logits, cache = step(model, jnp.asarray(new_ids[:, i : i + 1]), ones, cache)
        steps.append(np.asarray(logits))
    assert int(cache.index) == prompt + new
    np.testing.assert_array_equal(np.asarray(cache.positions), lengths + new)

    ids = np.concatenate([prompt_ids, new_ids], axis=1)
    mask = np.concatenate([prompt_mask, np.ones((batch, new), np.int32)], axis=1)
    full = np.asarray(full_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    cached = np.concatenate(steps, axis=1)
    assert np.isfinite(cached).all()
    real = mask.astype(bool)
    np.testing.assert_allclose(cached[real], full[real], atol=1e-5, rtol=0)


def test_cache_is_a_pytree_and_shards():
    from safedpo_jax.sharding import make_mesh

    model = init_model(CONFIGS["llama-gqa2"], rngs=_rngs())
    cache = model.init_cache(4, 8, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    leaves = jax.tree.leaves(cache)
    assert len(leaves) == 2 + 3  # keys and values stacked over the layers
    assert cache.keys.shape[0] == 2
    assert cache.keys.sharding.spec == jax.P(None, ("data", "fsdp"), None, "tensor", None)
    assert cache.mask.sharding.spec == jax.P(("data", "fsdp"), None)
