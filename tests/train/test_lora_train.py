"""LoRA through the trainer: what trains, the reference's semantics, resume, sharding, export."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import MICRO, ROOT, read_metrics
from test_train import micro_config as train_micro_config

from safedpo_jax import sharding
from safedpo_jax.data import load_tokenizer
from safedpo_jax.logprobs import sequence_logps
from safedpo_jax.models import Model, lora, save_pretrained
from safedpo_jax.train import lora as train_lora
from safedpo_jax.train.loop import prepare, train
from safedpo_jax.train.rundir import RunDirMismatch
from safedpo_jax.train.setup import build_model


def micro_config(tmp_path: Path, name: str, **overrides):
    """test_train's micro run with a rank-4 adapter, 3 steps and one held-out batch."""
    defaults = {"max_steps": 3, "eval_batches": 1, "lora_rank": 4, "lora_alpha": 8.0}
    return train_micro_config(tmp_path, name, **{**defaults, **overrides})


def train_records(output_dir) -> list[dict]:
    return [r for r in read_metrics(output_dir) if "loss" in r]


def sft_adapter(tmp_path: Path, config) -> Path:
    """A PEFT adapter with non-zero B on the run's (random) base: the 'SFT adapter'."""
    tokenizer = load_tokenizer("sample")
    mesh = sharding.make_mesh(1, 1, 1)
    base = build_model(config.replace(lora_rank=0), None, tokenizer, mesh, config.seed)
    cfg = lora.LoRAConfig(rank=4, alpha=8.0)
    lora.add_lora(base, cfg, rngs=nnx.Rngs(7))
    state = nnx.state(base, nnx.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(11), len(leaves))
    noisy = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(base, jax.tree.unflatten(treedef, noisy))
    return lora.save_peft_adapter(base, tmp_path / "sft_adapter", config=cfg)


def batch_logps(setup, model: Model, run) -> np.ndarray:
    from safedpo_jax.data import BatchIterator

    host = next(BatchIterator(run.train_ds, batch_size=8, shuffle=False, num_epochs=1))
    batch = run.objective.device_batch(host, setup.mesh, None)
    args = (batch.input_ids, batch.attention_mask, batch.loss_mask)
    return np.asarray(jax.jit(sequence_logps)(model, *args))


def test_only_adapters_train_and_the_reference_shares_the_base(tmp_path):
    config = micro_config(tmp_path, "run", max_steps=3, eval_split=None)
    run = prepare(config)
    setup = run.setup
    kinds = {type(v) for _, v in nnx.to_flat_state(setup.state.params)}
    assert kinds == {nnx.LoRAParam}
    n_adapter = sum(x.size for x in jax.tree.leaves(setup.state.params))
    n_opt = sum(x.size for x in jax.tree.leaves(setup.state.opt_state))
    assert n_opt == 2 * n_adapter + 2  # AdamW's two moments and two step counters
    # no second copy: the reference's base arrays are the policy's
    ref_rest, pol_rest = jax.tree.leaves(setup.reference.rest), jax.tree.leaves(setup.policy.rest)
    assert all(a is b for a, b in zip(ref_rest, pol_rest, strict=True))
    base_before = [np.asarray(x) for x in pol_rest]
    # fresh adapters: the reference is the bare base
    bare = setup.policy.merge()
    base_only = lora.merged(bare)  # B = 0, so the merge is the base itself
    np.testing.assert_array_equal(
        batch_logps(setup, setup.reference, run), batch_logps(setup, Model.split(base_only), run)
    )
    from safedpo_jax.train.loop import run_steps

    result = run_steps(run)
    records = train_records(config.output_dir)
    assert abs(records[0]["rewards/margins"]) < 1e-5  # policy == reference at step 1
    assert records[-1]["loss"] < records[0]["loss"]
    for a, b in zip(base_before, jax.tree.leaves(setup.policy.rest), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # the base never moves
    b_leaves = [v for p, v in nnx.to_flat_state(result.state.params) if p[-1] == "lora_b"]
    assert all(np.abs(np.asarray(v.get_value())).max() > 0 for v in b_leaves)


def test_reference_is_base_plus_the_sft_adapter_not_the_bare_base(tmp_path):
    # LLaMA-Factory issue 8459: with a starting SFT adapter, "adapters off" is the wrong
    # reference; the reference must be base + SFT adapter, frozen.
    path = sft_adapter(tmp_path, micro_config(tmp_path, "x"))
    config = micro_config(tmp_path, "sft", lora_adapter=str(path), lora_rank=0, eval_split=None)
    run = prepare(config)
    setup = run.setup
    module = setup.policy.merge()
    expected = batch_logps(setup, Model.split(lora.merged(module)), run)
    bare = nnx.clone(module)
    for _, m in lora._projection_modules(bare):
        del m.lora
    wrong = batch_logps(setup, Model.split(bare), run)
    got = batch_logps(setup, setup.reference, run)
    assert np.abs(expected - wrong).max() > 0.5  # the SFT adapter matters
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # the trained adapter starts from the SFT adapter
    loaded = lora.load_peft_adapter(
        build_model(config.replace(lora_adapter=None), None, run.tokenizer, setup.mesh, 42),
        path,
    )[0]
    for a, b in zip(
        jax.tree.leaves(nnx.state(loaded, nnx.LoRAParam)),
        jax.tree.leaves(setup.state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from safedpo_jax.train.loop import run_steps

    run_steps(run)
    first = train_records(config.output_dir)[0]
    assert abs(first["rewards/margins"]) < 1e-5  # policy == reference at step 1


@pytest.mark.parametrize("objective", ["reward", "sft"])
def test_other_objectives_train_adapters(tmp_path, objective):
    config = micro_config(tmp_path, objective, objective=objective, max_steps=2, eval_split=None)
    result = train(config)
    flat = nnx.to_flat_state(result.state.params)
    names = {".".join(map(str, p)) for p, _ in flat}
    assert any("lora" in n for n in names)
    frozen_in_state = [n for n in names if "lora" not in n]
    # a score model's new head trains with the adapters; nothing else of the base does
    expected = ["score_bias", "score_head"] if objective == "reward" else []
    assert sorted(frozen_in_state) == expected
    assert all(np.isfinite(r["loss"]) for r in train_records(config.output_dir))


def test_cached_reference_with_an_sft_adapter_equals_in_step(tmp_path):
    path = sft_adapter(tmp_path, micro_config(tmp_path, "x"))
    kw = dict(lora_adapter=str(path), lora_rank=0, eval_split=None, max_steps=2)
    in_step = train(micro_config(tmp_path, "in_step", **kw))
    # a cache of the bare base on the same data must not be reused for base + adapter
    train(micro_config(tmp_path, "plain", reference="cached", eval_split=None, max_steps=1))
    cached = train(micro_config(tmp_path, "cached", reference="cached", **kw))
    assert len(list((tmp_path / "refcache").glob("*.npy"))) == 2
    pairs = zip(train_records(in_step.output_dir), train_records(cached.output_dir), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_resume_is_exact_and_refuses_another_base(tmp_path):
    config = micro_config(tmp_path, "run", max_steps=4, save_every=2, eval_split=None)
    first = train(config)
    original = read_metrics(first.output_dir)
    ckpt = Path(config.output_dir) / "checkpoints"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4]
    shutil.rmtree(ckpt / "4")
    resumed = train(config)
    assert resumed.resumed_from == 2
    assert read_metrics(resumed.output_dir) == original
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(first.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the same adapters on a different base: a clear error, not a silent wrong run. A
    # changed configuration is refused by the run directory before anything is touched;
    # a base whose weights changed under the same configuration (a checkpoint directory
    # rewritten in place) by the base fingerprint the checkpoints carry.
    shutil.rmtree(ckpt / "4")
    with pytest.raises(RunDirMismatch, match="model_config"):
        train(config.replace(model_config={**MICRO, "initializer_range": 0.05}))
    meta = train_lora.checkpoint_meta(Model.split(first_policy(config)))
    other = first_policy(config.replace(model_config={**MICRO, "initializer_range": 0.05}))
    train_lora.check_resume(meta, Model.split(first_policy(config)))  # the same base: fine
    with pytest.raises(ValueError, match="base model differs"):
        train_lora.check_resume(meta, Model.split(other))


def first_policy(config):
    """The run's policy as `prepare` builds it: the base with fresh adapters attached."""
    tokenizer = load_tokenizer("sample")
    mesh = sharding.make_mesh(1, 1, 1)
    model = build_model(config.replace(lora_rank=0), None, tokenizer, mesh, config.seed)
    return train_lora.attach(config, model, mesh)


def test_eight_devices_equal_one(tmp_path):
    one = train(micro_config(tmp_path, "one", mesh_data=1, mesh_fsdp=1, mesh_tensor=1))
    many = train(micro_config(tmp_path, "many", mesh_data=2, mesh_fsdp=2, mesh_tensor=2))
    for a, b in zip(train_records(one.output_dir), train_records(many.output_dir), strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(one.state.params), jax.tree.leaves(many.state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(many.state.params)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_command_line_lora_run_exports_an_adapter_peft_loads(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    # a base checkpoint on disk (PEFT needs the base model to put the adapter on)
    tokenizer = load_tokenizer("sample")
    base_cfg = micro_config(tmp_path, "b", lora_rank=0)
    base = build_model(base_cfg, None, tokenizer, sharding.make_mesh(1, 1, 1), 0)
    save_pretrained(base, tmp_path / "base")
    out = tmp_path / "cli"
    args = ["--preset", "tiny", "--model", str(tmp_path / "base"), "--tokenizer", "sample"]
    args += ["--lora-rank", "4", "--lora-alpha", "8", "--lora-rslora", "true"]
    args += ["--max-steps", "4", "--save-every", "2", "--batch-size", "8", "--eval-batches", "1"]
    args += ["--learning-rate", "0.01", "--output-dir", str(out)]
    args += ["--ref-cache-dir", str(tmp_path / "c")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "safedpo_jax.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["use_rslora"] is True
    # checkpoints hold the adapters (and their moments), no base tensor, and the base's
    # fingerprint
    tree = (out / "checkpoints" / "4" / "state" / "_METADATA").read_text()
    assert "lora_a" in tree and "lora_b" in tree
    assert "embed_tokens" not in tree and "input_layernorm" not in tree
    assert "base_fingerprint" in (out / "checkpoints" / "4" / "meta" / "metadata").read_text()
    hf_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    peft_model = peft.PeftModel.from_pretrained(hf_base, str(out / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    ids = torch.tensor([[1, 5, 6, 7, 9, 11]])
    with torch.no_grad():
        theirs = peft_model(ids).logits.numpy()
        ours_merged = merged(ids).logits.numpy()
        with peft_model.disable_adapter():
            bare = peft_model(ids).logits.numpy()
    assert np.abs(theirs - bare).max() > 1e-3  # training moved the adapter
    np.testing.assert_allclose(ours_merged, theirs, rtol=1e-4, atol=1e-4)
    # and our loader puts the exported adapter back on the base with the same logits
    from safedpo_jax.models import from_pretrained

    again, _ = lora.load_peft_adapter(from_pretrained(tmp_path / "base"), out / "adapter")
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(again, jnp.asarray(ids.numpy())))
    np.testing.assert_allclose(logits, theirs, rtol=1e-4, atol=1e-4)
