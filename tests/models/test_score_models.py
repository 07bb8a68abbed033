"""Score models: per-token scores, a score model started from a causal LM, and export in
the Hugging Face classifier and safe-rlhf layouts (round trips both ways).

References: safe-rlhf's ``get_scores`` written out in numpy over a torch backbone
(`torch_reference.safe_rlhf_reference`), and transformers'
``*ForSequenceClassification`` itself. Tolerance 1e-4 on scores of magnitude ~1-10.
"""

import json

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from torch_reference import (  # noqa: E402
    CASES,
    batches,
    build_hf,
    read_checkpoint,
    run,
    safe_rlhf_checkpoint,
    safe_rlhf_reference,
    torch_logits,
    write_checkpoint,
)

from safedpo_jax.models import (  # noqa: E402
    ScoreModel,
    convert_score_model,
    from_pretrained,
    save_pretrained,
    score_model_from_causal_lm,
)
from safedpo_jax.sharding import make_mesh  # noqa: E402

ATOL = 1e-4


@nnx.jit
def _per_token(model, ids, mask):
    return model(ids, mask, per_token=True)


@nnx.jit
def _hidden(model, ids, mask):
    return model(ids, mask, return_hidden=True)


def run_per_token(model, ids, mask):
    return np.asarray(_per_token(model, ids, mask))


def _last_real(mask):
    return np.array([np.nonzero(m)[0][-1] for m in mask])


def _flat(model):
    state = nnx.state(model)
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


# ------------------------------------------------------------------------- per-token scores
@pytest.mark.parametrize(
    ("score_dim", "bias", "score_type", "do_normalize"),
    [(1, True, "reward", True), (2, True, "cost", True), (1, False, "critic", True)],
)
def test_per_token_scores_match_safe_rlhf(score_dim, bias, score_type, do_normalize, tmp_path):
    backbone, head = safe_rlhf_checkpoint(
        tmp_path, score_dim=score_dim, bias=bias, score_type=score_type, do_normalize=do_normalize
    )
    model = from_pretrained(tmp_path)
    for side, (ids, mask) in batches().items():
        values = run_per_token(model, ids, mask)
        assert values.dtype == np.float32
        assert values.shape == ((3, 9) if score_dim == 1 else (3, 9, score_dim))
        want = safe_rlhf_reference(
            backbone, head, ids, mask, score_type, do_normalize, per_token=True
        ).reshape(values.shape)
        real = mask.astype(bool)
        np.testing.assert_allclose(values[real], want[real], atol=ATOL, rtol=0, err_msg=side)
        assert np.all(values[~real] == 0), side
        # the end score is the per-token output at the last real token, whatever the side
        end = run(model, ids, mask)
        np.testing.assert_array_equal(end, values[np.arange(3), _last_real(mask)], err_msg=side)


def test_per_token_is_padding_invariant(tmp_path):
    """Right- and left-padded copies of one batch give the same values on real tokens."""
    safe_rlhf_checkpoint(tmp_path, score_dim=1, bias=True, score_type="reward", do_normalize=True)
    model = from_pretrained(tmp_path)
    r_ids, r_mask = batches()["right"]
    l_mask = r_mask[:, ::-1].copy()
    l_ids = np.zeros_like(r_ids)
    for row in range(3):  # the same tokens, moved to the right end
        l_ids[row][l_mask[row] == 1] = r_ids[row][r_mask[row] == 1]
    right, left = run_per_token(model, r_ids, r_mask), run_per_token(model, l_ids, l_mask)
    for row in range(3):
        np.testing.assert_allclose(
            right[row][r_mask[row] == 1], left[row][l_mask[row] == 1], atol=1e-5, rtol=0
        )
    np.testing.assert_allclose(run(model, r_ids, r_mask), run(model, l_ids, l_mask), atol=1e-5)


# -------------------------------------------------------------- starting from a causal LM
def test_score_model_from_causal_lm_safe_rlhf_layout(tmp_path):
    family, overrides = CASES["llama-mha-untied"]
    build_hf(family, tmp_path, **overrides)  # untied: the checkpoint has lm_head.weight
    assert "lm_head.weight" in read_checkpoint(tmp_path)[1]
    model = score_model_from_causal_lm(tmp_path, score_dim=2, score_type="cost", seed=3)
    assert isinstance(model, ScoreModel)
    config = model.config
    assert config.architectures == ("LlamaForScore",)
    assert (config.kind, config.score_type, config.score_bias, config.do_normalize) == (
        "score",
        "cost",
        True,
        False,
    )
    params = _flat(model)
    np.testing.assert_array_equal(params["score_bias"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(params["normalizer_mean"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(params["normalizer_var"], np.ones(2, np.float32))
    np.testing.assert_array_equal(params["normalizer_count"], np.zeros(1, np.int32))
    head = params["score_head"]
    assert head.shape == (32, 2)
    assert abs(head.mean()) < 0.01
    assert 0.7 * config.initializer_range < head.std() < 1.3 * config.initializer_range
    # the decoder is the causal LM's: per-token scores are its hidden states times the head
    lm = from_pretrained(tmp_path)
    lm_params = _flat(lm)
    for name, value in params.items():
        if name.startswith("model."):
            np.testing.assert_array_equal(value, lm_params[name], err_msg=name)
    ids, mask = batches()["right"]
    hidden = np.asarray(_hidden(lm, ids, mask))
    values = run_per_token(model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(values[real], (hidden @ head)[real], atol=1e-6, rtol=1e-5)
    # the seed picks the head
    same = _flat(score_model_from_causal_lm(tmp_path, score_dim=2, score_type="cost", seed=3))
    other = _flat(score_model_from_causal_lm(tmp_path, score_dim=2, score_type="cost", seed=4))
    np.testing.assert_array_equal(same["score_head"], head)
    assert not np.allclose(other["score_head"], head)


def test_score_model_from_tied_causal_lm_hf_layout_exports_to_transformers(tmp_path):
    import transformers

    family, overrides = CASES["qwen2-bias-gqa2-tied"]
    build_hf(family, tmp_path / "lm", **overrides)
    model = score_model_from_causal_lm(tmp_path / "lm", layout="hf", seed=1)
    assert model.config.architectures == ("Qwen2ForSequenceClassification",)
    assert model.score_bias is None and model.normalizer_mean is None
    save_pretrained(model, tmp_path / "clf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "clf", attn_implementation="eager"
    ).eval()
    for side, (ids, mask) in batches().items():
        want = torch_logits(hf, ids, mask)[:, 0]
        np.testing.assert_allclose(run(model, ids, mask), want, atol=ATOL, rtol=0, err_msg=side)


def test_score_model_from_causal_lm_on_a_mesh(tmp_path):
    family, overrides = CASES["qwen2-bias-gqa2-tied"]
    build_hf(family, tmp_path, **overrides)
    plain = _flat(score_model_from_causal_lm(tmp_path, seed=2))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded_model = score_model_from_causal_lm(tmp_path, seed=2, mesh=mesh)
    embed = nnx.state(sharded_model)["model"]["embed_tokens"].get_value()
    assert len(embed.sharding.device_set) > 1
    sharded = _flat(sharded_model)
    assert sorted(plain) == sorted(sharded)
    for name, value in plain.items():
        np.testing.assert_array_equal(sharded[name], value, err_msg=name)


def test_score_model_from_causal_lm_rejects_other_keys_and_score_models(tmp_path):
    family, overrides = CASES["llama-mha-untied"]
    build_hf(family, tmp_path / "good", **overrides)
    config, tensors = read_checkpoint(tmp_path / "good")
    write_checkpoint(tmp_path / "extra", config, {**tensors, "value_head.weight": np.ones((1, 32))})
    with pytest.raises(KeyError, match="unexpected key.*value_head.weight"):
        score_model_from_causal_lm(tmp_path / "extra")
    del tensors["model.norm.weight"]
    write_checkpoint(tmp_path / "missing", config, tensors)
    with pytest.raises(KeyError, match="missing 1 key.*model.norm.weight"):
        score_model_from_causal_lm(tmp_path / "missing")
    safe_rlhf_checkpoint(
        tmp_path / "score", score_dim=1, bias=False, score_type="reward", do_normalize=False
    )
    with pytest.raises(ValueError, match="LlamaForScore.*from_pretrained"):
        score_model_from_causal_lm(tmp_path / "score")
    with pytest.raises(KeyError, match="score_model_from_causal_lm"):
        from_pretrained(tmp_path / "good", kind="score")
    with pytest.raises(ValueError, match="'safe_rlhf' or 'hf'"):
        score_model_from_causal_lm(tmp_path / "good", layout="trl")
    with pytest.raises(ValueError, match="score_dim must be a positive int, got 0"):
        score_model_from_causal_lm(tmp_path / "good", score_dim=0)
    with pytest.raises(ValueError, match="unsupported score_type 'value'"):
        score_model_from_causal_lm(tmp_path / "good", score_type="value")


# ------------------------------------------------------------------------------- export
def test_export_hf_transformers_scores_the_same_and_reloads(tmp_path):
    """ours -> HF torch (AutoModelForSequenceClassification) -> ours."""
    import transformers

    backbone, head = safe_rlhf_checkpoint(
        tmp_path / "safe", score_dim=2, bias=False, score_type="cost", do_normalize=True
    )
    ours = from_pretrained(tmp_path / "safe")
    save_pretrained(ours, tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 2
    assert not {"normalizer_type", "momentum", "mean", "var", "score_dim"} & set(config)
    keys = set(read_checkpoint(tmp_path / "hf")[1])
    assert "score.weight" in keys and not any(k.startswith(("normalizer", "score_h")) for k in keys)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    assert hf.config.pad_token_id == 0
    for side, (ids, mask) in batches().items():
        assert not np.any(ids[mask == 1] == 0)  # HF pools at the last id != pad_token_id
        got = torch_logits(hf, ids, mask)
        want = safe_rlhf_reference(backbone, head, ids, mask, "cost", True)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=side)
        np.testing.assert_allclose(run(ours, ids, mask), got, atol=ATOL, rtol=0, err_msg=side)
    hf.save_pretrained(tmp_path / "hf_torch")
    back = from_pretrained(tmp_path / "hf_torch")
    assert back.config.kind == "sequence_classification"
    converted = convert_score_model(ours, "hf")
    for side, (ids, mask) in batches().items():
        np.testing.assert_array_equal(run(back, ids, mask), run(converted, ids, mask), err_msg=side)
        np.testing.assert_allclose(
            run(back, ids, mask), run(ours, ids, mask), atol=1e-5, rtol=1e-5, err_msg=side
        )


def test_export_hf_refuses_a_head_with_an_effective_bias(tmp_path):
    safe_rlhf_checkpoint(
        tmp_path / "bias", score_dim=1, bias=True, score_type="critic", do_normalize=False
    )
    with pytest.raises(ValueError, match="nonzero effective bias.*format='safe_rlhf'"):
        save_pretrained(from_pretrained(tmp_path / "bias"), tmp_path / "out", format="hf")
    safe_rlhf_checkpoint(
        tmp_path / "mean", score_dim=1, bias=False, score_type="reward", do_normalize=True
    )
    with pytest.raises(ValueError, match="nonzero effective bias"):
        convert_score_model(from_pretrained(tmp_path / "mean"), "hf")
    assert not (tmp_path / "out").exists()
    # an affine normaliser with mean 0 folds into the weight
    backbone, head = safe_rlhf_checkpoint(
        tmp_path / "zero",
        score_dim=1,
        bias=False,
        score_type="reward",
        do_normalize=True,
        zero_mean=True,
    )
    converted = convert_score_model(from_pretrained(tmp_path / "zero"), "hf")
    ids, mask = batches()["left"]
    want = safe_rlhf_reference(backbone, head, ids, mask, "reward", True)[:, 0]
    np.testing.assert_allclose(run(converted, ids, mask), want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="applies to score models"):
        family, overrides = CASES["llama-mha-untied"]
        build_hf(family, tmp_path / "lm", **overrides)
        save_pretrained(from_pretrained(tmp_path / "lm"), tmp_path / "out", format="hf")


@pytest.mark.parametrize("bias_key", ["bias", "score_bias"])
def test_safe_rlhf_round_trip_is_exact(bias_key, tmp_path):
    """safe-rlhf layout -> ours -> safe-rlhf layout: same tensors, bytes and config."""
    safe_rlhf_checkpoint(
        tmp_path / "in",
        score_dim=2,
        bias=True,
        score_type="cost",
        do_normalize=True,
        bias_key=bias_key,
    )
    model = from_pretrained(tmp_path / "in")
    assert model.config.score_bias
    save_pretrained(model, tmp_path / "out", format="safe_rlhf")
    config_in, tensors_in = read_checkpoint(tmp_path / "in")
    config_out, tensors_out = read_checkpoint(tmp_path / "out")
    assert sorted(tensors_in) == sorted(tensors_out)
    for key, value in tensors_in.items():
        assert tensors_out[key].dtype == value.dtype, key
        assert tensors_out[key].tobytes() == value.tobytes(), key
    assert tensors_out["normalizer.count"].dtype == np.int64
    for key, value in config_in.items():
        if key not in (
            "dtype",
            "torch_dtype",
            "transformers_version",
            "rope_theta",
            "rope_scaling",
        ):
            assert config_out[key] == value, key
    assert config_out["bias"] is True and config_out["score_bias"] is True
    assert config_out["normalizer_type"] == "ExponentialMovingAverage"
    np.testing.assert_array_equal(np.float32(config_out["mean"]), tensors_in["normalizer.mean"])
    np.testing.assert_array_equal(np.float32(config_out["var"]), tensors_in["normalizer.var"])
    again = from_pretrained(tmp_path / "out")
    for side, (ids, mask) in batches().items():
        np.testing.assert_array_equal(run(again, ids, mask), run(model, ids, mask), err_msg=side)


def test_hf_classifier_to_safe_rlhf_and_back(tmp_path):
    """HF classifier -> ours -> safe-rlhf layout -> ours -> HF classifier, scores exact."""
    import transformers

    build_hf(
        "qwen3", tmp_path / "hf", head="sequence_classification", num_labels=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    clf = from_pretrained(tmp_path / "hf")
    save_pretrained(clf, tmp_path / "safe", format="safe_rlhf")
    config, tensors = read_checkpoint(tmp_path / "safe")
    assert config["architectures"] == ["Qwen3ForScore"]
    assert (config["score_dim"], config["bias"], config["score_bias"]) == (1, False, False)
    assert (config["score_type"], config["do_normalize"], config["normalizer_type"]) == (
        "reward",
        False,
        None,
    )
    assert not {"id2label", "label2id"} & set(config)
    hf_tensors = read_checkpoint(tmp_path / "hf")[1]
    assert tensors["score_head.weight"].tobytes() == hf_tensors["score.weight"].tobytes()
    np.testing.assert_array_equal(tensors["normalizer.var"], np.ones(1, np.float32))
    assert tensors["normalizer.count"].dtype == np.int64
    safe = from_pretrained(tmp_path / "safe")
    assert safe.config.kind == "score"
    for side, (ids, mask) in batches().items():
        np.testing.assert_array_equal(run(safe, ids, mask), run(clf, ids, mask), err_msg=side)
    save_pretrained(safe, tmp_path / "hf2", format="hf")
    again = read_checkpoint(tmp_path / "hf2")[1]
    assert sorted(again) == sorted(hf_tensors)
    for key, value in hf_tensors.items():
        assert again[key].tobytes() == value.tobytes(), key
    transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf2")
    relabelled = convert_score_model(safe, "safe_rlhf", score_type="cost")
    assert relabelled.config.score_type == "cost"
    ids, mask = batches()["right"]
    np.testing.assert_array_equal(run(relabelled, ids, mask), run(safe, ids, mask))


def test_per_token_values_train_like_a_critic():
    """Gradients of the masked per-token sum: d/dW = sum of real hidden states, d/db = count."""
    from safedpo_jax.models import DecoderConfig

    config = DecoderConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, architectures=("LlamaForScore",), score_bias=True,
        score_type="critic",
    )  # fmt: skip
    model = ScoreModel(config, rngs=nnx.Rngs(0))
    ids, mask = batches(vocab=64)["left"]

    @nnx.jit
    def loss_and_grads(model):
        return nnx.value_and_grad(lambda m: m(ids, mask, per_token=True).sum())(model)

    loss, grads = loss_and_grads(model)
    real = mask.astype(bool)
    hidden = np.asarray(model.model(ids, mask, None)[0])
    np.testing.assert_allclose(
        np.asarray(grads.score_head[...])[:, 0], hidden[real].sum(0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(grads.score_bias[...]), [real.sum()], rtol=0)
    assert np.isfinite(float(loss))
    for path, value in nnx.to_flat_state(nnx.state(grads, nnx.Param)):
        assert np.all(np.isfinite(np.asarray(value.get_value()))), path
