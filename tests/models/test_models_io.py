"""Checkpoint I/O: round trips through transformers, sharded files, and loud failures."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_reference import (  # noqa: E402
    CASES,
    batches,
    build_hf,
    read_checkpoint,
    run,
    torch_logits,
    write_checkpoint,
)

from safedpo_jax.models import from_pretrained, save_pretrained  # noqa: E402


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("case", "max_shard_size"),
    [
        ("qwen2-bias-gqa2-tied", "5GB"),
        ("qwen3-qknorm-headdim16-gqa4", "20KB"),
        ("mistral-window3-gqa4", 30_000),
        ("llama3-rope-gqa2-tied", "5GB"),
    ],
)
def test_save_then_transformers_loads_same_model(case, max_shard_size, tmp_path):
    import transformers

    family, overrides = CASES[case]
    hf = build_hf(family, tmp_path / "hf", **overrides)
    model = from_pretrained(tmp_path / "hf")
    save_pretrained(model, tmp_path / "ours", max_shard_size=max_shard_size)
    sharded = (tmp_path / "ours" / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_size != "5GB")
    if sharded:
        assert len(list((tmp_path / "ours").glob("model-*-of-*.safetensors"))) > 1
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", attn_implementation="eager"
    ).eval()
    _assert_same_state(hf, back)
    ours_config = json.loads((tmp_path / "ours" / "config.json").read_text())
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert ours_config == hf_config
    ids, mask = batches()["left"]
    real = mask.astype(bool)
    np.testing.assert_array_equal(torch_logits(back, ids, mask), torch_logits(hf, ids, mask))
    again = from_pretrained(tmp_path / "ours")  # our loader reads our (sharded) files
    np.testing.assert_array_equal(run(again, ids, mask)[real], run(model, ids, mask)[real])


def test_classifier_round_trip(tmp_path):
    import transformers

    hf = build_hf(
        "qwen2", tmp_path / "hf", head="sequence_classification", num_labels=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    save_pretrained(from_pretrained(tmp_path / "hf"), tmp_path / "ours")
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours")
    _assert_same_state(hf, back)


def test_transformers_sharded_checkpoint_loads(tmp_path):
    family, overrides = CASES["llama-mha-untied"]
    hf = build_hf(family, tmp_path, **overrides)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    model = from_pretrained(tmp_path / "sharded")
    ids, mask = batches()["right"]
    real = mask.astype(bool)
    np.testing.assert_allclose(
        run(model, ids, mask)[real], torch_logits(hf, ids, mask)[real], atol=1e-4, rtol=0
    )


def test_bf16_checkpoint_loads(tmp_path):
    family, overrides = CASES["qwen2-bias-gqa2-tied"]
    hf = build_hf(family, tmp_path / "fp32", **overrides)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = from_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert model.model.embed_tokens[...].dtype == jnp.bfloat16
    upcast = from_pretrained(tmp_path / "bf16")  # bf16 file, fp32 params: exact upcast
    assert upcast.model.embed_tokens[...].dtype == jnp.float32
    ids, mask = batches()["right"]
    real = mask.astype(bool)
    want = torch_logits(hf.float(), ids, mask)[real]
    assert np.abs(run(model, ids, mask)[real].astype(np.float32) - want).max() < 0.5
    assert np.abs(run(upcast, ids, mask)[real] - want).max() < 0.2


# ----------------------------------------------------------------------------- failures
@pytest.fixture
def checkpoint(tmp_path):
    family, overrides = CASES["llama-mha-untied"]
    build_hf(family, tmp_path / "good", **overrides)
    return read_checkpoint(tmp_path / "good")


def test_missing_key_is_named(checkpoint, tmp_path):
    config, tensors = checkpoint
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(KeyError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        from_pretrained(tmp_path / "bad")


def test_unexpected_key_is_named(checkpoint, tmp_path):
    config, tensors = checkpoint
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(KeyError, match=r"unexpected.*model\.layers\.0\.self_attn\.q_proj\.bias"):
        from_pretrained(tmp_path / "bad")


def test_rotary_inv_freq_buffers_are_skipped(checkpoint, tmp_path):
    config, tensors = checkpoint
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    write_checkpoint(tmp_path / "old", config, tensors)
    from_pretrained(tmp_path / "old")


def test_wrong_shape_is_named(checkpoint, tmp_path):
    config, tensors = checkpoint
    tensors["model.layers.0.mlp.down_proj.weight"] = np.zeros((32, 63), np.float32)
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(ValueError, match=r"down_proj\.weight.*\(32, 64\).*\(32, 63\)"):
        from_pretrained(tmp_path / "bad")


def test_tied_lm_head_must_equal_embedding(checkpoint, tmp_path):
    config, tensors = checkpoint
    config = {**config, "tie_word_embeddings": True}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    write_checkpoint(tmp_path / "equal", config, tensors)
    assert from_pretrained(tmp_path / "equal").lm_head is None
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    write_checkpoint(tmp_path / "differs", config, tensors)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        from_pretrained(tmp_path / "differs")


def test_unsupported_model_type_lists_supported(checkpoint, tmp_path):
    config, tensors = checkpoint
    write_checkpoint(tmp_path / "gpt2", {**config, "model_type": "gpt2"}, tensors)
    with pytest.raises(ValueError, match="'gpt2'.*llama, mistral, qwen2, qwen3"):
        from_pretrained(tmp_path / "gpt2")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path / "empty")


def test_explicit_kind_for_config_without_architectures(checkpoint, tmp_path):
    config, tensors = checkpoint
    config = {k: v for k, v in config.items() if k != "architectures"}
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    tensors["score.weight"] = np.ones((1, 32), np.float32)
    write_checkpoint(tmp_path / "clf", config, tensors)
    with pytest.raises(KeyError, match="missing.*lm_head.weight"):
        from_pretrained(tmp_path / "clf")
    model = from_pretrained(tmp_path / "clf", kind="score")
    assert model.config.architectures == ("LlamaForSequenceClassification",)


def test_bf16_params_save_in_bf16(tmp_path):
    family, overrides = CASES["qwen3-tied-gqa2"]
    hf = build_hf(family, tmp_path / "fp32", **overrides).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16")
    model = from_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    save_pretrained(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["dtype"] == "bfloat16"
    import transformers

    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype="auto")
    assert back.dtype == torch.bfloat16
    _assert_same_state(hf, back)


def test_hub_ids_go_through_snapshot_download(checkpoint, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, revision, allow_patterns):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "good")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = from_pretrained("PKU-Alignment/beaver-7b-unified-reward", revision="main")
    assert model.config.model_type == "llama"
    ((repo_id, revision, patterns),) = calls
    assert (repo_id, revision) == ("PKU-Alignment/beaver-7b-unified-reward", "main")
    assert set(patterns) >= {"config.json", "*.safetensors", "model.safetensors.index.json"}
