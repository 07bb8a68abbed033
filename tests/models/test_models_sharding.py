"""Sharded loading and initialisation on 8 fake CPU devices (see tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import P

from safedpo_jax.models import DecoderConfig, from_pretrained, init_model
from safedpo_jax.sharding import batch_sharding, make_mesh

MESHES = {
    "data2-fsdp2-tensor2": dict(data=2, fsdp=2, tensor=2),
    "fsdp8": dict(data=1, fsdp=8, tensor=1),
    "fsdp2-tensor4": dict(data=1, fsdp=2, tensor=4),
}
# Expected specs on the data2-fsdp2-tensor2 mesh (qwen2: 4 heads, 2 kv heads, tied).
SPECS_222 = {
    "model.embed_tokens": P("tensor", "fsdp"),
    # the blocks are stacked on a leading, replicated layer axis
    "model.layers.self_attn.q_proj": P(None, "fsdp", "tensor", None),
    "model.layers.self_attn.k_proj": P(None, "fsdp", "tensor", None),
    "model.layers.self_attn.q_bias": P(None, "tensor", None),
    "model.layers.self_attn.o_proj": P(None, "tensor", None, "fsdp"),
    "model.layers.mlp.gate_proj": P(None, "fsdp", "tensor"),
    "model.layers.mlp.down_proj": P(None, "tensor", "fsdp"),
    "model.layers.input_layernorm.scale": P(None, None),
}


def _flat(model):
    return {
        ".".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(nnx.state(model))
    }


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


@pytest.fixture(scope="module")
def qwen2_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    from torch_reference import CASES, build_hf

    path = tmp_path_factory.mktemp("qwen2")
    family, overrides = CASES["qwen2-bias-gqa2-tied"]
    build_hf(family, path, **overrides)
    return path


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_load_matches_unsharded(mesh_name, qwen2_checkpoint):
    from torch_reference import batches

    mesh = make_mesh(**MESHES[mesh_name])
    plain = from_pretrained(qwen2_checkpoint)
    sharded = from_pretrained(qwen2_checkpoint, mesh=mesh)
    plain_params, sharded_params = _flat(plain), _flat(sharded)
    for name, value in sharded_params.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(plain_params[name]), name)
        shard = value.addressable_shards[0].data
        assert shard.shape == value.sharding.shard_shape(value.shape), name
    if mesh_name == "data2-fsdp2-tensor2":
        for name, spec in SPECS_222.items():
            assert sharded_params[name].sharding.spec == spec, name
        q = sharded_params["model.layers.self_attn.q_proj"]
        assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)  # a slice, not the whole
    if mesh_name == "fsdp2-tensor4":  # 2 kv heads do not split 4 ways: replicated there
        assert sharded_params["model.layers.self_attn.k_proj"].sharding.spec == P(
            None, "fsdp", None, None
        )
    ids, mask = batches()["left"]
    ids, mask = np.tile(ids, (3, 1))[:8], np.tile(mask, (3, 1))[:8]  # B=8 splits on any mesh
    batch = batch_sharding(mesh, 2)
    want = np.asarray(_forward(plain, jnp.asarray(ids), jnp.asarray(mask)))
    got = _forward(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-5, rtol=0)


def test_sharded_init_matches_unsharded():
    config = DecoderConfig(
        model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    plain = _flat(init_model(config, rngs=nnx.Rngs(0)))
    sharded = _flat(init_model(config, rngs=nnx.Rngs(0), mesh=mesh))
    assert sharded["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert sharded["model.layers.self_attn.q_norm.scale"].sharding.spec == P(None, None)
    for name, value in plain.items():
        np.testing.assert_array_equal(np.asarray(sharded[name]), np.asarray(value), name)


def test_save_from_sharded_model_round_trips(qwen2_checkpoint, tmp_path):
    from safedpo_jax.models import save_pretrained

    sharded = from_pretrained(qwen2_checkpoint, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    save_pretrained(sharded, tmp_path, max_shard_size="20KB")
    plain, again = _flat(from_pretrained(qwen2_checkpoint)), _flat(from_pretrained(tmp_path))
    for name, value in plain.items():
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(value), name)
