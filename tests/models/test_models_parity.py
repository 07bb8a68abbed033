"""Logit parity with Hugging Face torch models, every family, right and left padding.

Tolerance: 1e-4 absolute on float32 logits of magnitude ~5 (measured: ~3e-6), compared on
real-token positions only; padded positions must be finite.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_reference import (  # noqa: E402
    CASES,
    batches,
    build_hf,
    run,
    safe_rlhf_checkpoint,
    safe_rlhf_reference,
    torch_logits,
)

from safedpo_jax.models import CausalLM, from_pretrained  # noqa: E402

ATOL = 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_causal_lm_logits_match_transformers(case, tmp_path):
    family, overrides = CASES[case]
    hf = build_hf(family, tmp_path, **overrides)
    model = from_pretrained(tmp_path)
    assert isinstance(model, CausalLM)
    assert (model.lm_head is None) == bool(overrides.get("tie_word_embeddings", False))
    for side, (ids, mask) in batches().items():
        got, want = run(model, ids, mask), torch_logits(hf, ids, mask)
        real = mask.astype(bool)
        assert np.isfinite(got).all(), side
        np.testing.assert_allclose(got[real], want[real], atol=ATOL, rtol=0, err_msg=side)


@pytest.mark.parametrize("case", ["mistral-window3-gqa4", "qwen2-window3-layer1"])
def test_sliding_window_changes_logits(case, tmp_path):
    """Guards the window cases above: the same weights without a window give other logits."""
    family, overrides = CASES[case]
    build_hf(family, tmp_path, **overrides)
    windowed = from_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    hf_config = json.loads(config_file.read_text())
    hf_config.update(sliding_window=None, use_sliding_window=False, layer_types=None)
    config_file.write_text(json.dumps(hf_config))
    full = from_pretrained(tmp_path)
    assert full.config.sliding_window is None
    ids, mask = batches()["right"]
    diff = np.abs(run(windowed, ids, mask) - run(full, ids, mask))[mask.astype(bool)]
    assert diff[:3].max() == 0  # the first tokens see fewer than 3 keys either way
    assert diff.max() > 1e-3


@pytest.mark.parametrize(
    ("family", "num_labels", "extra"),
    [
        ("llama", 1, dict(num_attention_heads=4, num_key_value_heads=2)),
        ("qwen2", 3, dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
        ("qwen3", 1, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
        ("mistral", 2, dict(num_attention_heads=4, num_key_value_heads=4, sliding_window=None)),
    ],
)
def test_sequence_classification_matches_transformers(family, num_labels, extra, tmp_path):
    hf = build_hf(family, tmp_path, head="sequence_classification", num_labels=num_labels, **extra)
    model = from_pretrained(tmp_path)
    assert type(model).__name__ == "ScoreModel"
    for side, (ids, mask) in batches().items():
        got = run(model, ids, mask)
        want = torch_logits(hf, ids, mask)  # HF pools at the last id != pad_token_id
        assert got.dtype == np.float32
        assert got.shape == ((3,) if num_labels == 1 else (3, num_labels))
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=ATOL, rtol=0, err_msg=side)


@pytest.mark.parametrize(
    ("score_dim", "bias", "score_type", "do_normalize"),
    [(1, False, "reward", False), (1, True, "reward", True), (2, True, "cost", True)],
)
def test_safe_rlhf_score_model(score_dim, bias, score_type, do_normalize, tmp_path):
    backbone, head = safe_rlhf_checkpoint(
        tmp_path, score_dim=score_dim, bias=bias, score_type=score_type, do_normalize=do_normalize
    )
    model = from_pretrained(tmp_path)
    assert model.config.kind == "score"
    assert int(model.normalizer_count[...][0]) == 1234
    for side, (ids, mask) in batches().items():
        got = run(model, ids, mask)
        want = safe_rlhf_reference(backbone, head, ids, mask, score_type, do_normalize)
        assert got.shape == ((3,) if score_dim == 1 else (3, score_dim))
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=ATOL, rtol=0, err_msg=side)
