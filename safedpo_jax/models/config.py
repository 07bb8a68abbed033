"""`DecoderConfig`: the switches of the one decoder, round-tripping Hugging Face config.json.

Four families share one decoder; they differ only in a few switches, one row per Hugging
Face ``model_type`` in the declarative table `FAMILIES`:

========  ===================  ==============  =============================================
family    q/k/v (o) biases     q/k RMSNorm     attention window
========  ===================  ==============  =============================================
llama     ``attention_bias``   no              full
mistral   no                   no              ``sliding_window`` on every layer (or none)
qwen2     q/k/v always         no              ``use_sliding_window`` + ``layer_types``
qwen3     ``attention_bias``   yes             ``use_sliding_window`` + ``layer_types``
========  ===================  ==============  =============================================

Rotary embeddings: ``default``, ``linear`` and ``llama3`` (Llama 3.1/3.2) frequency
scaling. Other rope types (``dynamic``, ``yarn``, ``longrope``, ...) are rejected, because
their frequencies depend on the sequence length or carry attention factors this decoder
does not implement. Both spellings of the rope settings are read: transformers >= 5 writes
``rope_parameters`` (with ``rope_theta`` inside), older versions ``rope_theta`` and
``rope_scaling`` at top level. `DecoderConfig.to_hf` writes the transformers >= 5 spelling.

The architecture (``architectures[0]``) picks the head:

- ``*ForCausalLM``: a language-model head (`safedpo_jax.models.CausalLM`);
- ``*ForSequenceClassification``: the Hugging Face score head ``score`` with
  ``num_labels`` outputs and no bias (`safedpo_jax.models.ScoreModel`);
- ``*ForScore``: a safe-rlhf score model (``score_head`` with ``score_dim`` outputs, an
  optional bias, and the safe-rlhf normalizer), the format of the
  ``PKU-Alignment/beaver-7b-*-reward`` / ``-cost`` evaluators.

Every config.json key the decoder does not use is kept (JSON-encoded, so the dataclass
stays hashable and can be a static attribute under `jax.jit`) and written back by
`DecoderConfig.to_hf`, so ``to_hf(from_hf(d)) == d`` for a config.json written by
transformers 5, up to Hugging Face's own normalisations: a disabled Qwen sliding window is
written as ``null`` and the rope settings in the ``rope_parameters`` spelling.

>>> config = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
...                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
>>> config.head_dim, config.kind
(8, 'causal_lm')
>>> DecoderConfig.from_hf(config.to_hf()) == config
True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np


@dataclasses.dataclass(frozen=True)
class Family:
    """What tells one decoder family from another: one row of `FAMILIES` per ``model_type``.

    class_prefix: the transformers class prefix (``Llama`` for ``LlamaForCausalLM``).
    attention_bias: how config.json's ``attention_bias`` is treated: "switch" (biases on
      q, k, v and o when set), "ignored" (the family has no such switch: Qwen2 always has
      q/k/v biases and never an o bias), "rejected" (setting it is an error).
    qkv_bias: q/k/v projections always have biases (Qwen2).
    qk_norm: queries and keys pass a per-head RMSNorm before rope (Qwen3).
    window: the attention window's spelling: "none" (full attention only), "uniform"
      (``sliding_window`` on every layer or none, Mistral), "per_layer"
      (``use_sliding_window`` + ``layer_types`` / ``max_window_layers``, Qwen).
    head_dim_key: when `DecoderConfig.to_hf` writes ``head_dim``: "always" or "nondefault"
      (only when it differs from hidden_size / heads, as Qwen2's config.json does).
    writes_mlp_bias: config.json carries ``mlp_bias`` (always False here; Llama).

    Adding a family whose decoder is this one (Gemma, Phi-3 and OLMo-2 are the likely
    next, each with a switch or two to add here) is one row, plus its rows in the weight
    key table of `safedpo_jax.models.hf` if its tensor names differ.
    """

    model_type: str
    class_prefix: str
    attention_bias: Literal["switch", "ignored", "rejected"]
    qkv_bias: bool
    qk_norm: bool
    window: Literal["none", "uniform", "per_layer"]
    head_dim_key: Literal["always", "nondefault"]
    writes_mlp_bias: bool


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "Llama", "switch", False, False, "none", "always", True),
        Family("mistral", "Mistral", "rejected", False, False, "uniform", "always", False),
        Family("qwen2", "Qwen2", "ignored", True, False, "per_layer", "nondefault", False),
        Family("qwen3", "Qwen3", "switch", False, True, "per_layer", "always", False),
    )
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)
SUPPORTED_ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3")
# Class-name prefix of each family in transformers (``LlamaForCausalLM``, ...).
FAMILY_CLASS_PREFIX: dict[str, str] = {t: f.class_prefix for t, f in FAMILIES.items()}
# safe-rlhf: the score type fixes the normalisation applied when ``do_normalize`` is set.
SCORE_TYPE_NORMALIZE: dict[str, str] = {"reward": "affine", "cost": "scale", "critic": "identity"}

Kind = Literal["causal_lm", "sequence_classification", "score"]

# config.json keys that `from_hf` turns into fields and `to_hf` writes back from them.
_PARSED_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "attention_bias",
        "mlp_bias",
        "hidden_act",
        "sliding_window",
        "use_sliding_window",
        "layer_types",
        "tie_word_embeddings",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "dtype",
        "torch_dtype",
        "score_dim",
        "bias",
        "score_bias",
        "score_type",
        "do_normalize",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The decoder's shape and family switches (field names follow Hugging Face).

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (multi-head attention),
    ``head_dim`` to ``hidden_size // num_attention_heads`` and ``layer_types`` to full
    attention on every layer (or sliding on every layer for Mistral with a window).
    ``score_dim`` is the number of outputs of a score head (``num_labels`` for Hugging
    Face classifiers); ``score_bias``, ``score_type`` and ``do_normalize`` describe a
    safe-rlhf ``*ForScore`` head. ``torch_dtype`` is the dtype recorded in config.json
    (``dtype`` in transformers >= 5), the dtype the checkpoint's weights were saved in.
    ``extra`` holds every other config.json key as ``(key, json_text)`` pairs.
    """

    model_type: str = "llama"
    architectures: tuple[str, ...] = ()  # () -> the family's *ForCausalLM
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_scaling: tuple[tuple[str, float | int], ...] = ()
    attention_bias: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    score_dim: int = 1
    score_bias: bool = False
    score_type: str = "reward"
    do_normalize: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope type {self.rope_type!r}; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        set_("architectures", tuple(self.architectures))
        if not self.architectures:
            set_("architectures", (f"{FAMILY_CLASS_PREFIX[self.model_type]}ForCausalLM",))
        set_("rope_scaling", tuple(sorted((str(k), v) for k, v in self.rope_scaling)))
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))
        family = self.family
        if family.attention_bias != "switch" and self.attention_bias:
            raise ValueError(f"{self.model_type} has no attention_bias switch")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be positive, got {self.sliding_window}")
        if self.layer_types is None:
            windowed = family.window == "uniform" and self.sliding_window is not None
            kind = "sliding_attention" if windowed else "full_attention"
            set_("layer_types", (kind,) * self.num_hidden_layers)
        set_("layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        if not set(self.layer_types) <= {"full_attention", "sliding_attention"}:
            raise ValueError(f"unsupported layer_types {sorted(set(self.layer_types))}")
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
        if family.window == "none" and "sliding_attention" in self.layer_types:
            raise ValueError(f"{self.model_type} has no sliding-window attention")
        if family.window == "uniform" and len(set(self.layer_types)) > 1:
            raise ValueError("mistral applies its sliding window to every layer or none")
        if self.score_type not in SCORE_TYPE_NORMALIZE:
            raise ValueError(
                f"unsupported score_type {self.score_type!r}; "
                f"supported: {', '.join(SCORE_TYPE_NORMALIZE)}"
            )
        _ = self.kind  # validates the architecture name

    # ----------------------------------------------------------------- switches
    @property
    def family(self) -> Family:
        """This ``model_type``'s row of `FAMILIES`."""
        return FAMILIES[self.model_type]

    @property
    def qkv_bias(self) -> bool:
        """Whether q/k/v projections have biases (always for Qwen2)."""
        return self.family.qkv_bias or self.attention_bias

    @property
    def o_bias(self) -> bool:
        """Whether the output projection has a bias (Llama/Qwen3 ``attention_bias``)."""
        return self.attention_bias and self.family.attention_bias == "switch"

    @property
    def qk_norm(self) -> bool:
        """Whether queries and keys pass a per-head RMSNorm before rope (Qwen3)."""
        return self.family.qk_norm

    def layer_window(self, layer: int) -> int | None:
        """The attention window of ``layer`` (keys at most ``window - 1`` tokens back)."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    @property
    def kind(self) -> Kind:
        """``"causal_lm"``, ``"sequence_classification"`` or ``"score"`` (safe-rlhf)."""
        return _kind_of(self.architectures)

    @property
    def normalize_function(self) -> str:
        """safe-rlhf's normalisation for this ``score_type``: affine, scale or identity."""
        return SCORE_TYPE_NORMALIZE[self.score_type]

    def rope_inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies ``[head_dim // 2]`` (float32), scaled per ``rope_type``.

        >>> DecoderConfig(vocab_size=8, hidden_size=8, intermediate_size=8,
        ...               num_hidden_layers=1, num_attention_heads=2).rope_inv_freq()
        array([1.  , 0.01], dtype=float32)
        """
        dim = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        params = dict(self.rope_scaling)
        if self.rope_type == "linear":
            inv_freq = inv_freq / params["factor"]
        elif self.rope_type == "llama3":
            factor = params["factor"]
            low, high = params["low_freq_factor"], params["high_freq_factor"]
            old_len = params["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
            inv_freq = np.where(medium, smoothed, scaled)
        return inv_freq.astype(np.float32)

    # ---------------------------------------------------------------- HF config
    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> DecoderConfig:
        """Reads a Hugging Face ``config.json`` dict (transformers 4 or 5 spelling)."""
        hf = dict(hf)
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; supported: silu")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        rope_theta, rope_type, rope_scaling = _read_rope(hf)
        family = FAMILIES[model_type]
        sliding_window, layer_types = _read_window(hf, family)
        arch = tuple(hf.get("architectures") or ())
        kind = _kind_of(arch)
        score_dim = 1
        if kind == "sequence_classification":
            labels = hf.get("id2label")
            score_dim = len(labels) if labels else int(hf.get("num_labels", 2))
        elif kind == "score":
            score_dim = int(hf.get("score_dim", 1))
        eos = hf.get("eos_token_id")
        extra = tuple(
            sorted(
                (k, json.dumps(v, sort_keys=True)) for k, v in hf.items() if k not in _PARSED_KEYS
            )
        )
        heads = hf["num_attention_heads"]
        return cls(
            model_type=model_type,
            architectures=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_type=rope_type,
            rope_scaling=tuple(rope_scaling.items()),
            attention_bias=bool(hf.get("attention_bias", False))
            and family.attention_bias != "ignored",
            sliding_window=sliding_window,
            layer_types=layer_types,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
            torch_dtype=hf.get("dtype", hf.get("torch_dtype")),
            score_dim=score_dim,
            # safe-rlhf's head-bias switch: ``score_bias`` (current safe-rlhf), ``bias`` (the
            # releases that trained the beaver v1 evaluators)
            score_bias=bool(hf.get("score_bias", hf.get("bias", False)))
            if kind == "score"
            else False,
            score_type=hf.get("score_type", "reward") if kind == "score" else "reward",
            do_normalize=bool(hf.get("do_normalize", False)) if kind == "score" else False,
            extra=extra,
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict (transformers >= 5 spelling)."""
        mt, family = self.model_type, self.family
        out: dict[str, Any] = {k: json.loads(v) for k, v in self.extra}
        out.update(
            model_type=mt,
            architectures=list(self.architectures),
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={
                "rope_theta": self.rope_theta,
                "rope_type": self.rope_type,
                **dict(self.rope_scaling),
            },
            hidden_act="silu",
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            eos_token_id=(
                list(self.eos_token_id)
                if isinstance(self.eos_token_id, tuple)
                else self.eos_token_id
            ),
            pad_token_id=self.pad_token_id,
        )
        if self.torch_dtype is not None:
            out["dtype"] = self.torch_dtype
        default_head_dim = self.head_dim == self.hidden_size // self.num_attention_heads
        if family.head_dim_key == "always" or not default_head_dim:
            out["head_dim"] = self.head_dim
        if family.attention_bias == "switch":
            out["attention_bias"] = self.attention_bias
        if family.writes_mlp_bias:
            out["mlp_bias"] = False
        if family.window == "uniform":
            out["sliding_window"] = self.sliding_window
        if family.window == "per_layer":
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["layer_types"] = list(self.layer_types)
        kind = self.kind
        if kind == "sequence_classification":
            id2label = out.get("id2label")
            if not isinstance(id2label, dict) or len(id2label) != self.score_dim:
                out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.score_dim)}
                out["label2id"] = {f"LABEL_{i}": i for i in range(self.score_dim)}
        if kind == "score":
            out.update(
                score_dim=self.score_dim,
                bias=self.score_bias,
                score_bias=self.score_bias,
                score_type=self.score_type,
                do_normalize=self.do_normalize,
            )
        return out

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with ``changes`` applied (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


def _kind_of(architectures: tuple[str, ...]) -> Kind:
    """The head an architecture name asks for (a causal LM when there is none)."""
    if not architectures:
        return "causal_lm"
    for suffix, kind in (
        ("ForCausalLM", "causal_lm"),
        ("ForSequenceClassification", "sequence_classification"),
        ("ForScore", "score"),
    ):
        if architectures[0].endswith(suffix):
            return kind  # type: ignore[return-value]
    raise ValueError(
        f"unsupported architecture {architectures[0]!r}; supported: *ForCausalLM, "
        "*ForSequenceClassification, *ForScore (safe-rlhf)"
    )


def _read_rope(hf: Mapping[str, Any]) -> tuple[float, str, dict[str, float | int]]:
    """``(rope_theta, rope_type, scaling parameters)`` from either spelling."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    params = dict(params)
    if any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    theta = params.pop("rope_theta", None)
    if theta is None:
        theta = hf.get("rope_theta", 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    partial = params.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor={partial} is not supported")
    if rope_type == "llama3":
        params.setdefault(
            "original_max_position_embeddings", hf.get("max_position_embeddings", 4096)
        )
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            if key not in params:
                raise ValueError(f"llama3 rope scaling needs {key!r}")
    if rope_type == "linear" and "factor" not in params:
        raise ValueError("linear rope scaling needs 'factor'")
    return float(theta), rope_type, params


def _read_window(
    hf: Mapping[str, Any], family: Family
) -> tuple[int | None, tuple[str, ...] | None]:
    """``(sliding_window, layer_types)`` with Hugging Face's per-family defaults."""
    n = hf["num_hidden_layers"]
    if family.window == "none":
        return None, None
    if family.window == "uniform":
        window = hf.get("sliding_window")
        kind = "sliding_attention" if window is not None else "full_attention"
        return window, (kind,) * n
    # "per_layer" (Qwen2, Qwen3): the window only counts when use_sliding_window is set.
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", 28)
        layer_types = [
            "sliding_attention" if window is not None and i >= first else "full_attention"
            for i in range(n)
        ]
    if window is None:  # transformers ignores sliding layers without a window
        layer_types = ["full_attention"] * n
    return window, tuple(layer_types)
