"""Hugging Face weight I/O through one declarative key table.

`KEY_TABLE` maps each Hugging Face safetensors key pattern (``{i}`` a layer, ``{head}``
the score head's name: ``score`` for ``*ForSequenceClassification``, ``score_head`` for
safe-rlhf ``*ForScore``) to our module path and a layout transform. Our decoder keeps its
blocks stacked (``model.layers.mlp.up_proj`` is ``[L, D, F]``, see
`safedpo_jax.models.decoder.Decoder`), so a ``{i}`` row maps ``L`` Hugging Face keys to
the ``L`` slices of one stacked parameter: loading reads them one tensor at a time into
that parameter's slices, export writes one slice at a time. Which rows apply
is decided by the model itself: a key is expected exactly when the model built from the
config has the parameter (q/k/v biases for Qwen2, q/k norms for Qwen3, no ``lm_head`` when
embeddings are tied, ...). Loading fails, naming the key, when a key is missing, unused, or
has the wrong shape. Two documented exceptions: ``*.rotary_emb.inv_freq`` buffers (saved by
transformers < 4.31) are recomputed from the config and skipped, and a ``lm_head.weight``
next to ``tie_word_embeddings=true`` is accepted only if it equals the embedding.

Transforms (Hugging Face ``nn.Linear`` stores ``[out, in]``; we store ``[in, ...out]`` with
heads split, so einsums read ``x_btd, w_dnh -> q_btnh``):

``copy``      same array (embeddings, norms, biases of the model width)
``heads``     ``[N*H]`` -> ``[N, H]`` (q/k/v biases)
``linear``    ``[out..., in]`` -> transpose -> ``[in, *out]`` (q/k/v, MLP, heads)
``linear_o``  ``[out, in...]`` -> transpose -> ``[*in, out]`` (o_proj ``[D, N*H]`` -> ``[N,H,D]``)
``count``     like ``copy``; int64 in the file, int32 in memory (safe-rlhf's normalizer count)

Score models come in two layouts, both loaded by `from_pretrained` and both written by
`save_pretrained` (``format=``): Hugging Face ``*ForSequenceClassification`` (``score``, no
bias) and safe-rlhf ``*ForScore`` (``score_head`` with an optional bias and the
``normalizer.*`` buffers). `convert_score_model` turns one into the other;
`score_model_from_causal_lm` starts one from a ``*ForCausalLM`` checkpoint with a new head.

With a mesh, the abstract model (`flax.nnx.eval_shape`) gives each parameter's
`jax.sharding.NamedSharding` (`safedpo_jax.sharding.state_shardings`); tensors are read one
at a time from the safetensors files and each device receives only its slice
(`jax.make_array_from_callback`), so the model is never assembled on one device, nor held
whole on the host. bf16 checkpoints load through numpy's ``ml_dtypes.bfloat16``.

>>> sorted({row[2] for row in KEY_TABLE})
['copy', 'count', 'heads', 'linear', 'linear_o']
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors import safe_open
from safetensors.numpy import save_file

from safedpo_jax.models.config import FAMILY_CLASS_PREFIX, DecoderConfig
from safedpo_jax.models.decoder import CausalLM, ScoreModel, model_class, normalizer_defaults

_L = "model.layers.{i}"
# Hugging Face key pattern -> (our module path, transform). The one table.
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens.weight", "model.embed_tokens", "copy"),
    (f"{_L}.input_layernorm.weight", "model.layers.input_layernorm.scale", "copy"),
    (f"{_L}.self_attn.q_proj.weight", "model.layers.self_attn.q_proj", "linear"),
    (f"{_L}.self_attn.k_proj.weight", "model.layers.self_attn.k_proj", "linear"),
    (f"{_L}.self_attn.v_proj.weight", "model.layers.self_attn.v_proj", "linear"),
    (f"{_L}.self_attn.q_proj.bias", "model.layers.self_attn.q_bias", "heads"),
    (f"{_L}.self_attn.k_proj.bias", "model.layers.self_attn.k_bias", "heads"),
    (f"{_L}.self_attn.v_proj.bias", "model.layers.self_attn.v_bias", "heads"),
    (f"{_L}.self_attn.q_norm.weight", "model.layers.self_attn.q_norm.scale", "copy"),
    (f"{_L}.self_attn.k_norm.weight", "model.layers.self_attn.k_norm.scale", "copy"),
    (f"{_L}.self_attn.o_proj.weight", "model.layers.self_attn.o_proj", "linear_o"),
    (f"{_L}.self_attn.o_proj.bias", "model.layers.self_attn.o_bias", "copy"),
    (
        f"{_L}.post_attention_layernorm.weight",
        "model.layers.post_attention_layernorm.scale",
        "copy",
    ),
    (f"{_L}.mlp.gate_proj.weight", "model.layers.mlp.gate_proj", "linear"),
    (f"{_L}.mlp.up_proj.weight", "model.layers.mlp.up_proj", "linear"),
    (f"{_L}.mlp.down_proj.weight", "model.layers.mlp.down_proj", "linear"),
    ("model.norm.weight", "model.norm.scale", "copy"),
    ("lm_head.weight", "lm_head", "linear"),
    ("{head}.weight", "score_head", "linear"),
    ("{head}.bias", "score_bias", "copy"),
    ("normalizer.mean", "normalizer_mean", "copy"),
    ("normalizer.var", "normalizer_var", "copy"),
    ("normalizer.count", "normalizer_count", "count"),
)
# Keys that may be absent: safe-rlhf normalizer statistics (then taken from config.json's
# ``mean`` / ``var``, else 0 / 1).
OPTIONAL_KEYS = frozenset({"normalizer.mean", "normalizer.var", "normalizer.count"})
# Keys skipped on load: rotary inverse frequencies are recomputed from the config.
IGNORED_KEY = re.compile(r".*\.rotary_emb\.inv_freq$")

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["config.json", "*.safetensors", INDEX_FILE]


class CheckpointKeyError(KeyError, ValueError):
    """A checkpoint key that is missing, unused or mis-shaped; one line naming key and file.

    A `KeyError` (as before) and a `ValueError` (so that the commands report it as bad
    input); its text is the message itself, not the quoted repr `KeyError` would print.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Rule(NamedTuple):
    """The Hugging Face keys of one of our variables: one key, or one per stacked layer."""

    hf_keys: tuple[str, ...]
    transform: str
    stacked: bool  # the variable's leading axis is the layer; hf_keys[i] is slice i

    def slices(self) -> Iterator[tuple[str, int | None]]:
        """``(Hugging Face key, layer index or None)`` for each key of this rule."""
        for i, key in enumerate(self.hf_keys):
            yield key, (i if self.stacked else None)


# ------------------------------------------------------------------ layout transforms
def _hf_shape(transform: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face shape of a tensor that has ``shape`` in our layout."""
    if transform in ("copy", "count"):
        return shape
    if transform == "heads":
        return (math.prod(shape),)
    if transform == "linear":
        return (math.prod(shape[1:]), shape[0])
    if transform == "linear_o":
        return (shape[-1], math.prod(shape[:-1]))
    raise ValueError(f"unknown transform {transform!r}")


def _to_ours(transform: str, hf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if transform in ("linear", "linear_o"):
        hf = hf.T
    return hf.reshape(shape)


def _to_hf(transform: str, ours: np.ndarray) -> np.ndarray:
    hf_shape = _hf_shape(transform, ours.shape)
    if transform in ("linear", "linear_o"):
        out = ours.reshape(hf_shape[::-1]).T
    else:
        out = ours.reshape(hf_shape)
    if transform == "count":
        out = out.astype(np.int64)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------ the key plan
_RULES = {ours: (hf, transform) for hf, ours, transform in KEY_TABLE}


def head_key_name(config: DecoderConfig) -> str:
    """The score head's Hugging Face name: ``score`` (classifiers) or ``score_head`` (safe-rlhf)."""
    return "score_head" if config.kind == "score" else "score"


def key_plan(state: nnx.State, config: DecoderConfig) -> dict[str, tuple[_Rule, nnx.Variable]]:
    """For every variable of a model's (abstract) state: its Hugging Face keys and transform.

    Returns ``{our dotted path: (rule, variable)}`` in state order; a stacked variable
    (a ``{i}`` row) gets one key per layer, in layer order.
    """
    plan: dict[str, tuple[_Rule, nnx.Variable]] = {}
    head = head_key_name(config)
    for path, variable in nnx.to_flat_state(state):
        dotted = ".".join(str(p) for p in path)
        if dotted not in _RULES:
            raise KeyError(f"model variable {dotted!r} has no row in KEY_TABLE")
        hf, transform = _RULES[dotted]
        if "{i}" in hf:
            n_layers = variable.get_value().shape[0]
            keys = tuple(hf.format(i=i, head=head) for i in range(n_layers))
            plan[dotted] = (_Rule(keys, transform, True), variable)
        else:
            plan[dotted] = (_Rule((hf.format(head=head),), transform, False), variable)
    return plan


def _slice_shape(rule: _Rule, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (our layout) of one key's tensor: a layer's slice of a stacked variable."""
    return shape[1:] if rule.stacked else shape


# ------------------------------------------------------------------ reading checkpoints
def resolve(path_or_hub_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: the path itself, or a Hub snapshot.

    A string that is not an existing directory and looks like ``org/name`` is downloaded
    with `huggingface_hub.snapshot_download` (config.json, safetensors and their index
    only; ``revision`` a branch, tag or commit; offline, ``HF_HUB_OFFLINE=1``, from the
    Hub cache); anything else that does not exist, and any Hub failure, is a one-line
    `FileNotFoundError` naming the path or id.
    """
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a checkpoint directory")
    text = str(path_or_hub_id)
    if text.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise FileNotFoundError(
            f"checkpoint directory {text!r} does not exist (and is not a Hub id 'org/name')"
        )
    return Path(hub_snapshot(text, revision=revision, allow_patterns=HUB_PATTERNS))


def hub_snapshot(
    repo_id: str, *, revision: str | None = None, allow_patterns: list[str] | None = None
) -> str:
    """`huggingface_hub.snapshot_download`, its failures as ONE line naming the id.

    Offline (``HF_HUB_OFFLINE=1``) it reads the local Hub cache (``HF_HUB_CACHE``); any
    failure (no such repository, revision or network, a gated model) is a
    `FileNotFoundError` that names the id and revision and says what was tried.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
    except Exception as exc:  # every Hub failure becomes one line
        at = f" at revision {revision!r}" if revision else ""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory, and Hub repository {repo_id!r}{at} "
            f"cannot be used: {type(exc).__name__}: {reason}"
        ) from None


class _Checkpoint:
    """The safetensors files of a checkpoint directory, opened lazily, read key by key."""

    def __init__(self, directory: Path, stack: contextlib.ExitStack):
        self.directory = directory
        index, single = directory / INDEX_FILE, directory / SINGLE_FILE
        if index.exists():
            weight_map: Mapping[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif single.exists():
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(
                f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} "
                "(only safetensors checkpoints are supported)"
            )
        self.handles: dict[str, Any] = {}
        self.files: dict[str, str] = {}
        for name in files:
            handle = stack.enter_context(safe_open(directory / name, framework="numpy"))
            for key in handle.keys():  # noqa: SIM118 (not a dict)
                if key in self.handles:
                    raise ValueError(
                        f"{directory}: key {key!r} is in both {self.files[key]} and {name}"
                    )
                self.handles[key] = handle
                self.files[key] = name

    def where(self, key: str) -> str:
        """``directory/file`` holding ``key``."""
        return str(self.directory / self.files[key])

    def names(self) -> set[str]:
        return set(self.handles)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handles[key].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self.handles[key].get_tensor(key)


def _check_keys(
    ckpt: _Checkpoint, plan: Mapping[str, tuple[_Rule, nnx.Variable]], config: DecoderConfig
) -> None:
    expected = {key for rule, _ in plan.values() for key in rule.hf_keys}
    present = {k for k in ckpt.names() if not IGNORED_KEY.match(k)}
    if config.tie_word_embeddings and "lm_head.weight" in present:
        present.discard("lm_head.weight")
        embed, head = ckpt.get("model.embed_tokens.weight"), ckpt.get("lm_head.weight")
        if embed.shape != head.shape or not np.array_equal(embed, head):
            raise ValueError(
                f"{ckpt.where('lm_head.weight')}: lm_head.weight differs from "
                "model.embed_tokens.weight, but config.json says tie_word_embeddings=true"
            )
    missing = sorted(expected - present - OPTIONAL_KEYS)
    unexpected = sorted(present - expected)
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise CheckpointKeyError(
            f"{ckpt.directory}: checkpoint is missing {len(missing)} key(s) that a "
            f"{config.kind} {config.model_type} model needs: {', '.join(missing[:8])}{more}"
        )
    if unexpected:
        named = ", ".join(f"{k} (in {ckpt.files[k]})" for k in unexpected[:8])
        more = f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
        raise CheckpointKeyError(
            f"{ckpt.directory}: checkpoint has {len(unexpected)} unexpected key(s) for a "
            f"{config.kind} {config.model_type} model: {named}{more}"
        )
    for rule, variable in plan.values():
        want = _hf_shape(rule.transform, _slice_shape(rule, tuple(variable.get_value().shape)))
        for key in rule.hf_keys:
            if key not in present:
                continue
            found = ckpt.shape(key)
            if want != found:
                raise ValueError(
                    f"{ckpt.where(key)}: key {key!r}: expected shape {want} "
                    f"(Hugging Face layout, from config.json), found {found}"
                )


def _with_kind(config: DecoderConfig, kind: str | None, keys: set[str]) -> DecoderConfig:
    """Applies an explicit ``kind`` (for a config.json without a usable ``architectures``)."""
    if kind is None or kind == ("causal_lm" if config.kind == "causal_lm" else "score"):
        return config
    prefix = FAMILY_CLASS_PREFIX[config.model_type]
    if kind == "causal_lm":
        raise ValueError(f"kind='causal_lm' but the checkpoint is a {config.kind} model")
    if kind != "score":
        raise ValueError(f"kind must be None, 'causal_lm' or 'score', got {kind!r}")
    if "score_head.weight" in keys:
        return config.replace(architectures=(f"{prefix}ForScore",))
    if "score.weight" in keys:
        return config.replace(architectures=(f"{prefix}ForSequenceClassification",))
    raise CheckpointKeyError(
        "kind='score' but the checkpoint has neither score.weight nor score_head.weight "
        "(to start a score model from a causal LM, use score_model_from_causal_lm)"
    )


_LoadOptions = dict[str, Any]


def _load(
    ckpt: _Checkpoint,
    config: DecoderConfig,
    options: _LoadOptions,
    mesh: Mesh | None,
    *,
    fresh: Mapping[str, Any] | None = None,
) -> CausalLM | ScoreModel:
    """Builds the model of ``config`` with its weights read from ``ckpt``, one at a time.

    ``fresh`` maps some dotted variable paths (their keys are then not read, nor expected
    in the checkpoint) to a function ``shape -> float32 host array`` giving their values.
    """
    cls = model_class(config)
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), **options))
    graphdef, abstract_state = nnx.split(abstract)
    plan = key_plan(abstract_state, config)
    fresh = fresh or {}
    _check_keys(ckpt, {k: v for k, v in plan.items() if k not in fresh}, config)
    shardings = None
    if mesh is not None:
        from safedpo_jax.sharding import state_shardings

        shardings = dict(nnx.to_flat_state(state_shardings(abstract_state, mesh)))
    loaded = []
    for path, variable in nnx.to_flat_state(abstract_state):
        dotted = ".".join(str(p) for p in path)
        rule, _ = plan[dotted]
        aval = variable.get_value()
        dtype = np.dtype(aval.dtype)
        sharding = None if shardings is None else shardings[path].get_value()
        if rule.stacked and dotted not in fresh:
            layer_shape = _slice_shape(rule, tuple(aval.shape))
            layers = (
                _to_ours(rule.transform, ckpt.get(key), layer_shape).astype(dtype, copy=False)
                for key in rule.hf_keys
            )
            value = _place_stacked(layers, tuple(aval.shape), dtype, sharding)
        else:
            key = rule.hf_keys[0]
            if dotted in fresh:
                host = np.asarray(fresh[dotted](tuple(aval.shape)))
            elif key in ckpt.handles:
                host = _to_ours(rule.transform, ckpt.get(key), tuple(aval.shape))
            else:  # an optional key (normalizer statistics): the config's values
                host = normalizer_defaults(config)[path[-1]]
            value = _place(host.astype(dtype, copy=False), sharding)
        loaded.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _read_config(directory: Path) -> DecoderConfig:
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{directory} has no config.json")
    return DecoderConfig.from_hf(json.loads(config_file.read_text()))


def from_pretrained(
    path_or_hub_id: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    remat: bool | str = False,
    attention_impl: str | None = None,
    precision: str | None = "highest",
    scan_layers: bool = True,
    kind: Literal["causal_lm", "score"] | None = None,
    revision: str | None = None,
) -> CausalLM | ScoreModel:
    """Loads a Hugging Face checkpoint (local directory or Hub id) into a `CausalLM` / `ScoreModel`.

    The model class follows ``config.json``'s ``architectures`` (see
    `safedpo_jax.models.config`); ``kind`` overrides it for configs without one. Weights are
    cast to ``param_dtype``; the forward pass computes in ``dtype``. With ``mesh``, each
    parameter lands directly in the sharding the logical-axis rules give it; without, on
    the default device. ``remat``, ``attention_impl``, ``precision`` and ``scan_layers`` are as in
    `safedpo_jax.models.CausalLM`. Score models load from either layout (Hugging Face
    ``*ForSequenceClassification`` or safe-rlhf ``*ForScore``); to start a score model
    from a causal LM, use `score_model_from_causal_lm`.
    """
    directory = resolve(path_or_hub_id, revision=revision)
    config = _read_config(directory)
    options = dict(
        dtype=dtype,
        param_dtype=param_dtype,
        remat=remat,
        attention_impl=attention_impl,
        precision=precision,
        scan_layers=scan_layers,
    )
    with contextlib.ExitStack() as stack:
        ckpt = _Checkpoint(directory, stack)
        config = _with_kind(config, kind, ckpt.names())
        return _load(ckpt, config, options, mesh)


ScoreLayout = Literal["safe_rlhf", "hf"]
# config.json keys of one score layout that mean nothing in the other.
_SAFE_RLHF_ONLY_KEYS = ("normalizer_type", "momentum", "mean", "var")
_HF_CLASSIFIER_ONLY_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def _score_config(
    config: DecoderConfig, layout: ScoreLayout, *, score_dim: int, score_type: str, bias: bool
) -> DecoderConfig:
    """``config`` (any kind) turned into a score model's config of ``layout``."""
    prefix = FAMILY_CLASS_PREFIX[config.model_type]
    if layout == "safe_rlhf":
        drop, arch = _HF_CLASSIFIER_ONLY_KEYS, f"{prefix}ForScore"
    elif layout == "hf":
        drop, arch = _SAFE_RLHF_ONLY_KEYS, f"{prefix}ForSequenceClassification"
        bias, score_type = False, "reward"
    else:
        raise ValueError(f"score layout must be 'safe_rlhf' or 'hf', got {layout!r}")
    return config.replace(
        architectures=(arch,),
        score_dim=score_dim,
        score_bias=bias,
        score_type=score_type,
        do_normalize=False,
        extra=tuple((k, v) for k, v in config.extra if k not in drop),
    )


def score_model_from_causal_lm(
    path_or_hub_id: str | os.PathLike,
    *,
    layout: ScoreLayout = "safe_rlhf",
    score_dim: int = 1,
    score_type: Literal["reward", "cost", "critic"] = "reward",
    seed: int = 0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    remat: bool | str = False,
    attention_impl: str | None = None,
    precision: str | None = "highest",
    scan_layers: bool = True,
    revision: str | None = None,
) -> ScoreModel:
    """A `ScoreModel` whose decoder is a causal-LM checkpoint's and whose head is new.

    The decoder weights (``model.*``) are read from the ``*ForCausalLM`` checkpoint as by
    `from_pretrained`; ``lm_head.weight`` is dropped; any other key the decoder does not
    use is an error. The new head ``[D, score_dim]`` is normal with standard deviation
    ``config.initializer_range`` (from ``jax.random.key(seed)``). ``layout="safe_rlhf"``
    (``*ForScore``, as safe-rlhf's ``init_score_head`` builds it): a zero bias, the
    normalizer at mean 0, variance 1, count 0, ``do_normalize`` false and ``score_type`` as
    given (reward model, cost model or critic). ``layout="hf"``
    (``*ForSequenceClassification``): no bias, ``num_labels = score_dim``.
    """
    if not (isinstance(score_dim, int) and score_dim >= 1):
        raise ValueError(f"score_dim must be a positive int, got {score_dim!r}")
    directory = resolve(path_or_hub_id, revision=revision)
    lm_config = _read_config(directory)
    if lm_config.kind != "causal_lm":
        raise ValueError(
            f"{directory} holds a {lm_config.architectures[0]} (a score model already); "
            "load it with from_pretrained"
        )
    config = _score_config(
        lm_config, layout, score_dim=score_dim, score_type=score_type, bias=layout == "safe_rlhf"
    )
    std = config.initializer_range
    key = jax.random.key(seed)
    fresh = {
        "score_head": lambda shape: std * np.asarray(jax.random.normal(key, shape, jnp.float32)),
        "score_bias": lambda shape: np.zeros(shape, np.float32),
        **{
            name: lambda shape, name=name: normalizer_defaults(config)[name]
            for name in ("normalizer_mean", "normalizer_var", "normalizer_count")
        },
    }
    options = dict(
        dtype=dtype,
        param_dtype=param_dtype,
        remat=remat,
        attention_impl=attention_impl,
        precision=precision,
        scan_layers=scan_layers,
    )
    with contextlib.ExitStack() as stack:
        ckpt = _Checkpoint(directory, stack)
        ckpt.handles.pop("lm_head.weight", None)  # the causal LM's head is not used
        model = _load(ckpt, config, options, mesh, fresh=fresh)
    assert isinstance(model, ScoreModel)
    return model


def _effective_head(model: ScoreModel) -> tuple[jax.Array, jax.Array]:
    """float32 ``(w [D, C], b [C])`` with ``score = hidden . w + b`` (normalisation folded)."""
    config = model.config
    w_dc = model.score_head[...].astype(jnp.float32)
    b_c = jnp.zeros((config.score_dim,), jnp.float32)
    if model.score_bias is not None:
        b_c = model.score_bias[...].astype(jnp.float32)
    if config.kind == "score" and config.do_normalize:
        denom_c = jnp.sqrt(model.normalizer_var[...].astype(jnp.float32)) + 1e-8
        if config.normalize_function == "affine":
            mean_c = model.normalizer_mean[...].astype(jnp.float32)
            w_dc, b_c = w_dc / denom_c, (b_c - mean_c) / denom_c
        elif config.normalize_function == "scale":
            w_dc, b_c = w_dc / denom_c, b_c / denom_c
    return w_dc, b_c


def convert_score_model(
    model: ScoreModel,
    layout: ScoreLayout,
    *,
    score_type: Literal["reward", "cost", "critic"] | None = None,
) -> ScoreModel:
    """The same scorer in the other layout (the decoder's arrays are shared, not copied).

    ``layout="hf"``: a ``*ForSequenceClassification`` head, which has no bias and no
    normalizer. safe-rlhf's normalisation is folded into the weight (``w / (std + 1e-8)``
    for ``affine`` and ``scale``); the effective bias (``bias``, ``(bias - mean) / (std +
    1e-8)`` or ``bias / (std + 1e-8)``) must be exactly zero, else `ValueError` (such a
    head cannot be written as a classifier: keep the safe-rlhf layout). Scores agree to
    float32 rounding. ``layout="safe_rlhf"``: a ``*ForScore`` head without bias, the
    normalizer at mean 0, variance 1, count 0, ``do_normalize`` false, ``score_type`` as
    given (default: reward); scores agree exactly. A model already in ``layout`` (and of
    ``score_type``, if given) is returned as is.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"convert_score_model needs a ScoreModel, got {type(model).__name__}")
    config = model.config
    kind = {"hf": "sequence_classification", "safe_rlhf": "score"}.get(layout)
    if kind is None:
        raise ValueError(f"score layout must be 'safe_rlhf' or 'hf', got {layout!r}")
    if config.kind == kind and score_type in (None, config.score_type):
        return model
    w_dc = model.score_head[...]
    if layout == "safe_rlhf" and config.kind == "score":  # a new score type only
        if config.do_normalize:
            raise ValueError(
                f"cannot relabel a normalised {config.score_type} model as {score_type}: "
                "the normalisation, and so its scores, would change"
            )
        new_config = config.replace(score_type=score_type)
    else:
        if layout == "hf":
            w_dc, b_c = _effective_head(model)
            if bool(jnp.any(b_c != 0)):
                raise ValueError(
                    f"this score head has a nonzero effective bias {np.asarray(b_c).tolist()} "
                    "(score bias and/or normaliser mean), but a Hugging Face "
                    "*ForSequenceClassification head has none: keep format='safe_rlhf'"
                )
        new_config = _score_config(
            config,
            layout,
            score_dim=config.score_dim,
            score_type=score_type or config.score_type,
            bias=False,
        )
    options = dict(
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        remat=model.model.remat,
        attention_impl=model.model.layers.self_attn.attention_impl,
        precision=model.precision,
        scan_layers=model.model.scan_layers,
    )
    abstract = nnx.eval_shape(lambda: ScoreModel(new_config, rngs=nnx.Rngs(0), **options))
    graphdef, abstract_state = nnx.split(abstract)
    source = dict(nnx.to_flat_state(nnx.state(model)))
    defaults = normalizer_defaults(new_config)
    values: list[tuple[Any, Any]] = []
    for path, variable in nnx.to_flat_state(abstract_state):
        aval = variable.get_value()
        if path[-1] == "score_head":
            value = w_dc
        elif path in source:  # the decoder; bias and normalizer when relabelling
            value = source[path].get_value()
        else:  # a new safe-rlhf normalizer
            value = defaults[path[-1]]
        values.append((path, variable.replace(jnp.asarray(value).astype(aval.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(values))


def _place(host: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


@functools.lru_cache(maxsize=64)
def _layer_writer(sharding: jax.sharding.Sharding | None) -> Any:
    """A jitted ``(stack, layer, i) -> stack.at[i].set(layer)`` that reuses ``stack``'s buffer."""
    write = lambda stack, layer, i: jax.lax.dynamic_update_index_in_dim(stack, layer, i, 0)  # noqa: E731
    if sharding is None:
        return jax.jit(write, donate_argnums=0)
    return jax.jit(write, donate_argnums=0, out_shardings=sharding)


def _place_stacked(
    layers: Iterator[np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype,
    sharding: jax.sharding.NamedSharding | None,
) -> jax.Array:
    """A ``shape`` device array filled layer by layer from host arrays of ``shape[1:]``.

    The host holds one layer at a time; each write updates the stack in place (donated).
    With a sharding, each layer is placed with the stack's sharding minus its leading axis
    (each device receives only its slice) before it is written.
    """
    if sharding is None:
        stack = jnp.zeros(shape, dtype)
        layer_sharding = None
    else:
        stack = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
        spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
        layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    write = _layer_writer(sharding)
    for i, host in enumerate(layers):
        stack = write(stack, _place(host, layer_sharding), np.int32(i))
    return stack


# ------------------------------------------------------------------ writing checkpoints
def _parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"5GB"``, ``"500MB"``, ``"10KiB"``.

    >>> _parse_size("5GB"), _parse_size("10KiB"), _parse_size(123)
    (5000000000, 10240, 123)
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(
        r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*", size.upper().replace("IB", "iB")
    )
    if not match:
        raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '5GB', '200MB'")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit or " "))


def _slice_of(value: Any, layer: int | None) -> Any:
    """Layer ``layer`` of a stacked array (an abstract one gives its shape), or the array."""
    if layer is None:
        return value
    if isinstance(value, jax.Array):
        return value[layer]
    return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)


def _gather(value: jax.Array) -> np.ndarray:
    """The full array on the host (all processes join; on one host a plain device_get)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))


def _shard_plan(sizes: list[tuple[str, int]], limit: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    total = 0
    for key, size in sizes:
        if shards[-1] and total + size > limit:
            shards.append([])
            total = 0
        shards[-1].append(key)
        total += size
    return shards


def save_pretrained(
    model: CausalLM | ScoreModel,
    path: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    format: ScoreLayout | None = None,
) -> None:
    """Writes ``config.json`` and safetensors in Hugging Face key names and layouts.

    ``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads a `CausalLM`
    (``AutoModelForSequenceClassification`` a Hugging Face classifier); safe-rlhf score
    models round-trip through `from_pretrained`. A `ScoreModel` is written in its own
    layout, or with ``format="hf"`` / ``"safe_rlhf"`` converted first
    (`convert_score_model`). The safe-rlhf layout is what safe-rlhf's ``save_pretrained``
    writes: ``score_head.weight`` (and ``.bias``), ``normalizer.mean`` / ``.var`` /
    ``.count`` (int64), and config.json ``architectures`` ``*ForScore``, ``score_dim``,
    ``bias`` and ``score_bias`` (the switch's old and current names), ``score_type``,
    ``do_normalize``, ``normalizer_type`` (kept, else null) and ``mean`` / ``var`` (the
    normalizer's values, as safe-rlhf's training writes them). Above ``max_shard_size``
    bytes the weights are split into ``model-0000k-of-0000n.safetensors`` with
    ``model.safetensors.index.json``; the host holds at most one shard at a time.
    Multi-host: every process must call this (each tensor is gathered with
    `jax.experimental.multihost_utils.process_allgather`), and only process 0 writes.
    """
    if format is not None:
        if not isinstance(model, ScoreModel):
            raise ValueError(f"format={format!r} applies to score models, not a CausalLM")
        model = convert_score_model(model, format)
    config = model.config
    plan = key_plan(nnx.state(model), config)
    limit = _parse_size(max_shard_size)
    # Hugging Face key -> (transform, variable, layer index or None)
    by_key = {
        key: (rule.transform, variable, layer)
        for rule, variable in plan.values()
        for key, layer in rule.slices()
    }
    sizes = [
        (key, math.prod(_slice_of(v.get_value(), layer).shape) * v.get_value().dtype.itemsize)
        for key, (_, v, layer) in by_key.items()
    ]
    shards = _shard_plan(sizes, limit)
    out_dir = Path(path)
    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for name, keys in zip(names, shards, strict=True):
        tensors = {}
        for key in keys:
            transform, variable, layer = by_key[key]
            tensors[key] = _to_hf(transform, _gather(_slice_of(variable.get_value(), layer)))
            weight_map[key] = name
        if writer:
            save_file(tensors, out_dir / name, metadata={"format": "pt"})
        del tensors
    if not writer:
        return
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    params = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    saved_dtype = str(np.dtype(params[0].dtype)) if params else config.torch_dtype
    hf = config.replace(torch_dtype=saved_dtype).to_hf()
    if config.kind == "score":
        hf.setdefault("normalizer_type", None)
        hf["mean"] = _gather(model.normalizer_mean[...]).astype(float).tolist()
        hf["var"] = _gather(model.normalizer_var[...]).astype(float).tolist()
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")


def iter_hf_tensors(model: CausalLM | ScoreModel) -> Iterator[tuple[str, np.ndarray]]:
    """``(Hugging Face key, host array)`` for every weight of ``model``, one at a time."""
    for rule, variable in key_plan(nnx.state(model), model.config).values():
        for key, layer in rule.slices():
            value = _slice_of(variable.get_value(), layer)
            yield key, _to_hf(rule.transform, _gather(value))
