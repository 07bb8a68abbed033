"""The P-SACPO merge tool: exact endpoints, the mean, other layouts, loud failures, streaming."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from safedpo_jax.models import CausalLM, DecoderConfig, from_pretrained, save_pretrained
from safedpo_jax.models.merge import main, merge_checkpoints

CONFIG = DecoderConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
)
# Files a checkpoint directory carries besides the weights (copied from A, never from B).
SIDE_FILES = {
    "tokenizer_config.json": '{"model_max_length": 64}',
    "special_tokens_map.json": '{"pad_token": "<pad>"}',
    "chat_template.jinja": "{{ messages }}",
}


def _checkpoint(path: Path, seed: int, *, shard: str = "5GB", param_dtype=jnp.float32) -> Path:
    model = CausalLM(CONFIG, rngs=nnx.Rngs(seed), param_dtype=param_dtype)  # eager: no compile
    save_pretrained(model, path, max_shard_size=shard)
    for name, text in SIDE_FILES.items():
        (path / name).write_text(f"{text} {path.name}")
    return path


def _tensors(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_q0_and_q1_reproduce_the_inputs_byte_for_byte(tmp_path):
    a = _checkpoint(tmp_path / "a", 0, shard="20KB")
    b = _checkpoint(tmp_path / "b", 1, shard="20KB")
    assert (a / "model.safetensors.index.json").exists()
    assert len(list(a.glob("model-*.safetensors"))) > 2
    merge_checkpoints(a, b, q=0.0, output=tmp_path / "q0")
    assert _files(tmp_path / "q0") == _files(a)  # weights, index, config, tokenizer files
    merge_checkpoints(a, b, q=1.0, output=tmp_path / "q1")
    q1, files_a, files_b = _files(tmp_path / "q1"), _files(a), _files(b)
    assert sorted(q1) == sorted(files_a)
    for name, data in q1.items():  # B's weights (same layout), A's other files
        assert data == (files_b[name] if name.endswith(".safetensors") else files_a[name]), name


def test_endpoints_are_exact_for_signed_zeros_and_non_finite_values(tmp_path):
    a = {"w": np.array([-0.0, np.inf, 1.5, -2.0], np.float32)}
    b = {"w": np.array([1.0, 2.0, np.nan, -0.0], np.float32)}
    for name, tensors in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"model_type": "llama"}')
        save_file(tensors, tmp_path / name / "model.safetensors")
    for q, want in ((0.0, a), (1.0, b)):
        merge_checkpoints(tmp_path / "a", tmp_path / "b", q=q, output=tmp_path / f"q{q}")
        got = load_file(tmp_path / f"q{q}" / "model.safetensors")["w"]
        assert got.tobytes() == want["w"].tobytes(), q


@pytest.mark.parametrize(("q", "param_dtype"), [(0.5, jnp.float32), (0.25, jnp.bfloat16)])
def test_interpolation_is_computed_in_float32_and_cast_back(q, param_dtype, tmp_path):
    a = _checkpoint(tmp_path / "a", 0, shard="20KB", param_dtype=param_dtype)
    b = _checkpoint(tmp_path / "b", 1, param_dtype=param_dtype)  # one file: layouts differ
    summary = merge_checkpoints(a, b, q=q, output=tmp_path / "m")
    ta, tb, tm = _tensors(a), _tensors(b), _tensors(tmp_path / "m")
    assert sorted(tm) == sorted(ta) and summary.tensors == len(ta)
    assert summary.weight_files == len(list(a.glob("*.safetensors"))) > 1
    assert sorted(summary.copied) == sorted(["config.json", *SIDE_FILES])
    for key, x_a in ta.items():
        x_b, got = tb[key], tm[key]
        assert got.dtype == x_a.dtype, key
        a64, b64 = x_a.astype(np.float64), x_b.astype(np.float64)
        if q == 0.5:  # the mean: one rounding of (a + b) / 2, exactly as numpy does it
            want = ((x_a.astype(np.float32) + x_b.astype(np.float32)) / 2).astype(x_a.dtype)
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:  # within one rounding of the target dtype of the exact value
            exact = (1 - q) * a64 + q * b64
            eps = float(np.finfo(ml_dtypes.bfloat16).eps)
            np.testing.assert_allclose(got.astype(np.float64), exact, rtol=eps, atol=0, err_msg=key)
            if not np.array_equal(x_a, x_b):  # not an input copied
                assert not np.array_equal(got, x_a) and not np.array_equal(got, x_b), key
    assert (
        _files(tmp_path / "m")["model.safetensors.index.json"]
        == _files(a)["model.safetensors.index.json"]
    )
    for name, text in SIDE_FILES.items():  # A's side files, not B's
        assert (tmp_path / "m" / name).read_text() == f"{text} a"
    merged = from_pretrained(tmp_path / "m", param_dtype=param_dtype)
    assert merged.config == from_pretrained(a, param_dtype=param_dtype).config


def _raw_pair(tmp_path, tensors_a, tensors_b, config_a=None, config_b=None):
    for name, tensors, config in (("a", tensors_a, config_a), ("b", tensors_b, config_b)):
        (tmp_path / name).mkdir()
        config = config or {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        save_file(tensors, tmp_path / name / "model.safetensors")
    return tmp_path / "a", tmp_path / "b"


W = np.ones((2, 3), np.float32)


@pytest.mark.parametrize(
    ("tensors_b", "config_b", "message"),
    [
        ({"w": W, "extra": W}, None, r"key sets differ: 0 key\(s\) only in .*1 only in .*extra"),
        ({"w": np.ones((3, 2), np.float32)}, None, r"'w' has shape \(2, 3\) in .* but \(3, 2\)"),
        (
            {"w": W},
            {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
            "field 'architectures' differs",
        ),
        ({"w": W}, {"model_type": "qwen2", "architectures": ["LlamaForCausalLM"]}, "model_type"),
    ],
)
def test_mismatched_inputs_fail_in_one_line_before_writing(tensors_b, config_b, message, tmp_path):
    a, b = _raw_pair(tmp_path, {"w": W}, tensors_b, config_b=config_b)
    with pytest.raises(ValueError, match=message) as error:
        merge_checkpoints(a, b, q=0.5, output=tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_integer_tensors_must_agree_and_bad_arguments_are_named(tmp_path):
    count = np.array([7], np.int64)
    a, b = _raw_pair(tmp_path, {"w": W, "count": count}, {"w": 3 * W, "count": count})
    merge_checkpoints(a, b, q=0.5, output=tmp_path / "ok")
    got = load_file(tmp_path / "ok" / "model.safetensors")
    np.testing.assert_array_equal(got["w"], 2 * W)
    assert got["count"].dtype == np.int64 and got["count"].tolist() == [7]
    save_file({"w": W, "count": count + 1}, b / "model.safetensors")
    with pytest.raises(ValueError, match="int64 tensor 'count' differs"):
        merge_checkpoints(a, b, q=0.5, output=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # no partial checkpoint left
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="int64 tensor 'count' differs"):
        merge_checkpoints(a, b, q=0.5, output=tmp_path / "empty")
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())
    with pytest.raises(ValueError, match=r"q must be a number in \[0, 1\], got 1.5"):
        merge_checkpoints(a, b, q=1.5, output=tmp_path / "q")
    with pytest.raises(FileExistsError, match="not empty"):
        merge_checkpoints(a, b, q=0.5, output=tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge_checkpoints(a, tmp_path / "nowhere", q=0.5, output=tmp_path / "x")


def test_one_tensor_at_a_time(tmp_path):
    """Peak host memory is a few tensors, not a checkpoint (16 tensors of 1 MB each)."""
    rng = np.random.default_rng(0)
    make = lambda: {f"t{i:02d}": rng.normal(size=(512, 512)).astype(np.float32) for i in range(16)}  # noqa: E731
    a, b = _raw_pair(tmp_path, make(), make())
    tracemalloc.start()
    try:
        merge_checkpoints(a, b, q=0.5, output=tmp_path / "m")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one = 512 * 512 * 4
    assert peak < 4.5 * one, peak / one  # a, b, their merge, a temporary; a checkpoint is 16
    assert len(_tensors(tmp_path / "m")) == 16


def test_command(tmp_path, capsys):
    a = _checkpoint(tmp_path / "a", 0)
    b = _checkpoint(tmp_path / "b", 1)
    assert main([str(a), str(b), "--q", "0.75", "--output", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "q=0.75" in out and "tokenizer_config.json" in out
    assert main([str(a), str(b), "--q", "0.75", "--output", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("merge: error:") and "not empty" in err
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "safedpo_jax.models.merge", str(a), str(b)]
        + ["--q", "0.5", "--output", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "merged" in done.stdout
    np.testing.assert_array_equal(
        _tensors(tmp_path / "cli")["model.norm.weight"], _tensors(a)["model.norm.weight"]
    )
