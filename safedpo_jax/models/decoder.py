"""The decoder (Llama, Mistral, Qwen2, Qwen3 as switches of one module), its heads and KV cache.

Shape suffixes name dimensions: ``b`` batch, ``t`` new (query) positions, ``s`` key
positions (the cache length when decoding), ``d`` model width, ``n`` query heads, ``k``
key/value heads, ``h`` head width, ``f`` MLP width, ``v`` vocabulary, ``c`` score outputs.

Numerics. Parameters are stored in ``param_dtype`` and cast to the compute ``dtype`` where
they are used, so bf16 compute over fp32 master weights works. RMSNorm statistics, rotary
angles and the attention softmax run in float32. Every matmul of a forward pass runs under
``jax.default_matmul_precision(precision)``, ``precision="highest"`` by default: for
float32 inputs the backend default may be one bf16 pass (TPU) or TF32 (recent NVIDIA
GPUs), which makes summed sequence log-probs drift by nats between devices; "highest"
keeps float32 matmuls in float32 and costs nothing for bf16 inputs. Pass
``precision=None`` to inherit the ambient setting (e.g. for fast float32 experiments).

Positions come from the attention mask, ``cumsum(mask) - 1`` clipped at 0 (continuing from
the cache's per-row position when decoding), so right-padded training batches and
left-padded generation prompts both match Hugging Face on real tokens. Padding queries
attend to themselves only and so stay finite.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from safedpo_jax.models.config import DecoderConfig
>>> config = DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
...                        num_hidden_layers=1, num_attention_heads=2)
>>> model = CausalLM(config, rngs=nnx.Rngs(0))
>>> forward = nnx.jit(lambda model, ids, mask, cache: model(ids, mask, cache=cache))
>>> ids = jnp.array([[0, 5, 6, 7]]); mask = jnp.array([[0, 1, 1, 1]])  # left-padded
>>> forward(model, ids, mask, None).shape
(1, 4, 64)
>>> logits, cache = forward(model, ids, mask, model.init_cache(1, 8))
>>> int(cache.index), cache.positions.tolist()
(4, [3])
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from safedpo_jax.models.config import DecoderConfig

Array = jax.Array
DType = Any


class Buffer(nnx.Variable):
    """A non-trainable array loaded with the weights (safe-rlhf's normalizer statistics)."""


def _param(value: Array, names: tuple[str, ...]) -> nnx.Param:
    """A parameter carrying logical axis ``names`` (see `safedpo_jax.sharding`).

    A value with more dimensions than ``names`` has leading stacked-layer axes, named
    ``"layers"``.
    """
    names = ("layers",) * (value.ndim - len(names)) + tuple(names)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: DType) -> Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _precision(precision: str | None) -> contextlib.AbstractContextManager:
    """``jax.default_matmul_precision(precision)``, or no change when ``precision`` is None."""
    return (
        contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)
    )


def _dense(x: Array, w: Array, *, contract: int = 1, out_dtype: Any = None) -> Array:
    """``x[..., K...] . w[K..., N...]`` as one 2-D matmul over flattened rows.

    The last ``contract`` axes of ``x`` meet the first ``contract`` axes of ``w``; every
    leading axis of ``x`` (batch, time) is flattened into the rows, so the weight gradient
    contracts a single axis. An einsum over ``[b, t, ...]`` makes it contract two, and XLA's
    CPU backend then inserts slow transposing copies before that matmul (on 2 CPU cores a
    SwiGLU MLP's forward and backward ran at 50% of the matmul peak as ``btd,df->btf``
    einsums and at 92% as 2-D matmuls: experiments/benchmarks/dense_layout.py).
    ``out_dtype`` (e.g. float32 for the LM head) is the matmul's preferred element type.
    """
    lead, n_shape = x.shape[: x.ndim - contract], w.shape[contract:]
    k = math.prod(w.shape[:contract])
    y_rn = jnp.matmul(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=out_dtype)
    return y_rn.reshape(*lead, *n_shape)


def _linear(module: nnx.Module, name: str, x: Array, *, contract: int = 1) -> Array:
    """``x . module.<name>`` (`_dense` in the compute dtype) plus the projection's adapter.

    `safedpo_jax.models.lora` attaches low-rank adapters as ``module.lora[name]``; a
    module without them runs the plain projection.
    """
    y = _dense(x, getattr(module, name)[...].astype(module.dtype), contract=contract)
    adapters = getattr(module, "lora", None)
    if adapters is not None and name in adapters:
        y = y + adapters[name](x).astype(y.dtype)
    return y


def _window_key(window: int | None) -> str:
    return "full" if window is None else f"window{window}"


def _attention_masks(
    valid_bs: Array, q_slot_t: Array, k_slot_s: Array, windows: tuple[int | None, ...]
) -> dict[str, Array]:
    """``[B, 1, T, S]`` boolean masks, one per attention window, keyed by `_window_key`.

    Causal over slots (sequence indices); padding keys are masked except a query's own
    slot, so a padding query attends to itself and no row is empty (an all-masked row is
    where attention kernels make NaN). A window ``w`` keeps keys ``q - k < w`` (Hugging
    Face's sliding window: the query and the ``w - 1`` slots before it).
    """
    distance_ts = q_slot_t[:, None] - k_slot_s[None, :]
    base_bts = (distance_ts >= 0)[None] & (valid_bs[:, None, :] | (distance_ts == 0)[None])
    return {
        _window_key(w): (base_bts if w is None else base_bts & (distance_ts < w)[None])[:, None]
        for w in windows
    }


def segment_positions(segment_ids_bt: Array) -> Array:
    """Rotary positions of packed rows: ``0, 1, ...`` restarting where the segment id changes.

    Segments are contiguous runs of one id (0 = padding, whose positions do not matter).

    >>> segment_positions(jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])).tolist()
    [[0, 1, 2, 0, 1, 0, 0, 1]]
    """
    b, t = segment_ids_bt.shape
    index_t = jnp.arange(t)
    starts_bt = jnp.concatenate(
        [jnp.ones((b, 1), bool), segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1
    )
    start_bt = jax.lax.cummax(jnp.where(starts_bt, index_t, 0), axis=1)
    return (index_t - start_bt).astype(jnp.int32)


def _remat_policy(remat: bool | str) -> Callable[..., bool] | None:
    """``True``: save nothing; a string: a `jax.checkpoint_policies` member by name."""
    if isinstance(remat, str):
        try:
            return getattr(jax.checkpoint_policies, remat)
        except AttributeError:
            raise ValueError(f"unknown jax.checkpoint_policies member {remat!r}") from None
    return None


# --------------------------------------------------------------------------- KV cache
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for incremental decoding (a jit-able, donate-able pytree).

    Slots are sequence indices: a call with ``t`` new tokens writes slots
    ``[index, index + t)`` of every row. The protocol: prefill a left-padded prompt batch
    ``[B, P]`` with its mask into ``model.init_cache(B, max_length)``, then call with
    ``[B, 1]`` tokens and a ``[B, 1]`` mask of ones; ``index + t`` must not exceed
    ``max_length`` (nothing checks it under jit).

    Fields:
        keys: ``[L, B, S, K, H]`` rotated keys of the ``L`` layers in the compute dtype.
        values: ``[L, B, S, K, H]`` values.
        mask: ``[B, S]`` bool, True where a slot holds a real token.
        index: int32 scalar, the next slot to write (shared by all rows).
        positions: ``[B]`` int32, each row's next rotary position (its real-token count).
    """

    keys: Array
    values: Array
    mask: Array
    index: Array
    positions: Array

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]


# --------------------------------------------------------------------------- layers
class RMSNorm(nnx.Module):
    """``scale * x / sqrt(mean(x^2) + eps)`` with float32 statistics (Hugging Face order)."""

    def __init__(
        self, dim: int, *, eps: float, dtype: DType, param_dtype: DType, lead: tuple[int, ...] = ()
    ):
        self.scale = _param(jnp.ones((*lead, dim), param_dtype), ("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


def _rotate(x_btnh: Array, positions_bt: Array, inv_freq_h: np.ndarray) -> Array:
    """Rotary embedding, Hugging Face's half-split convention, angles in float32."""
    angle_bth = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_h)
    cos, sin = jnp.cos(angle_bth)[:, :, None, :], jnp.sin(angle_bth)[:, :, None, :]
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btnh.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rope, optional biases, q/k norms and a window."""

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DType,
        param_dtype: DType,
        attention_impl: str | None,
        lead: tuple[int, ...] = (),
    ):
        d, n, k, h = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        std = config.initializer_range
        self.q_proj = _param(
            _normal(rngs, (*lead, *(d, n, h)), std, param_dtype), ("embed", "heads", "head_dim")
        )
        self.k_proj = _param(
            _normal(rngs, (*lead, *(d, k, h)), std, param_dtype), ("embed", "kv_heads", "head_dim")
        )
        self.v_proj = _param(
            _normal(rngs, (*lead, *(d, k, h)), std, param_dtype), ("embed", "kv_heads", "head_dim")
        )
        self.o_proj = _param(
            _normal(rngs, (*lead, *(n, h, d)), std, param_dtype), ("heads", "head_dim", "embed")
        )
        # Optional parts are None when the family lacks them (one assignment each: NNX
        # fixes an attribute's data/static status when it is first set).
        zeros = lambda *shape: jnp.zeros((*lead, *shape), param_dtype)  # noqa: E731
        bias = config.qkv_bias
        self.q_bias = _param(zeros(n, h), ("heads", "head_dim")) if bias else None
        self.k_bias = _param(zeros(k, h), ("kv_heads", "head_dim")) if bias else None
        self.v_bias = _param(zeros(k, h), ("kv_heads", "head_dim")) if bias else None
        self.o_bias = _param(zeros(d), ("embed",)) if config.o_bias else None
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, lead=lead)
        self.q_norm = RMSNorm(h, **norm) if config.qk_norm else None
        self.k_norm = RMSNorm(h, **norm) if config.qk_norm else None
        self.inv_freq = tuple(config.rope_inv_freq().tolist())
        self.dtype = dtype
        self.attention_impl = attention_impl

    def _project(self, x_btd: Array, name: str, b: nnx.Param | None) -> Array:
        y = _linear(self, name, x_btd)  # btd,dnh->btnh
        return y if b is None else y + b[...].astype(self.dtype)

    def __call__(
        self,
        x_btd: Array,
        positions_bt: Array,
        mask_b1ts: Array,
        kv: tuple[Array, Array, Array] | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """``kv``: ``(keys_bskh, values_bskh, write_index)`` of a cache, or None."""
        q_btnh = self._project(x_btd, "q_proj", self.q_bias)
        k_btkh = self._project(x_btd, "k_proj", self.k_bias)
        v_btkh = self._project(x_btd, "v_proj", self.v_bias)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        inv_freq = np.asarray(self.inv_freq, np.float32)
        q_btnh = _rotate(q_btnh, positions_bt, inv_freq)
        k_btkh = _rotate(k_btkh, positions_bt, inv_freq)
        new_kv = None
        if kv is not None:
            keys_bskh, values_bskh, index = kv
            start = (0, index, 0, 0)
            k_btkh = jax.lax.dynamic_update_slice(keys_bskh, k_btkh.astype(keys_bskh.dtype), start)
            v_btkh = jax.lax.dynamic_update_slice(
                values_bskh, v_btkh.astype(keys_bskh.dtype), start
            )
            new_kv = (k_btkh, v_btkh)
        out_btnh = jax.nn.dot_product_attention(
            q_btnh,
            k_btkh.astype(self.dtype),
            v_btkh.astype(self.dtype),
            mask=mask_b1ts,
            implementation=self.attention_impl,
        )
        y_btd = _linear(self, "o_proj", out_btnh, contract=2)  # btnh,nhd->btd
        if self.o_bias is not None:
            y_btd = y_btd + self.o_bias[...].astype(self.dtype)
        return y_btd, new_kv


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DType,
        param_dtype: DType,
        lead: tuple[int, ...] = (),
    ):
        d, f, std = config.hidden_size, config.intermediate_size, config.initializer_range
        normal = lambda *shape: _normal(rngs, (*lead, *shape), std, param_dtype)  # noqa: E731
        self.gate_proj = _param(normal(d, f), ("embed", "mlp"))
        self.up_proj = _param(normal(d, f), ("embed", "mlp"))
        self.down_proj = _param(normal(f, d), ("mlp", "embed"))
        self.dtype = dtype

    def __call__(self, x_btd: Array) -> Array:
        gate_btf = _linear(self, "gate_proj", x_btd)
        up_btf = _linear(self, "up_proj", x_btd)
        return _linear(self, "down_proj", jax.nn.silu(gate_btf) * up_btf)


class Block(nnx.Module):
    """Pre-norm residual block: attention then MLP.

    With ``lead=(L,)`` every parameter has a leading axis of ``L`` layers (logical name
    ``"layers"``): the decoder keeps all its blocks as one such stack and applies it with
    `jax.lax.scan`, merging each step's slice of the state into this module.
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DType,
        param_dtype: DType,
        attention_impl: str | None,
        lead: tuple[int, ...] = (),
    ):
        kw = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, lead=lead)
        self.input_layernorm = RMSNorm(config.hidden_size, **kw)
        self.self_attn = Attention(
            config,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=attention_impl,
            lead=lead,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **kw)
        self.mlp = MLP(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, lead=lead)

    def __call__(
        self,
        x_btd: Array,
        positions_bt: Array,
        mask_b1ts: Array,
        kv: tuple[Array, Array, Array] | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        h_btd, new_kv = self.self_attn(self.input_layernorm(x_btd), positions_bt, mask_b1ts, kv)
        x_btd = x_btd + h_btd
        x_btd = x_btd + self.mlp(self.post_attention_layernorm(x_btd))
        return x_btd, new_kv


class Decoder(nnx.Module):
    """Token embedding, the blocks and the final norm (Hugging Face's ``model.*``).

    The ``L`` blocks are one `Block` whose parameters are stacked on a leading layer axis
    (``model.layers.mlp.up_proj`` is ``[L, D, F]``). The forward pass applies them with
    `jax.lax.scan` (``scan_layers=True``): the block is traced and compiled once whatever
    the depth. ``scan_layers=False`` runs a Python loop over the layer slices instead (the
    same numbers; XLA then sees ``L`` copies of the block, so compiling grows with depth).
    With ``remat``, each layer's step is wrapped in `jax.checkpoint` with that policy.
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DType,
        param_dtype: DType,
        attention_impl: str | None,
        remat: bool | str,
        scan_layers: bool = True,
    ):
        self.embed_tokens = _param(
            _normal(
                rngs, (config.vocab_size, config.hidden_size), config.initializer_range, param_dtype
            ),
            ("vocab", "embed"),
        )
        n_layers = config.num_hidden_layers
        self.layers = Block(
            config,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=attention_impl,
            lead=(n_layers,),
        )
        self.norm = RMSNorm(
            config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        # The distinct attention windows (None: full attention), one mask each per call,
        # and each layer's index into them.
        layer_windows = [config.layer_window(i) for i in range(n_layers)]
        self.windows = tuple(dict.fromkeys(layer_windows))
        self.window_index = tuple(self.windows.index(w) for w in layer_windows)
        self.num_layers = n_layers
        self.dtype = dtype
        self.remat = remat
        self.scan_layers = scan_layers

    def __call__(
        self,
        input_ids_bt: Array,
        mask_bt: Array | None,
        cache: KVCache | None,
        segment_ids_bt: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        b, t = input_ids_bt.shape
        if segment_ids_bt is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) cannot be used with a KV cache")
            mask_bt = segment_ids_bt > 0
        mask_bt = jnp.ones((b, t), bool) if mask_bt is None else mask_bt.astype(bool)
        counts_bt = jnp.cumsum(mask_bt.astype(jnp.int32), axis=1)
        if segment_ids_bt is not None:
            positions_bt = segment_positions(segment_ids_bt)
            valid_bs, q_slot_t, k_slot_s = mask_bt, jnp.arange(t), jnp.arange(t)
        elif cache is None:
            positions_bt = jnp.maximum(counts_bt - 1, 0)
            valid_bs, q_slot_t, k_slot_s = mask_bt, jnp.arange(t), jnp.arange(t)
        else:
            start_b1 = cache.positions[:, None]
            positions_bt = jnp.maximum(start_b1 + counts_bt - 1, start_b1)
            valid_bs = jax.lax.dynamic_update_slice(cache.mask, mask_bt, (0, cache.index))
            q_slot_t, k_slot_s = cache.index + jnp.arange(t), jnp.arange(cache.max_length)
        masks = _attention_masks(valid_bs, q_slot_t, k_slot_s, self.windows)
        if segment_ids_bt is not None:  # attention stays inside each packed segment
            same_b1ts = (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]
            masks = {key: m & same_b1ts for key, m in masks.items()}
        # [W, B, 1, T, S]: the masks of the distinct windows, selected per layer by index.
        masks_wb1ts = jnp.stack([masks[_window_key(w)] for w in self.windows])
        x_btd = jnp.take(self.embed_tokens[...], input_ids_bt, axis=0).astype(self.dtype)
        x_btd, new_kv = self.apply_layers(x_btd, positions_bt, masks_wb1ts, cache)
        x_btd = self.norm(x_btd)
        if cache is None:
            return x_btd, None
        new_cache = KVCache(
            keys=new_kv[0],
            values=new_kv[1],
            mask=valid_bs,
            index=cache.index + t,
            positions=cache.positions + mask_bt.sum(axis=1, dtype=jnp.int32),
        )
        return x_btd, new_cache

    def apply_layers(
        self, x_btd: Array, positions_bt: Array, masks_wb1ts: Array, cache: KVCache | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """The blocks in order; with a cache also the new ``[L, B, S, K, H]`` keys and values."""
        graphdef, state = nnx.split(self.layers)
        single_window = masks_wb1ts.shape[0] == 1

        # Each layer as a pure function of its slice of the state (not `nnx.remat` /
        # `nnx.scan`, which write state back and so fail when the model was merged from
        # traced parameters inside `jax.grad`, as in the train step).
        def layer(x: Array, xs: tuple[Any, ...]) -> tuple[Array, Any]:
            layer_state, window, kv = xs
            mask_b1ts = masks_wb1ts[0] if single_window else masks_wb1ts[window]
            kv = None if kv is None else (kv[0], kv[1], cache.index)
            return nnx.merge(graphdef, layer_state)(x, positions_bt, mask_b1ts, kv)

        if self.remat is not False and cache is None:
            layer = jax.checkpoint(layer, policy=_remat_policy(self.remat))
        windows = jnp.asarray(self.window_index, jnp.int32)
        kv_xs = None if cache is None else (cache.keys, cache.values)
        if self.scan_layers:
            return jax.lax.scan(layer, x_btd, (state, windows, kv_xs))
        outs = []
        for i in range(self.num_layers):
            x_btd, out = layer(x_btd, jax.tree.map(lambda a, i=i: a[i], (state, windows, kv_xs)))
            outs.append(out)
        return x_btd, jax.tree.map(lambda *a: jnp.stack(a), *outs) if cache else None

    def init_cache(
        self, config: DecoderConfig, batch_size: int, max_length: int, mesh: Mesh | None
    ) -> KVCache:
        n = config.num_hidden_layers
        shape = (n, batch_size, max_length, config.num_key_value_heads, config.head_dim)
        cache = KVCache(
            keys=jnp.zeros(shape, self.dtype),
            values=jnp.zeros(shape, self.dtype),
            mask=jnp.zeros((batch_size, max_length), bool),
            index=jnp.zeros((), jnp.int32),
            positions=jnp.zeros((batch_size,), jnp.int32),
        )
        if mesh is None:
            return cache
        from safedpo_jax.sharding import named_sharding

        kv_names = ("layers", "batch", "length", "kv_heads", "head_dim")
        names = KVCache(
            keys=kv_names,
            values=kv_names,
            mask=("batch", "length"),
            index=(),
            positions=("batch",),
        )
        return jax.tree.map(
            lambda x, axes: jax.device_put(x, named_sharding(mesh, axes, x.shape)),
            cache,
            names,
        )


# --------------------------------------------------------------------------- models
class _Base(nnx.Module):
    """What `CausalLM` and `ScoreModel` share: the config, options and the decoder.

    Options: ``dtype`` the compute dtype, ``param_dtype`` the storage dtype of parameters,
    ``remat`` False, True (each block rematerialised, nothing saved) or the name of a
    `jax.checkpoint_policies` member (e.g. ``"dots_with_no_batch_dims_saveable"``); it
    applies to forward passes without a cache (training), never to cached decoding,
    ``attention_impl`` None (XLA), ``"xla"`` or ``"cudnn"`` (passed to
    `jax.nn.dot_product_attention`), ``precision`` the matmul precision of the forward pass,
    ``scan_layers`` True (`jax.lax.scan` over the stacked blocks: compile time flat in
    depth) or False (a Python loop over them; same parameters and numbers).
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        param_dtype: DType = jnp.float32,
        remat: bool | str = False,
        attention_impl: str | None = None,
        precision: str | None = "highest",
        scan_layers: bool = True,
    ):
        if attention_impl not in (None, "xla", "cudnn"):
            raise ValueError(
                f"attention_impl must be None, 'xla' or 'cudnn', got {attention_impl!r}"
            )
        _remat_policy(remat)
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.model = Decoder(
            config,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=attention_impl,
            remat=remat,
            scan_layers=scan_layers,
        )


class CausalLM(_Base):
    """A decoder with a language-model head (``*ForCausalLM``); options as in `_Base`.

    ``model(input_ids, attention_mask)`` maps int ``[B, T]`` ids and a ``[B, T]`` mask
    (1 = real token) to ``[B, T, V]`` float32 logits (the head's matmul takes compute-dtype
    inputs and emits float32, as the chunked loss path does); ``return_hidden=True``
    gives the ``[B, T, D]`` hidden states after the final norm instead (so that a loss can
    chunk the vocabulary projection with `lm_head_weight`). With ``cache=`` it appends the
    tokens to the cache and returns ``(logits_or_hidden, cache)``.

    Packed rows (padding-free training): ``segment_ids`` int ``[B, T]`` numbers the
    sequences packed into each row (contiguous runs, 1, 2, ...; 0 = padding) and replaces
    the mask: attention stays inside each segment and rotary positions restart at 0 at
    each segment's start (`segment_positions`), so every segment's logits equal those of
    the sequence run alone. Not with a cache. The segments enter attention as part of the
    boolean ``[B, 1, T, S]`` mask, the same argument every path already takes: XLA's
    attention (CPU, GPU and TPU; this decoder has no TPU splash-attention path) applies it
    directly, and ``attention_impl="cudnn"`` receives it as JAX turns any boolean mask for
    cuDNN into an additive bias (not cuDNN's segment fast path). The cuDNN case with
    segments has not run on a GPU here; the mask path it uses matched XLA on an H100.
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, **options: Any):
        super().__init__(config, rngs=rngs, **options)
        std, shape = config.initializer_range, (config.hidden_size, config.vocab_size)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else _param(_normal(rngs, shape, std, self.param_dtype), ("embed", "vocab"))
        )

    def lm_head_weight(self) -> Array:
        """The ``[D, V]`` unembedding in the compute dtype (the embedding's transpose when tied)."""
        w = self.model.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(self.dtype)

    def init_cache(self, batch_size: int, max_length: int, *, mesh: Mesh | None = None) -> KVCache:
        """An empty `KVCache` for ``batch_size`` rows of up to ``max_length`` tokens.

        With ``mesh``, rows are split over the batch axes and key/value heads over ``tensor``.
        """
        return self.model.init_cache(self.config, batch_size, max_length, mesh)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        segment_ids: Array | None = None,
    ) -> Array | tuple[Array, KVCache]:
        with _precision(self.precision):
            hidden_btd, new_cache = self.model(input_ids, attention_mask, cache, segment_ids)
            # btd,dv->btv unless the hidden states are asked for
            # float32 logits whatever the compute dtype: bf16 logits lose up to ~0.5 nats
            # per sequence before the log-softmax (the chunked loss path keeps float32 too)
            out = (
                hidden_btd
                if return_hidden
                else _dense(hidden_btd, self.lm_head_weight(), out_dtype=jnp.float32)
            )
        return out if cache is None else (out, new_cache)


def normalizer_defaults(config: DecoderConfig) -> dict[str, np.ndarray]:
    """safe-rlhf normalizer statistics from config.json (``mean``, ``var``), else 0 and 1."""
    extra, c = dict(config.extra), config.score_dim
    mean = json.loads(extra.get("mean", "null"))
    var = json.loads(extra.get("var", "null"))
    mean = np.zeros(c) if mean is None else mean
    var = np.ones(c) if var is None else var
    return {
        "normalizer_mean": np.reshape(mean, (c,)).astype(np.float32),
        "normalizer_var": np.reshape(var, (c,)).astype(np.float32),
        "normalizer_count": np.zeros((1,), np.int32),
    }


class ScoreModel(_Base):
    """A decoder with a score head (HF ``*ForSequenceClassification`` or safe-rlhf ``*ForScore``).

    ``score_model(input_ids, attention_mask)`` returns the head's float32 output at each
    row's last real token (the last position where the mask is 1, so right and left padding
    both work): ``[B]`` when the head has one output, else ``[B, C]``;
    ``per_token=True`` gives the output at every position, ``[B, T]`` or ``[B, T, C]``
    (critics' values). The head runs at every position in either case (``B * T * D * C``
    multiply-adds, negligible next to the decoder), so the end score is the per-token
    output at the last real token by construction.

    Semantics follow the two formats:

    - Hugging Face classifiers pool at the rightmost token that is not ``pad_token_id``;
      with a mask built as ``ids != pad`` this is the same position. The head has no bias.
    - safe-rlhf's ``ScoreModelMixin`` (``LlamaForScore``): ``end_scores`` is the head
      (with a bias when config ``bias`` is set) at the last index where the attention mask
      is set, cast to float32. When config ``do_normalize`` is true the score is normalised
      with the checkpoint's ``normalizer.mean`` / ``normalizer.var`` per ``score_type``:
      reward ``(x - mean) / (std + 1e-8)``, cost ``x / (std + 1e-8)``, critic unchanged.
      The beaver evaluators ship with ``do_normalize`` false: their scores are raw.

    >>> from flax import nnx
    >>> config = DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                        num_hidden_layers=1, num_attention_heads=2,
    ...                        architectures=("LlamaForScore",))
    >>> model = ScoreModel(config, rngs=nnx.Rngs(0))
    >>> ids, mask = jnp.array([[5, 6, 7, 0]]), jnp.array([[1, 1, 1, 0]])  # right-padded
    >>> end, values = model(ids, mask), model(ids, mask, per_token=True)
    >>> end.shape, values.shape, end.dtype.name
    ((1,), (1, 4), 'float32')
    >>> bool(end[0] == values[0, 2]), float(values[0, 3])
    (True, 0.0)
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, **options: Any):
        super().__init__(config, rngs=rngs, **options)
        c, std, dtype = config.score_dim, config.initializer_range, self.param_dtype
        self.score_head = _param(
            _normal(rngs, (config.hidden_size, c), std, dtype), ("embed", "score")
        )
        safe_rlhf = config.kind == "score"
        self.score_bias = (
            _param(jnp.zeros((c,), dtype), ("score",)) if safe_rlhf and config.score_bias else None
        )
        # safe-rlhf's normalizer statistics: buffers (not trained), only in that format.
        stats = normalizer_defaults(config)
        buffer = lambda name, names: (  # noqa: E731
            Buffer(jnp.asarray(stats[name]), out_sharding=names, eager_sharding=False)
            if safe_rlhf
            else None
        )
        self.normalizer_mean = buffer("normalizer_mean", ("score",))
        self.normalizer_var = buffer("normalizer_var", ("score",))
        self.normalizer_count = buffer("normalizer_count", (None,))

    def __call__(
        self, input_ids: Array, attention_mask: Array | None = None, *, per_token: bool = False
    ) -> Array:
        """Scores of int ``[B, T]`` ids under a ``[B, T]`` mask (1 = real token; None: all real).

        Returns float32 ``[B]`` (``[B, C]`` when ``score_dim > 1``): the score at each row's
        last real token. With ``per_token=True``: ``[B, T]`` (``[B, T, C]``), the head (with
        its bias and normalisation, exactly as for the end score) at every position, 0 at
        padding positions; the end score is this array at the last real token of each row,
        whatever the padding side (a value model's per-token values, as safe-rlhf's
        ``scores``).
        """
        b, t = input_ids.shape
        mask_bt = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        with _precision(self.precision):
            hidden_btd, _ = self.model(input_ids, mask_bt, None)
            score_btc = jnp.einsum(
                "btd,dc->btc",
                hidden_btd,
                self.score_head[...].astype(self.dtype),
                preferred_element_type=jnp.float32,
            )
        if self.score_bias is not None:
            score_btc = score_btc + self.score_bias[...].astype(self.dtype).astype(jnp.float32)
        if self.config.do_normalize:
            mean_c = self.normalizer_mean[...].astype(jnp.float32)
            std_c = jnp.sqrt(self.normalizer_var[...].astype(jnp.float32))
            fn = self.config.normalize_function
            if fn == "affine":
                score_btc = (score_btc - mean_c) / (std_c + 1e-8)
            elif fn == "scale":
                score_btc = score_btc / (std_c + 1e-8)
        if per_token:
            out = jnp.where(mask_bt[:, :, None], score_btc, 0.0)
        else:
            end_b = jnp.argmax(jnp.where(mask_bt, jnp.arange(t), -1), axis=1)
            out = jnp.take_along_axis(score_btc, end_b[:, None, None], axis=1)[:, 0]
        return out[..., 0] if self.config.score_dim == 1 else out


def model_class(config: DecoderConfig) -> type[CausalLM] | type[ScoreModel]:
    """`CausalLM` for ``*ForCausalLM`` configs, `ScoreModel` for score heads."""
    return CausalLM if config.kind == "causal_lm" else ScoreModel


def init_model(
    config: DecoderConfig,
    *,
    rngs: nnx.Rngs,
    dtype: DType = jnp.float32,
    param_dtype: DType = jnp.float32,
    mesh: Mesh | None = None,
    remat: bool | str = False,
    attention_impl: str | None = None,
    precision: str | None = "highest",
    scan_layers: bool = True,
) -> CausalLM | ScoreModel:
    """A randomly initialised model for ``config`` (`CausalLM` or `ScoreModel` by ``config.kind``).

    Weights are normal with standard deviation ``config.initializer_range``, norms ones,
    biases zeros. With ``mesh``, every parameter is created directly in its sharded place
    (one jitted initialiser whose output shardings come from the logical-axis rules), so
    the full model never sits on one device; the values equal the unsharded ones.

    The compiled initialiser is cached per (class, config, options, mesh).
    """
    options = dict(
        dtype=dtype,
        param_dtype=param_dtype,
        remat=remat,
        attention_impl=attention_impl,
        precision=precision,
        scan_layers=scan_layers,
    )
    graphdef, create = _initializer(model_class(config), config, tuple(options.items()), mesh)
    return nnx.merge(graphdef, create(rngs.params()))


@functools.lru_cache(maxsize=8)
def _initializer(cls: type[_Base], config: DecoderConfig, options: tuple, mesh: Mesh | None):
    """``(graphdef, jitted key -> state)`` with output shardings from the logical-axis rules."""
    build = lambda key: cls(config, rngs=nnx.Rngs(key), **dict(options))  # noqa: E731
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build(0)))
    shardings = None
    if mesh is not None:
        from safedpo_jax.sharding import state_shardings

        shardings = state_shardings(abstract_state, mesh)
    return graphdef, jax.jit(lambda key: nnx.state(build(key)), out_shardings=shardings)
