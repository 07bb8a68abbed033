"""Issue 12: a wrong model path or checkpoint is ONE line naming the path, key and file."""

from __future__ import annotations

import numpy as np
import pytest
from torch_reference import CASES, build_hf, read_checkpoint, write_checkpoint

from safedpo_jax.data import load_tokenizer
from safedpo_jax.models import from_pretrained
from safedpo_jax.models.hf import CheckpointKeyError, resolve


@pytest.fixture
def checkpoint(tmp_path):
    family, overrides = CASES["llama-mha-untied"]
    build_hf(family, tmp_path / "good", **overrides)
    return read_checkpoint(tmp_path / "good")


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and not text.startswith(("'", '"')), text
    return text


def test_missing_key_names_key_and_directory(checkpoint, tmp_path):
    config, tensors = checkpoint
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(ValueError) as info:  # also a KeyError, as before
        from_pretrained(tmp_path / "bad")
    assert isinstance(info.value, KeyError | CheckpointKeyError)
    text = _one_line(info.value)
    assert text.startswith(f"{tmp_path / 'bad'}: checkpoint is missing 1 key(s)")
    assert "model.layers.1.mlp.up_proj.weight" in text


def test_unused_key_names_its_file(checkpoint, tmp_path):
    config, tensors = checkpoint
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(ValueError) as info:
        from_pretrained(tmp_path / "bad")
    text = _one_line(info.value)
    assert "model.layers.0.self_attn.q_proj.bias (in model.safetensors)" in text


def test_mis_shaped_key_names_its_file(checkpoint, tmp_path):
    config, tensors = checkpoint
    tensors["model.layers.0.mlp.down_proj.weight"] = np.zeros((32, 63), np.float32)
    write_checkpoint(tmp_path / "bad", config, tensors)
    with pytest.raises(ValueError) as info:
        from_pretrained(tmp_path / "bad")
    text = _one_line(info.value)
    assert text.startswith(f"{tmp_path / 'bad' / 'model.safetensors'}: key ")
    assert "'model.layers.0.mlp.down_proj.weight'" in text and "(32, 63)" in text


def test_a_misspelled_model_or_tokenizer_path_is_one_line(tmp_path):
    for bad in (tmp_path / "runs" / "sft" / "exprot", "runs/sft/exprot", "./sft"):
        with pytest.raises(FileNotFoundError) as info:
            resolve(bad)
        assert str(bad) in _one_line(info.value)
        with pytest.raises(FileNotFoundError) as info:
            load_tokenizer(bad)
        assert str(bad) in _one_line(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as info:
        load_tokenizer(tmp_path / "empty")
    assert _one_line(info.value).startswith(f"{tmp_path / 'empty'}: cannot load a tokenizer")
