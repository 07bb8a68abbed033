"""The decoder's stacked blocks: scanned and unrolled agree, depth leaves the program's size flat.

Torch parity of the scanned decoder is tests/models/test_models_parity.py; these are the
properties of the stacking itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from modelhelpers import forward as _forward
from modelhelpers import grads as _grads
from modelhelpers import rngs as _rngs
from modelhelpers import variant as _variant

from safedpo_jax.models import DecoderConfig, init_model
from safedpo_jax.models.hf import iter_hf_tensors
from safedpo_jax.sharding import variable_names

# Qwen2 with per-layer attention types: layers 0 and 1 attend fully,
# layer 2 within a window of 3, so the scan must pick a different mask per layer.
MIXED = DecoderConfig(
    model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
    sliding_window=3, layer_types=("full_attention",) * 2 + ("sliding_attention",),
)  # fmt: skip
IDS = jnp.asarray(np.random.RandomState(0).randint(1, 64, (2, 9)), jnp.int32)
MASK = jnp.asarray([[1] * 9, [1] * 6 + [0] * 3], jnp.int32)


def test_windows_differ_per_layer():
    assert [MIXED.layer_window(i) for i in range(3)] == [None, None, 3]


def test_stacked_parameters_carry_a_layers_axis():
    model = init_model(MIXED, rngs=_rngs())
    up = model.model.layers.mlp.up_proj
    assert up[...].shape == (3, 32, 64)
    assert variable_names(up) == ("layers", "embed", "mlp")
    assert variable_names(model.model.layers.input_layernorm.scale) == ("layers", "norm")
    assert variable_names(model.model.norm.scale) == ("norm",)  # the final norm: one copy


def test_scanned_and_unrolled_agree_and_windows_apply_per_layer():
    scanned = init_model(MIXED, rngs=_rngs())
    unrolled = _variant(scanned, scan_layers=False)
    want = np.asarray(_forward(unrolled, IDS, MASK))
    np.testing.assert_allclose(np.asarray(_forward(scanned, IDS, MASK)), want, atol=1e-6, rtol=0)
    g_want, g_got = _grads(unrolled, IDS, MASK), _grads(scanned, IDS, MASK)
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    # the window matters: the same weights with full attention everywhere differ
    full = _variant(scanned)
    full.model.window_index = (0, 0, 0)
    full.model.windows = (None,)
    assert not np.allclose(np.asarray(_forward(full, IDS, MASK)), want, atol=1e-4)


def test_export_writes_layer_i_from_slice_i():
    model = init_model(MIXED, rngs=_rngs())
    tensors = dict(iter_hf_tensors(model))
    stacked = np.asarray(model.model.layers.mlp.down_proj[...])  # [L, F, D]
    for i in range(3):  # Hugging Face nn.Linear stores [out, in]
        np.testing.assert_array_equal(
            tensors[f"model.layers.{i}.mlp.down_proj.weight"], stacked[i].T
        )
    assert "model.layers.3.mlp.down_proj.weight" not in tensors


def _hlo_chars(layers: int, scan: bool) -> int:
    config = MIXED.replace(num_hidden_layers=layers, layer_types=None, sliding_window=None)
    abstract = nnx.eval_shape(lambda: init_model(config, rngs=_rngs(), scan_layers=scan))
    graphdef, state = nnx.split(abstract)

    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return len(jax.jit(forward).lower(state, IDS, MASK).as_text())


@pytest.mark.parametrize("scan", [True, False])
def test_program_size_is_flat_in_depth_only_when_scanned(scan):
    small, large = _hlo_chars(1, scan), _hlo_chars(6, scan)
    if scan:
        assert large < 1.05 * small, (small, large)
    else:
        assert large > 3 * small, (small, large)
