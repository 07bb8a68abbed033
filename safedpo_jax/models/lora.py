"""Low-rank adapters (LoRA) on the decoder's projections, their merge, and PEFT I/O.

An adapter on a projection ``W`` (stored ``[in..., out...]``) adds ``scale * (x A) B`` to
``x W``, with ``A: [in, r]`` (PEFT's uniform ``+-1/sqrt(in)`` start), ``B: [r, out]``
(zeros, so a fresh adapter leaves the model unchanged) and ``scale = alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski 2023). Adapters sit on attention
``q/k/v/o_proj`` and MLP ``gate/up/down_proj`` by default; a name list or a regex over
PEFT's module names (``model.layers.3.self_attn.q_proj``) chooses others.

Built on Flax NNX's LoRA parameter type (`flax.nnx.LoRAParam`) and `flax.nnx.LoRA`'s
2-D ``x @ A @ B`` form, with the scale, the reshape between the decoder's multi-axis
weights and 2-D adapters, a leading layer axis and logical-axis names so the adapters
shard by the same rules as the weights they adapt. qwix (Tunix's LoRA and quantisation
library) is not installed here and would intercept the decoder's matmuls by tracing; one
module is enough for a decoder whose projections already go through one function
(`safedpo_jax.models.decoder._linear`, the only hook).

Stacked layers. The decoder keeps its ``L`` blocks as one stack (every weight has a
leading layer axis, applied with `jax.lax.scan`), so an adapter on a projection is one
`Adapter` whose ``A`` is ``[L, in, r]`` and ``B`` ``[L, r, out]``: one pair per layer,
sliced and scanned with the block. When a regex selects the projection in some layers
only, the adapter carries a ``[L]`` 0/1 `LayerGate` (frozen, not a parameter) that
switches the other layers' slices off; their ``A``/``B`` then get zero gradients and are
neither exported nor merged. PEFT names and files stay per layer.

Training splits a model with adapters into the adapters (trainable, `split`) and the rest
(the frozen base, never differentiated, with no optimizer state); the reference of a
preference objective is the same graph and the same base arrays with the adapters' initial
values, frozen: the bare base for fresh adapters (``B = 0``), base plus the SFT adapter
when training starts from one (`load_peft_adapter`).

PEFT format (``peft.PeftModel.from_pretrained(base, path)`` loads it): ``adapter_config.json``
(``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ...) and
``adapter_model.safetensors`` with keys
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` (``[r, in]``) and
``...lora_B.weight`` (``[out, r]``); PEFT's delta of ``nn.Linear``'s ``[out, in]`` weight
is ``scale * B_pt A_pt``, ours is its transpose reshaped.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from safedpo_jax.models.decoder import CausalLM
>>> from safedpo_jax.models.config import DecoderConfig
>>> config = DecoderConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
...                        num_hidden_layers=1, num_attention_heads=2)
>>> model = CausalLM(config, rngs=nnx.Rngs(0))
>>> ids = jnp.array([[1, 2, 3]])
>>> before = model(ids)
>>> model = add_lora(model, LoRAConfig(rank=2, alpha=4.0), rngs=nnx.Rngs(1))
>>> bool(jnp.array_equal(model(ids), before))  # B = 0: the adapters start as a no-op
True
>>> sorted(split(model).params["model"]["layers"]["mlp"]["lora"])
['down_proj', 'gate_proj', 'up_proj']
>>> model.model.layers.mlp.lora["up_proj"].lora_a.shape  # [L, in, r]
(1, 8, 2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from safedpo_jax.models.decoder import Attention, CausalLM, ScoreModel
from safedpo_jax.models.hf import _gather
from safedpo_jax.models.options import Model

Array = jax.Array
ATTENTION_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS: tuple[str, ...] = ATTENTION_TARGETS + MLP_TARGETS
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."

# projection -> (axes of W that the input contracts, logical name of the flattened input,
# logical name of the flattened output); the names shard A's rows and B's columns like W.
_LAYOUT: dict[str, tuple[int, str, str]] = {
    "q_proj": (1, "embed", "heads"),
    "k_proj": (1, "embed", "kv_heads"),
    "v_proj": (1, "embed", "kv_heads"),
    "o_proj": (2, "heads", "embed"),
    "gate_proj": (1, "embed", "mlp"),
    "up_proj": (1, "embed", "mlp"),
    "down_proj": (1, "mlp", "embed"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Which projections get adapters and how they are scaled.

    rank: ``r`` (>= 1). alpha: ``lora_alpha``; the update is scaled by ``alpha / r``, or
    ``alpha / sqrt(r)`` with ``use_rslora``. targets: projection names (``q_proj`` ...
    ``down_proj``) or a regex fully matching PEFT module names
    (``model.layers.{i}.self_attn.q_proj``, ``model.layers.{i}.mlp.down_proj``).
    dropout: PEFT's ``lora_dropout``; only 0 is implemented (a clear error otherwise).
    param_dtype: the adapters' storage dtype (the frozen base keeps its own).

    >>> LoRAConfig(rank=4, alpha=8.0).scale, LoRAConfig(rank=4, alpha=8.0, use_rslora=True).scale
    (2.0, 4.0)
    """

    rank: int
    alpha: float
    targets: tuple[str, ...] | str = DEFAULT_TARGETS
    use_rslora: bool = False
    dropout: float = 0.0
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRAConfig: rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig: alpha must be > 0, got {self.alpha!r}")
        if self.dropout != 0.0:
            raise ValueError(f"LoRAConfig: dropout {self.dropout} is not implemented (only 0.0 is)")
        if isinstance(self.targets, str):
            re.compile(self.targets)
        else:
            unknown = sorted(set(self.targets) - set(DEFAULT_TARGETS))
            if unknown or not self.targets:
                raise ValueError(
                    f"LoRAConfig: targets must be names among {DEFAULT_TARGETS} or a regex, "
                    f"got {self.targets!r}"
                )

    @property
    def scale(self) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def matches(self, module_name: str) -> bool:
        """Whether the PEFT module name (``model.layers.0.self_attn.q_proj``) gets an adapter."""
        if isinstance(self.targets, str):
            return re.fullmatch(self.targets, module_name) is not None
        return module_name.rsplit(".", 1)[-1] in self.targets


class LayerGate(nnx.Variable):
    """A frozen ``[L]`` 0/1 switch of a stacked adapter's layers (not trained, not exported)."""


class Adapter(nnx.Module):
    """LoRA on one projection: ``scale * (x A) B`` in the weight's layout.

    ``x`` is ``[..., in...]`` (the last ``contract`` axes meet the weight); the output is
    ``[..., out...]``. ``lora_a``: ``[*lead, in, r]`` (PEFT's start, uniform in
    ``+-1/sqrt(in)``), ``lora_b``: ``[*lead, r, out]`` (zeros), both `nnx.LoRAParam`.
    ``lead=(L,)`` stacks one adapter per decoder layer (logical axis ``"layers"``): the
    decoder's scan hands each step a layer's slice, which this module then applies.
    ``active``: per layer, whether it is adapted (None: every layer); the others are
    switched off by a `LayerGate`.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        *,
        contract: int,
        names: tuple[str, str],
        rank: int,
        scale: float,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
        lead: tuple[int, ...] = (),
        active: tuple[bool, ...] | None = None,
    ):
        self.in_features = math.prod(weight_shape[:contract])
        self.out_features = math.prod(weight_shape[contract:])
        layer_names = ("layers",) * len(lead)
        bound = 1.0 / math.sqrt(self.in_features)  # PEFT's kaiming_uniform(a=sqrt(5)) on [r, in]
        a = jax.random.uniform(
            rngs.params(), (*lead, self.in_features, rank), jnp.float32, -bound, bound
        )
        self.lora_a = nnx.LoRAParam(
            a.astype(param_dtype),
            out_sharding=(*layer_names, names[0], None),
            eager_sharding=False,
        )
        self.lora_b = nnx.LoRAParam(
            jnp.zeros((*lead, rank, self.out_features), param_dtype),
            out_sharding=(*layer_names, None, names[1]),
            eager_sharding=False,
        )
        if active is not None and (len(lead) != 1 or len(active) != lead[0]):
            raise ValueError(f"Adapter: active {active} does not match the layer axis {lead}")
        self.active = None if active is None or all(active) else tuple(bool(x) for x in active)
        self.gate = (
            None
            if self.active is None
            else LayerGate(
                jnp.asarray(self.active, jnp.float32),
                out_sharding=layer_names,
                eager_sharding=False,
            )
        )
        self.contract = contract
        self.weight_shape = tuple(weight_shape)
        self.out_shape = tuple(weight_shape[contract:])
        self.scale = float(scale)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """Applies one layer's adapter (inside the decoder's scan the parameters are 2-D)."""
        if len(self.lora_a.shape) != 2:
            raise ValueError(
                f"Adapter: call one layer's slice (A is {self.lora_a.shape}; the decoder's "
                "scan slices the stack)"
            )
        lead = x.shape[: x.ndim - self.contract]
        x_rn = x.reshape(-1, self.in_features).astype(self.dtype)
        scale = jnp.asarray(self.scale, self.dtype)
        if self.gate is not None:
            scale = scale * self.gate[...].astype(self.dtype)
        z_rr = jnp.matmul(x_rn, self.lora_a[...].astype(self.dtype)) * scale
        y_rn = jnp.matmul(z_rr, self.lora_b[...].astype(self.dtype))
        return y_rn.reshape(*lead, *self.out_shape)

    def delta(self) -> Array:
        """``scale * A B`` reshaped to ``[*lead, in..., out...]`` (float32; gated layers 0)."""
        a = self.lora_a[...].astype(jnp.float32)
        b = self.lora_b[...].astype(jnp.float32)
        d = self.scale * jnp.matmul(a, b, precision="highest")
        if self.gate is not None:
            d = d * self.gate[...].astype(jnp.float32)[:, None, None]
        return d.reshape(*a.shape[:-2], *self.weight_shape)


def _projection_modules(model: CausalLM | ScoreModel) -> list[tuple[str, nnx.Module]]:
    """``(PEFT module kind, stacked attention or MLP module)`` of the decoder's block stack."""
    block = model.model.layers
    return [("self_attn", block.self_attn), ("mlp", block.mlp)]


def _targets_of(module: nnx.Module) -> tuple[str, ...]:
    return ATTENTION_TARGETS if isinstance(module, Attention) else MLP_TARGETS


def _adapters_by_layer(model: CausalLM | ScoreModel) -> list[tuple[str, Adapter, int]]:
    """``(PEFT module name, stacked adapter, layer)`` of every adapted projection, layer-major."""
    out = []
    for i in range(model.config.num_hidden_layers):
        for kind, module in _projection_modules(model):
            adapters = getattr(module, "lora", None)
            for name in _targets_of(module):
                if adapters is None or name not in adapters:
                    continue
                adapter = adapters[name]
                if adapter.active is None or adapter.active[i]:
                    out.append((f"model.layers.{i}.{kind}.{name}", adapter, i))
    return out


def adapted_names(model: CausalLM | ScoreModel) -> list[str]:
    """PEFT module names (``model.layers.0.self_attn.q_proj``) that carry an adapter."""
    return [name for name, _, _ in _adapters_by_layer(model)]


def has_adapters(model: nnx.Module) -> bool:
    """Whether ``model`` carries LoRA adapters."""
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def add_lora(
    model: CausalLM | ScoreModel,
    config: LoRAConfig,
    *,
    rngs: nnx.Rngs,
    mesh: Mesh | None = None,
) -> CausalLM | ScoreModel:
    """Attaches fresh adapters (``B = 0``) to ``model`` in place and returns it.

    With ``mesh`` the adapters are placed by the logical-axis rules of the weights they
    adapt (A's rows like W's input axis, B's columns like its output axis). Raises when
    ``model`` already has adapters or when ``config`` selects no projection.
    """
    if has_adapters(model):
        raise ValueError("add_lora: the model already carries LoRA adapters")
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if config.param_dtype not in dtypes:
        raise ValueError(f"LoRAConfig: param_dtype must be one of {sorted(dtypes)}")
    count = 0
    n_layers = model.config.num_hidden_layers
    for kind, module in _projection_modules(model):
        adapters = {}
        for name in _targets_of(module):
            active = tuple(
                config.matches(f"model.layers.{i}.{kind}.{name}") for i in range(n_layers)
            )
            if not any(active):
                continue
            contract, in_name, out_name = _LAYOUT[name]
            adapters[name] = Adapter(
                getattr(module, name).shape[1:],
                contract=contract,
                names=(in_name, out_name),
                rank=config.rank,
                scale=config.scale,
                dtype=module.dtype,
                param_dtype=dtypes[config.param_dtype],
                rngs=rngs,
                lead=(n_layers,),
                active=active,
            )
        if adapters:
            module.lora = nnx.Dict(adapters)
            count += len(adapters)
    if count == 0:
        raise ValueError(f"add_lora: targets {config.targets!r} match no projection")
    if mesh is not None:
        _place(model, mesh)
    return model


def _place(model: nnx.Module, mesh: Mesh) -> None:
    from safedpo_jax.sharding import state_shardings

    state = nnx.state(model, nnx.Any(nnx.LoRAParam, LayerGate))
    placed = jax.tree.map(lambda x, s: jax.device_put(x, s), state, state_shardings(state, mesh))
    nnx.update(model, placed)


def trainable_filter(model: nnx.Module) -> Any:
    """What trains: every `nnx.Param` without adapters; with them, the adapters (and a score
    model's head, which is new and has no base value to keep)."""
    if not has_adapters(model):
        return nnx.Param
    if isinstance(model, ScoreModel):
        return nnx.Any(
            nnx.LoRAParam,
            nnx.All(nnx.Param, nnx.PathContains("score_head")),
            nnx.All(nnx.Param, nnx.PathContains("score_bias")),
        )
    return nnx.LoRAParam


def split(model: nnx.Module) -> Model:
    """A `safedpo_jax.models.Model` whose ``params`` are what trains (`trainable_filter`).

    Without adapters this is `Model.split`; with them the frozen base lands in ``rest``.
    """
    graphdef, params, rest = nnx.split(model, trainable_filter(model), ...)
    return Model(graphdef=graphdef, params=params, rest=rest)


def merged(model: CausalLM | ScoreModel) -> CausalLM | ScoreModel:
    """A copy of ``model`` with every adapter folded into its weight and no adapters left.

    ``W + scale * A B`` in float32, stored back in the weight's dtype and sharding; the
    result is an ordinary model (`safedpo_jax.models.save_pretrained` writes it).
    """
    out = nnx.clone(model)
    for _, module in _projection_modules(out):  # stacked: [L, ...] weights and deltas
        adapters = getattr(module, "lora", None)
        if adapters is None:
            continue
        for name in list(adapters):
            w = getattr(module, name)
            value = w[...]
            new = (value.astype(jnp.float32) + adapters[name].delta()).astype(value.dtype)
            w[...] = jax.device_put(new, value.sharding)
        del module.lora
    return out


# ------------------------------------------------------------------------------- PEFT I/O
def peft_config(
    model: CausalLM | ScoreModel, config: LoRAConfig, *, base_model: str | None
) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``model``'s adapters (PEFT's LoraConfig fields)."""
    if isinstance(config.targets, str):
        targets: list[str] | str = config.targets
    else:
        present = {name.rsplit(".", 1)[-1] for name in adapted_names(model)}
        targets = sorted(present)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "revision": None,
    }


def lora_config_of(model: CausalLM | ScoreModel) -> LoRAConfig:
    """The `LoRAConfig` that ``model``'s adapters were built with (rank, scale, targets).

    ``alpha`` is recovered as ``scale * r`` (rsLoRA is not distinguishable from the
    adapters alone: the plain form is returned; `save_peft_adapter` takes the config).
    """
    names = adapted_names(model)
    if not names:
        raise ValueError("the model carries no LoRA adapters")
    first = _adapter(model, names[0])
    rank = first.lora_a.shape[-1]
    targets = tuple(sorted({n.rsplit(".", 1)[-1] for n in names}, key=DEFAULT_TARGETS.index))
    return LoRAConfig(rank=rank, alpha=first.scale * rank, targets=targets)


def _adapter(model: CausalLM | ScoreModel, module_name: str) -> Adapter:
    """The stacked adapter that holds PEFT module ``module_name``'s layer."""
    kind, name = module_name.split(".")[-2:]
    return dict(_projection_modules(model))[kind].lora[name]


def save_peft_adapter(
    model: CausalLM | ScoreModel,
    path: str | Path,
    *,
    config: LoRAConfig | None = None,
    base_model: str | None = None,
) -> Path:
    """Writes ``model``'s adapters as a PEFT LoRA adapter directory and returns its path.

    ``config`` defaults to `lora_config_of` (pass the run's config to keep rsLoRA and a
    regex target); ``base_model`` is written as ``base_model_name_or_path``. Tensors are
    saved in the adapters' dtype. Multi-host: every process calls, process 0 writes.
    """
    if not isinstance(model, CausalLM):
        raise ValueError("save_peft_adapter: only causal LMs are exported in PEFT format")
    config = lora_config_of(model) if config is None else config
    for name in adapted_names(model):
        if not math.isclose(_adapter(model, name).scale, config.scale, rel_tol=1e-6):
            raise ValueError(f"save_peft_adapter: {name} has a scale other than config's")
    tensors = {}
    host: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # one gather per stacked adapter
    for name, adapter, i in _adapters_by_layer(model):
        if id(adapter) not in host:
            host[id(adapter)] = (_gather(adapter.lora_a[...]), _gather(adapter.lora_b[...]))
        a, b = host[id(adapter)]
        key = f"{_PEFT_PREFIX}{name}"
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    out = Path(path)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
        text = json.dumps(peft_config(model, config, base_model=base_model), indent=2)
        (out / CONFIG_FILE).write_text(text + "\n")
    return out


def read_peft_config(path: str | Path) -> LoRAConfig:
    """The `LoRAConfig` of a PEFT LoRA adapter directory (errors name unsupported fields)."""
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}")
    peft = json.loads(file.read_text())
    where = str(file)
    if peft.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {peft.get('peft_type')!r} is not LORA")
    unsupported = {
        "bias": ("none", None),
        "use_dora": (False, None),
        "fan_in_fan_out": (False, None),
        "layers_to_transform": (None,),
        "modules_to_save": (None, []),
        "rank_pattern": ({}, None),
        "alpha_pattern": ({}, None),
    }
    for key, allowed in unsupported.items():
        if peft.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{where}: {key}={peft[key]!r} is not supported")
    targets = peft.get("target_modules")
    if targets is None:
        raise ValueError(f"{where}: target_modules is missing")
    # PEFT matches a list by module-name suffix; our projections are the last component.
    if not isinstance(targets, str):
        names = {t.rsplit(".", 1)[-1] for t in targets}
        unknown = sorted(names - set(DEFAULT_TARGETS))
        if unknown:
            raise ValueError(f"{where}: target_modules {unknown} are not decoder projections")
        targets = tuple(t for t in DEFAULT_TARGETS if t in names)
    return LoRAConfig(
        rank=int(peft["r"]),
        alpha=float(peft["lora_alpha"]),
        targets=targets,
        use_rslora=bool(peft.get("use_rslora", False)),
    )


def load_peft_adapter(
    model: CausalLM | ScoreModel,
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    param_dtype: str = "float32",
) -> tuple[CausalLM | ScoreModel, LoRAConfig]:
    """Attaches the PEFT LoRA adapter in ``path`` to ``model`` (in place).

    Every tensor of ``adapter_model.safetensors`` must belong to an adapted projection and
    every adapter must be in the file, with PEFT's shapes (``lora_A [r, in]``,
    ``lora_B [out, r]``); errors name the key. Returns ``(model, config)``. The adapter's
    ``lora_dropout`` is a training-time setting and is not applied.
    """
    config = dataclasses.replace(read_peft_config(path), param_dtype=param_dtype)
    add_lora(model, config, rngs=nnx.Rngs(0), mesh=mesh)
    file = Path(path) / WEIGHTS_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}")
    with safe_open(file, framework="numpy") as f:
        keys = set(f.keys())
        expected = set()
        # per stacked variable: a host copy filled layer by layer, placed once at the end
        host: dict[int, tuple[nnx.Variable, np.ndarray]] = {}
        for name, adapter, i in _adapters_by_layer(model):
            for part, var in (("A", adapter.lora_a), ("B", adapter.lora_b)):
                key = f"{_PEFT_PREFIX}{name}.lora_{part}.weight"
                expected.add(key)
                if key not in keys:
                    raise ValueError(f"{file}: missing tensor {key}")
                value = f.get_tensor(key).T
                if value.shape != var.shape[1:]:
                    raise ValueError(
                        f"{file}: {key} has shape {value.shape[::-1]}, "
                        f"expected {var.shape[1:][::-1]}"
                    )
                if id(var) not in host:
                    host[id(var)] = (var, np.zeros(var.shape, np.dtype(var[...].dtype)))
                host[id(var)][1][i] = value
        for var, stacked in host.values():
            current = var[...]
            var[...] = jax.device_put(stacked, current.sharding)
    unused = sorted(keys - expected)
    if unused:
        raise ValueError(f"{file}: tensors not matching any adapter, e.g. {unused[0]}")
    return model, config


def adapter_fingerprint(path: str | Path) -> str:
    """A sha256 of a PEFT adapter directory's config and weights files (adapters are small)."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()


# -------------------------------------------------------------------------- base fingerprint
def base_fingerprint(model: nnx.Module) -> dict[str, list[float]]:
    """``{path: [sum, sum of squares]}`` of every frozen (non-adapter) `nnx.Param`.

    Sums are float32 on device: checkpoints of adapters carry this to check on resume that
    the base is the one they were trained on (`check_base_fingerprint`). The decoder's
    stacked block weights get one entry per layer under their per-layer path
    (``model.layers.3.mlp.up_proj``), so fingerprints do not depend on the layout.
    """
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))

    def stats(path: tuple, x: Array) -> Array:
        x = x.astype(jnp.float32)
        axes = tuple(range(1 if _stacked(path) else 0, x.ndim))
        return jnp.stack([jnp.sum(x, axis=axes), jnp.sum(jnp.square(x), axis=axes)], axis=-1)

    flat = [(path, var.get_value()) for path, var in nnx.to_flat_state(state)]
    values = jax.jit(lambda xs: [stats(p, x) for (p, _), x in zip(flat, xs, strict=True)])(
        [x for _, x in flat]
    )
    out = {}
    for (path, _), value in zip(flat, values, strict=True):
        value = np.asarray(value)
        if _stacked(path):
            rest = ".".join(map(str, path[2:]))
            for i, row in enumerate(value):
                out[f"model.layers.{i}.{rest}"] = [float(v) for v in row]
        else:
            out[".".join(map(str, path))] = [float(v) for v in value]
    return out


def _stacked(path: tuple) -> bool:
    """Whether a state path is in the decoder's stacked blocks (leading layer axis)."""
    return len(path) > 2 and path[0] == "model" and path[1] == "layers"


def check_base_fingerprint(
    saved: dict[str, list[float]], current: dict[str, list[float]], *, rtol: float = 1e-4
) -> None:
    """Raises when two `base_fingerprint` values differ (names the first differing tensor)."""
    if set(saved) != set(current):
        missing = sorted(set(saved) ^ set(current))
        raise ValueError(f"base model differs from the checkpoint's: parameter {missing[0]}")
    for name in sorted(saved):
        a, b = np.asarray(saved[name]), np.asarray(current[name])
        if not np.allclose(a, b, rtol=rtol, atol=1e-6 * max(1.0, float(np.abs(a).max()))):
            raise ValueError(
                f"base model differs from the checkpoint's at {name}: sums {a.tolist()} "
                f"vs {b.tolist()}"
            )
