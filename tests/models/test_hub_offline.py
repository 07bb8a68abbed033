"""Loading a model, a tokenizer and a dataset by Hub id, revision included, without a network.

A Hugging Face cache is written in its real on-disk layout (``models--org--name/{blobs,
refs/main,snapshots/<commit>/...}``, ``datasets--org--name/...``, files as symlinks to
content-addressed blobs) and a subprocess loads from it with ``HF_HUB_OFFLINE=1``
(huggingface_hub reads these variables when it is imported, hence the subprocess).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from safedpo_jax.data import load_tokenizer
from safedpo_jax.models import CausalLM, DecoderConfig, save_pretrained

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "1" * 40, "2" * 40  # two commits; refs/main points at NEW


def put_snapshot(cache: Path, kind: str, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """One commit of ``repo`` in the Hub cache layout (blobs named by their sha256)."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def set_ref(cache: Path, kind: str, repo: str, commit: str) -> None:
    ref = cache / f"{kind}s--{repo.replace('/', '--')}" / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def rows(n: int) -> bytes:
    keys = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe")
    out = [
        dict(zip(keys, (f"q{i}", "a", "b", True, False), strict=True))
        | {"better_response_id": 0, "safer_response_id": 1}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in out).encode()


SCRIPT = r"""
import json, sys
from safedpo_jax.data import load_rows, load_tokenizer
from safedpo_jax.models import from_pretrained
from safedpo_jax.models.hf import resolve

old, new = sys.argv[1], sys.argv[2]


def embed_sum(**kw):
    model = from_pretrained("org/tiny-llama", **kw)
    return float(abs(model.model.embed_tokens.get_value()).sum())


out = {
    "resolve_main": resolve("org/tiny-llama").name,
    "resolve_old": resolve("org/tiny-llama", revision=old).name,
    "embed_old": embed_sum(revision=old),
    "embed_main": embed_sum(),
    "tokenizer": load_tokenizer("org/tiny-llama", revision=old).convert_ids_to_tokens([3])[0],
    "rows_main": len(load_rows("org/pku-mini", split="test")),
    "rows_old": len(load_rows("org/pku-mini", split="test", revision=old)),
    "rows_config": len(load_rows("org/pku-mini", split="train", config="alpaca-7b")),
}
errors = {}
for key, call in (
    ("model", lambda: resolve("org/no-such-model")),
    ("revision", lambda: resolve("org/tiny-llama", revision="3" * 40)),
    ("tokenizer", lambda: load_tokenizer("org/no-such-model")),
    ("dataset", lambda: load_rows("org/no-such-data")),
):
    try:
        call()
    except (FileNotFoundError, ValueError) as exc:
        errors[key] = [type(exc).__name__, str(exc)]
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.mark.slow  # ~45 s on 2 shared cores: a subprocess imports jax and loads twice
def test_model_tokenizer_and_dataset_by_hub_id_offline(tmp_path):
    cache = tmp_path / "hf_home" / "hub"
    tok_dir = tmp_path / "tok"
    load_tokenizer("sample").save_pretrained(tok_dir)
    config = DecoderConfig(
        vocab_size=704,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    sums = {}
    for commit, seed in ((OLD, 0), (NEW, 1)):
        model = CausalLM(config, rngs=nnx.Rngs(seed))
        sums[commit] = float(np.abs(np.asarray(model.model.embed_tokens.get_value())).sum())
        save_pretrained(model, tmp_path / commit)
        put_snapshot(
            cache,
            "model",
            "org/tiny-llama",
            commit,
            files_of(tmp_path / commit) | files_of(tok_dir),
        )
    set_ref(cache, "model", "org/tiny-llama", NEW)
    put_snapshot(cache, "dataset", "org/pku-mini", OLD, {"data/test.jsonl": rows(2)})
    put_snapshot(cache, "dataset", "org/pku-mini", NEW, {
        "data/test.jsonl": rows(3),
        "data/Alpaca-7B/train.jsonl": rows(4),
        "data/Alpaca2-7B/train.jsonl": rows(5),
    })  # fmt: skip
    set_ref(cache, "dataset", "org/pku-mini", NEW)

    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"),
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, OLD, NEW], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["resolve_main"] == NEW and out["resolve_old"] == OLD
    assert np.isclose(out["embed_old"], sums[OLD], rtol=1e-6)
    assert np.isclose(out["embed_main"], sums[NEW], rtol=1e-6)
    assert out["tokenizer"] == "</s>"
    assert (out["rows_main"], out["rows_old"], out["rows_config"]) == (3, 2, 4)
    errors = out["errors"]
    assert set(errors) == {"model", "revision", "tokenizer", "dataset"}
    for key, (kind, message) in errors.items():
        assert "\n" not in message, key
        assert kind in ("FileNotFoundError", "DataError"), (key, kind)
    assert "'org/no-such-model'" in errors["model"][1]
    assert "revision '3333" in errors["revision"][1]
    assert "'org/no-such-model'" in errors["tokenizer"][1]
    assert "'org/no-such-data'" in errors["dataset"][1]
