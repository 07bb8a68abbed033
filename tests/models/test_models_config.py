"""`DecoderConfig`: Hugging Face config.json round trips, rope settings, clear errors."""

import json

import numpy as np
import pytest

from safedpo_jax.models import DecoderConfig

pytest.importorskip("transformers")

from torch_reference import CASES, hf_config  # noqa: E402

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_config_json_round_trips(case, tmp_path):
    family, overrides = CASES[case]
    arch = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    hf = hf_config(family, architectures=[f"{arch}ForCausalLM"], **overrides)
    hf.save_pretrained(tmp_path)  # as a model's save_pretrained writes it, less the dtype
    saved = json.loads((tmp_path / "config.json").read_text())
    config = DecoderConfig.from_hf(saved)
    assert config.to_hf() == saved
    assert DecoderConfig.from_hf(config.to_hf()) == config
    hash(config)  # a static attribute under jit must hash


def test_switches_per_family():
    qwen2 = DecoderConfig(model_type="qwen2", num_attention_heads=4, **TINY)
    qwen3 = DecoderConfig(model_type="qwen3", num_attention_heads=4, head_dim=16, **TINY)
    llama = DecoderConfig(num_attention_heads=4, attention_bias=True, **TINY)
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm) == (True, False, False)
    assert (qwen3.qkv_bias, qwen3.qk_norm, qwen3.head_dim) == (False, True, 16)
    assert (llama.qkv_bias, llama.o_bias) == (True, True)
    mistral = DecoderConfig(model_type="mistral", num_attention_heads=4, sliding_window=5, **TINY)
    assert [mistral.layer_window(i) for i in range(2)] == [5, 5]


def test_qwen_sliding_window_follows_use_sliding_window_and_max_window_layers():
    base = dict(model_type="qwen2", num_attention_heads=4, **TINY)
    config = DecoderConfig.from_hf(
        {**base, "use_sliding_window": True, "sliding_window": 7, "max_window_layers": 1}
    )
    assert config.layer_types == ("full_attention", "sliding_attention")
    assert [config.layer_window(i) for i in range(2)] == [None, 7]
    # Qwen2.5 hub configs carry a sliding_window that use_sliding_window=false disables.
    off = DecoderConfig.from_hf({**base, "use_sliding_window": False, "sliding_window": 131072})
    assert off.sliding_window is None and off.layer_window(1) is None


def test_legacy_rope_spelling_equals_transformers5_spelling():
    base = dict(model_type="llama", num_attention_heads=4, **TINY)
    legacy = DecoderConfig.from_hf(
        {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    modern = DecoderConfig.from_hf(
        {**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
    )
    assert legacy == modern
    assert (legacy.rope_type, legacy.rope_theta, dict(legacy.rope_scaling)) == (
        "linear",
        5e5,
        {"factor": 2.0},
    )
    plain = DecoderConfig.from_hf({**base, "rope_scaling": None})
    assert plain.rope_type == "default" and plain.rope_theta == 10000.0


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "longrope"])
def test_unknown_rope_type_is_rejected(rope_type):
    hf = dict(model_type="llama", num_attention_heads=4, **TINY)
    hf["rope_parameters"] = {"rope_type": rope_type, "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match=f"'{rope_type}'.*default, linear, llama3"):
        DecoderConfig.from_hf(hf)


def test_unsupported_model_type_lists_supported_ones():
    with pytest.raises(ValueError, match="'gemma'.*supported: llama, mistral, qwen2, qwen3"):
        DecoderConfig.from_hf({"model_type": "gemma", **TINY})


def test_unsupported_architecture_is_rejected():
    with pytest.raises(ValueError, match="LlamaForTokenClassification"):
        DecoderConfig(num_attention_heads=4, architectures=("LlamaForTokenClassification",), **TINY)


@pytest.mark.parametrize("case", ["llama3-rope-gqa2-tied", "llama-linear-rope-gqa4"])
def test_rope_frequencies_match_transformers(case):
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    family, overrides = CASES[case]
    hf = hf_config(family, **overrides)
    want, _ = ROPE_INIT_FUNCTIONS[hf.rope_parameters["rope_type"]](hf)
    got = DecoderConfig.from_hf(hf.to_dict()).rope_inv_freq()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_score_configs():
    base = dict(model_type="llama", num_attention_heads=4, **TINY)
    clf = DecoderConfig.from_hf(
        {**base, "architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a"}}
    )
    assert (clf.kind, clf.score_dim) == ("sequence_classification", 1)
    two = DecoderConfig.from_hf({**base, "architectures": ["Qwen2ForSequenceClassification"]})
    assert two.score_dim == 2  # transformers' default num_labels
    safe = {
        **base,
        "architectures": ["LlamaForScore"],
        "score_dim": 1,
        "bias": True,
        "score_type": "cost",
        "do_normalize": False,
        "normalizer_type": "ExponentialMovingAverage",
        "momentum": 0.9,
    }
    config = DecoderConfig.from_hf(safe)
    assert (config.kind, config.score_bias, config.normalize_function) == ("score", True, "scale")
    back = config.to_hf()
    assert {k: back[k] for k in safe} == safe
