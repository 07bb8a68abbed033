"""The reference cache: its key, the model fingerprint, integrity checks, failed writes.

Every test here failed on v0.1 (key built from model, data, compute dtype and chunk size
only; fingerprint from headers and edge MiBs; no checksum; a failed write left its
temporary file behind with a bare OSError).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import micro_config, read_metrics

from safedpo_jax.train import reference as ref_cache
from safedpo_jax.train.config import from_preset
from safedpo_jax.train.loop import train

BASE_FPS = {"model_fp": "m" * 64, "dataset_fp": "d" * 64, "tokenizer_fp": "t" * 64}
MESH = {"data": 1, "fsdp": 8, "tensor": 1}


def facts_of(config=None, *, split="train", mesh=MESH, **fps):
    config = config or from_preset("tiny")
    return ref_cache.cache_facts(config, split=split, mesh_shape=mesh, **{**BASE_FPS, **fps})


# One change per fact the log-probs depend on: a config field, a fingerprint, or the
# process-wide matmul precision and the cache format.
CONFIG_CHANGES = {
    "param_dtype": "bfloat16",
    "dtype": "bfloat16",
    "attention_impl": "cudnn",
    "logprob_chunk_size": 16,
    "template": "chat",
    "max_length": 32,
    "pairs": "helpful",
    "keep_both_unsafe": True,
    "safety_label": "severity",
    "dataset": "PKU-Alignment/PKU-SafeRLHF",
    "dataset_config": "default",
    "ref_model": "some/other",
}


@pytest.mark.parametrize("field", sorted(CONFIG_CHANGES))
def test_key_changes_with_each_config_fact(field):
    base = from_preset("tiny")
    changed = base.replace(**{field: CONFIG_CHANGES[field]})
    assert ref_cache.cache_key(facts_of(changed)) != ref_cache.cache_key(facts_of(base))


@pytest.mark.parametrize("fp", sorted(BASE_FPS))
def test_key_changes_with_model_data_and_tokenizer_fingerprints(fp):
    base = ref_cache.cache_key(facts_of())
    assert ref_cache.cache_key(facts_of(**{fp: "x" * 64})) != base


def test_key_changes_with_split_precision_format_and_auto_chunk_mesh(monkeypatch):
    base = ref_cache.cache_key(facts_of())
    assert ref_cache.cache_key(facts_of(split="test")) != base
    with jax.default_matmul_precision("highest"):
        assert ref_cache.cache_key(facts_of()) != base
    # The automatic log-prob path depends on rows per device: the mesh counts...
    assert ref_cache.cache_key(facts_of(mesh={"data": 2, "fsdp": 4, "tensor": 1})) != base
    # ...but not once the chunk size is fixed.
    fixed = from_preset("tiny", logprob_chunk_size=0)
    assert ref_cache.cache_key(facts_of(fixed, mesh={"data": 8})) == ref_cache.cache_key(
        facts_of(fixed)
    )
    monkeypatch.setattr(ref_cache, "CACHE_FORMAT_VERSION", ref_cache.CACHE_FORMAT_VERSION + 1)
    assert ref_cache.cache_key(facts_of()) != base
    # And the same facts give the same key (a second run reuses the cache).
    monkeypatch.undo()
    assert ref_cache.cache_key(facts_of()) == base


def first_step(output_dir) -> dict:
    return next(r for r in read_metrics(output_dir) if r["step"] == 1)


def test_float32_run_does_not_reuse_a_bfloat16_runs_cache(tmp_path):
    """At step 1 the policy equals the reference, so the implicit rewards are 0."""
    common = dict(reference="cached", max_steps=1, eval_split=None)
    bf16 = train(micro_config(tmp_path, "bf16", param_dtype="bfloat16", **common))
    f32 = train(micro_config(tmp_path, "f32", param_dtype="float32", **common))
    for result in (bf16, f32):
        for name in ("rewards/chosen", "rewards/rejected"):
            assert abs(first_step(result.output_dir)[name]) < 1e-6, (result.output_dir, name)
    assert len(list((tmp_path / "refcache").glob("*.npy"))) == 2
    facts = [json.loads(p.read_text())["facts"] for p in (tmp_path / "refcache").glob("*.json")]
    assert sorted(f["param_dtype"] for f in facts) == ["bfloat16", "float32"]


# ---------------------------------------------------------------------- model fingerprint
def write_checkpoint(directory: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_fingerprint_sees_a_change_in_the_middle_of_a_large_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": rng.standard_normal((1000, 1000), dtype=np.float32) for i in range(3)}
    a = write_checkpoint(tmp_path / "a", tensors)
    assert (a / "model.safetensors").stat().st_size > 11 * 2**20
    tensors["w1"] = tensors["w1"].copy()
    tensors["w1"][500, 500] += 1.0  # ~6 MiB into the file, far from both edges
    b = write_checkpoint(tmp_path / "b", tensors)
    assert ref_cache.model_fingerprint(str(a)) != ref_cache.model_fingerprint(str(b))
    assert ref_cache.model_fingerprint(str(a)) == ref_cache.model_fingerprint(str(tmp_path / "a"))


def test_fingerprint_of_a_hub_id_covers_its_revision_and_bytes(tmp_path):
    tensors = {"w": np.ones((4, 4), np.float32)}
    one = write_checkpoint(tmp_path / "snapshots" / ("1" * 40), tensors)
    two = write_checkpoint(tmp_path / "snapshots" / ("2" * 40), tensors)
    fp_one = ref_cache.model_fingerprint("org/name", resolve=lambda _: one)
    fp_two = ref_cache.model_fingerprint("org/name", resolve=lambda _: two)
    assert fp_one != fp_two
    with pytest.raises(ValueError, match="not a local directory"):
        ref_cache.model_fingerprint("org/name")


# ---------------------------------------------------------------------- integrity, writes
class Counter:
    def __init__(self, rows: int):
        self.calls, self.rows = 0, rows

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return np.full((self.rows, 2), -float(self.calls), np.float32)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "drop_sidecar"])
def test_a_damaged_cache_file_is_recomputed_never_used(tmp_path, damage, caplog):
    compute = Counter(50)
    first, path, hit = ref_cache.load_or_compute(tmp_path, "k", compute, expected_rows=50)
    assert not hit and compute.calls == 1
    again, _, hit = ref_cache.load_or_compute(tmp_path, "k", compute, expected_rows=50)
    assert hit and compute.calls == 1
    np.testing.assert_array_equal(again, first)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":  # still a valid .npy of finite floats, different values
        i = len(data) - 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
        assert np.isfinite(np.load(path)).all() and not np.array_equal(np.load(path), first)
    else:
        path.with_suffix(".json").unlink()
    logps, _, hit = ref_cache.load_or_compute(tmp_path, "k", compute, expected_rows=50)
    assert not hit and compute.calls == 2
    np.testing.assert_array_equal(logps, np.full((50, 2), -2.0, np.float32))
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    # The recomputed file is complete again.
    _, _, hit = ref_cache.load_or_compute(tmp_path, "k", compute, expected_rows=50)
    assert hit and compute.calls == 2


def test_a_full_disk_gives_a_clear_error_and_leaves_other_caches_intact(tmp_path, monkeypatch):
    compute = Counter(20)
    old, old_path, _ = ref_cache.load_or_compute(tmp_path, "old", compute, expected_rows=20)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_save = np.save

    def full_disk(file, array, *args, **kwargs):
        real_save(file, array[: len(array) // 2], *args, **kwargs)  # part of it fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match=r"reference cache .*new\.npy.*no space left") as info:
        ref_cache.load_or_compute(tmp_path, "new", compute, expected_rows=20)
    assert info.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing partial
    monkeypatch.undo()
    again, _, hit = ref_cache.load_or_compute(tmp_path, "old", compute, expected_rows=20)
    assert hit
    np.testing.assert_array_equal(again, old)
    # Once space is back the new cache is written whole.
    _, new_path, hit = ref_cache.load_or_compute(tmp_path, "new", compute, expected_rows=20)
    assert not hit and ref_cache.read_cache(new_path, expected_rows=20) is not None
