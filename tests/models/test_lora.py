"""LoRA adapters: the forward equals the merged weights, PEFT parity both ways, placement."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from torch_reference import CASES, batches, build_hf, run, torch_logits  # noqa: E402

from safedpo_jax.models import DecoderConfig, from_pretrained, init_model, lora  # noqa: E402
from safedpo_jax.sharding import make_mesh  # noqa: E402

# peft 0.21 reads a property transformers 5 deprecated (a peft/transformers matter).
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"

CONFIG = DecoderConfig(
    vocab_size=48,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def randomize_adapters(model, seed: int = 0, std: float = 0.3) -> None:
    """Non-zero A and B (fresh adapters have B = 0, which would hide every layout error)."""
    state = nnx.state(model, nnx.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        (std * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, new))


def ids_mask():
    ids = jnp.array([[1, 5, 7, 9, 2, 0], [3, 4, 6, 8, 10, 11]])
    mask = jnp.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    return ids, mask


def test_adapter_matches_numpy_closed_form_on_a_multi_axis_weight():
    # o_proj: W [n, h, d], input [b, t, n, h] contracts two axes.
    adapter = lora.Adapter(
        (4, 3, 5),
        contract=2,
        names=("heads", "embed"),
        rank=2,
        scale=1.5,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    adapter.lora_b[...] = jax.random.normal(jax.random.key(1), (2, 5))
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 3, 4, 3)))
    a, b = np.asarray(adapter.lora_a[...]), np.asarray(adapter.lora_b[...])
    expected = 1.5 * (x.reshape(6, 12) @ a @ b).reshape(2, 3, 5)
    np.testing.assert_allclose(np.asarray(adapter(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-6)
    # PEFT's start: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    fresh = lora.Adapter(
        (64, 8),
        contract=1,
        names=("embed", "mlp"),
        rank=16,
        scale=1.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(3),
    )
    a = np.asarray(fresh.lora_a[...])
    assert np.abs(a).max() <= 1 / 8 and np.abs(a).max() > 0.9 / 8
    assert not np.any(np.asarray(fresh.lora_b[...]))


def test_scale_and_targets():
    assert lora.LoRAConfig(rank=4, alpha=8.0).scale == 2.0
    assert lora.LoRAConfig(rank=4, alpha=8.0, use_rslora=True).scale == 4.0
    model = init_model(CONFIG, rngs=nnx.Rngs(0))
    regex = r"model\.layers\.1\.self_attn\.(q|v)_proj"
    lora.add_lora(model, lora.LoRAConfig(rank=2, alpha=2.0, targets=regex), rngs=nnx.Rngs(1))
    assert lora.adapted_names(model) == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    model = init_model(CONFIG, rngs=nnx.Rngs(0))
    cfg = lora.LoRAConfig(rank=2, alpha=2.0, targets=("down_proj", "k_proj"))
    lora.add_lora(model, cfg, rngs=nnx.Rngs(1))
    assert lora.adapted_names(model) == [
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.k_proj",
        "model.layers.1.mlp.down_proj",
    ]
    with pytest.raises(ValueError, match="targets"):
        lora.LoRAConfig(rank=2, alpha=1.0, targets=("q",))
    with pytest.raises(ValueError, match="dropout"):
        lora.LoRAConfig(rank=2, alpha=1.0, dropout=0.1)
    with pytest.raises(ValueError, match="rank"):
        lora.LoRAConfig(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="match no projection"):
        lora.add_lora(
            init_model(CONFIG, rngs=nnx.Rngs(0)),
            lora.LoRAConfig(rank=2, alpha=1.0, targets="nothing"),
            rngs=nnx.Rngs(1),
        )


def test_forward_equals_merged_weights_and_split_holds_only_adapters():
    model = init_model(CONFIG, rngs=nnx.Rngs(0))
    ids, mask = ids_mask()
    base = run(model, ids, mask)
    lora.add_lora(model, lora.LoRAConfig(rank=3, alpha=6.0), rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(run(model, ids, mask), base)  # B = 0
    randomize_adapters(model)
    adapted = run(model, ids, mask)
    assert np.abs(adapted - base).max() > 0.1
    flat = lora.merged(model)
    assert not lora.has_adapters(flat) and lora.has_adapters(model)
    np.testing.assert_allclose(run(flat, ids, mask), adapted, rtol=1e-4, atol=1e-4)
    # the merged weight is W + (alpha / r) A B
    # (stacked: layer 1 of [L, in, r] and [L, r, out])
    q = model.model.layers.self_attn
    a, b = np.asarray(q.lora["q_proj"].lora_a[...][1]), np.asarray(q.lora["q_proj"].lora_b[...][1])
    w = np.asarray(q.q_proj[...][1])
    expected = w + 2.0 * (a @ b).reshape(w.shape)
    np.testing.assert_allclose(
        np.asarray(flat.model.layers.self_attn.q_proj[...][1]), expected, rtol=1e-5, atol=1e-6
    )
    split = lora.split(model)
    kinds = {type(v) for _, v in nnx.to_flat_state(split.params)}
    assert kinds == {nnx.LoRAParam}
    n_params = sum(x.size for x in jax.tree.leaves(split.params))
    # 2 layers x (q,k,v,o,gate,up,down) x r (in + out)
    per_layer = 3 * ((16 + 16) + (16 + 8) + (16 + 8) + (16 + 16) + 2 * (16 + 24) + (24 + 16))
    assert n_params == 2 * per_layer
    assert any(type(v) is nnx.Param for _, v in nnx.to_flat_state(split.rest))
    np.testing.assert_array_equal(run(split.merge(), ids, mask), adapted)


def test_adapters_shard_like_their_weights_and_give_the_same_logits():
    mesh = make_mesh(1, 2, 4)
    ids, mask = ids_mask()
    plain = init_model(CONFIG, rngs=nnx.Rngs(0))
    lora.add_lora(plain, lora.LoRAConfig(rank=4, alpha=4.0), rngs=nnx.Rngs(1))
    randomize_adapters(plain)
    sharded = init_model(CONFIG, rngs=nnx.Rngs(0), mesh=mesh)
    lora.add_lora(sharded, lora.LoRAConfig(rank=4, alpha=4.0), rngs=nnx.Rngs(1), mesh=mesh)
    nnx.update(
        sharded,
        jax.tree.map(
            lambda x, s: jax.device_put(x, s.sharding),
            nnx.state(plain, nnx.LoRAParam),
            nnx.state(sharded, nnx.LoRAParam),
        ),
    )
    attn = sharded.model.layers.self_attn  # [L, in, r] and [L, r, out]: layers unsharded
    P = jax.sharding.PartitionSpec
    assert attn.lora["q_proj"].lora_a[...].sharding.spec == P(None, "fsdp", None)
    assert attn.lora["q_proj"].lora_b[...].sharding.spec == P(None, None, "tensor")
    o_spec = attn.lora["o_proj"].lora_a[...].sharding.spec
    assert o_spec == P(None, "tensor", None)
    with jax.set_mesh(mesh):
        got = run(sharded, ids, mask)
    np.testing.assert_allclose(got, run(plain, ids, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings(PEFT_WARNING)
@pytest.mark.parametrize("case", ["qwen2-bias-gqa2-tied", "llama-mha-untied"])
def test_peft_loads_our_adapter_with_equal_logits(case, tmp_path):
    peft = pytest.importorskip("peft")
    family, overrides = CASES[case]
    hf = build_hf(family, tmp_path / "hf", **overrides)
    model = from_pretrained(tmp_path / "hf")
    rslora = case.startswith("llama")
    cfg = lora.LoRAConfig(rank=4, alpha=8.0, use_rslora=rslora)
    lora.add_lora(model, cfg, rngs=nnx.Rngs(1))
    randomize_adapters(model, std=0.2)
    lora.save_peft_adapter(model, tmp_path / "adapter", config=cfg, base_model="hf")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["r"] == 4 and written["use_rslora"] == rslora
    assert sorted(written["target_modules"]) == sorted(lora.DEFAULT_TARGETS)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    for name, ours_mask in batches().items():
        ids, mask = ours_mask
        real = mask.astype(bool)
        theirs = torch_logits(peft_model, ids, mask)[real]
        ours = run(model, ids, mask)[real]
        with peft_model.disable_adapter():
            base = torch_logits(peft_model, ids, mask)[real]
        assert np.abs(theirs - base).max() > 0.05, name  # the adapter matters
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.filterwarnings(PEFT_WARNING)
def test_we_load_a_peft_adapter_with_equal_logits(tmp_path):
    peft = pytest.importorskip("peft")
    family, overrides = CASES["mistral-window3-gqa4"]
    hf = build_hf(family, tmp_path / "hf", **overrides)
    peft_config = peft.LoraConfig(
        r=2,
        lora_alpha=5,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,  # random B: a non-trivial adapter
    )
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(hf, peft_config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    model = from_pretrained(tmp_path / "hf")
    model, cfg = lora.load_peft_adapter(model, tmp_path / "adapter")
    assert cfg.rank == 2 and cfg.alpha == 5.0
    assert cfg.targets == ("q_proj", "v_proj", "o_proj", "down_proj")  # canonical order
    ids, mask = batches()["right"]
    real = mask.astype(bool)
    theirs = torch_logits(peft_model, ids, mask)[real]
    np.testing.assert_allclose(run(model, ids, mask)[real], theirs, rtol=1e-4, atol=1e-4)
    # and back out: the same tensors, so PEFT reads what it wrote
    lora.save_peft_adapter(model, tmp_path / "again", config=cfg)
    from safetensors.numpy import load_file

    a = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bad_adapter_files_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = init_model(CONFIG, rngs=nnx.Rngs(0))
    cfg = lora.LoRAConfig(rank=2, alpha=2.0, targets=("q_proj",))
    lora.add_lora(model, cfg, rngs=nnx.Rngs(1))
    lora.save_peft_adapter(model, tmp_path / "a", config=cfg)
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    missing = {k: v for k, v in tensors.items() if k != key}
    save_file(missing, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="missing tensor .*layers.1.self_attn.q_proj.lora_B"):
        lora.load_peft_adapter(init_model(CONFIG, rngs=nnx.Rngs(0)), tmp_path / "a")
    extra = {**tensors, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": tensors[key]}
    save_file(extra, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="not matching any adapter.*up_proj"):
        lora.load_peft_adapter(init_model(CONFIG, rngs=nnx.Rngs(0)), tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_dora"):
        lora.read_peft_config(tmp_path / "a")


def test_base_fingerprint_tells_bases_apart():
    a = init_model(CONFIG, rngs=nnx.Rngs(0))
    lora.add_lora(a, lora.LoRAConfig(rank=2, alpha=2.0), rngs=nnx.Rngs(1))
    fp = lora.base_fingerprint(a)
    assert not any("lora" in k for k in fp)
    randomize_adapters(a)  # adapters are not part of the base
    lora.check_base_fingerprint(fp, lora.base_fingerprint(a))
    b = init_model(CONFIG, rngs=nnx.Rngs(5))
    with pytest.raises(ValueError, match="base model differs"):
        lora.check_base_fingerprint(fp, lora.base_fingerprint(b))


def test_a_regex_over_some_layers_gates_the_others_off_in_every_path(tmp_path):
    # Stacked adapters hold a slice for every layer; a regex selecting layer 1 only must
    # leave layer 0 unadapted in the forward, the merge, the gradient and the PEFT file.
    model = init_model(CONFIG, rngs=nnx.Rngs(0))
    ids, mask = ids_mask()
    base = run(model, ids, mask)
    cfg = lora.LoRAConfig(rank=2, alpha=2.0, targets=r"model\.layers\.1\.self_attn\.q_proj")
    lora.add_lora(model, cfg, rngs=nnx.Rngs(1))
    adapter = model.model.layers.self_attn.lora["q_proj"]
    assert adapter.active == (False, True) and adapter.lora_a.shape == (2, 16, 2)
    randomize_adapters(model, std=1.0)  # layer 0's slice too: it must not count
    adapted = run(model, ids, mask)
    assert np.abs(adapted - base).max() > 1e-3  # one projection of one layer: a small change
    # the same adapter with layer 0's slice zeroed gives the same logits
    zeroed = nnx.clone(model)
    z = zeroed.model.layers.self_attn.lora["q_proj"]
    z.lora_b[...] = z.lora_b[...].at[0].set(0.0)
    np.testing.assert_array_equal(run(zeroed, ids, mask), adapted)
    flat = lora.merged(model)
    np.testing.assert_allclose(run(flat, ids, mask), adapted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(  # layer 0's weight is untouched by the merge
        np.asarray(flat.model.layers.self_attn.q_proj[...][0]),
        np.asarray(model.model.layers.self_attn.q_proj[...][0]),
    )
    split = lora.split(model)

    def loss(params):
        return jnp.sum(split.with_params(params).merge()(ids, mask) ** 2)

    grads = jax.grad(loss)(split.params)
    g = grads["model"]["layers"]["self_attn"]["lora"]["q_proj"]
    assert not np.any(np.asarray(g["lora_a"][...][0])) and np.any(np.asarray(g["lora_a"][...][1]))
    lora.save_peft_adapter(model, tmp_path / "a", config=cfg)
    from safetensors.numpy import load_file

    keys = sorted(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert keys == [
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
    ]
    back, _ = lora.load_peft_adapter(init_model(CONFIG, rngs=nnx.Rngs(0)), tmp_path / "a")
    np.testing.assert_array_equal(run(back, ids, mask), adapted)
