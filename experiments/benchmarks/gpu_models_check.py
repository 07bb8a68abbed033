"""GPU check of safedpo_jax.models: CPU/GPU log-prob drift by matmul precision, bf16 XLA vs
cuDNN attention (logits, gradients with remat), KV-cache decoding. Prints, asserts nothing.

    PYTHONPATH=. python experiments/benchmarks/gpu_models_check.py
"""

import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

print("jax", jax.__version__, "flax", flax.__version__, jax.devices(), flush=True)
from safedpo_jax.models import DecoderConfig, init_model  # noqa: E402

cfg = DecoderConfig(
    vocab_size=2048,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    initializer_range=0.05,
)
B, T = 4, 512
rng = np.random.RandomState(0)
ids = rng.randint(1, 2048, (B, T)).astype(np.int32)
lengths = np.array([512, 400, 100, 17])
right = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
left = right[:, ::-1].copy()


def variant(model, **options):
    abstract = nnx.eval_shape(lambda: type(model)(model.config, rngs=nnx.Rngs(0), **options))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


@nnx.jit
def seq_logp(model, ids, mask):
    logp = jax.nn.log_softmax(model(ids, mask).astype(jnp.float32))
    picked = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    real = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    return jnp.sum(jnp.where(real, picked, 0.0), axis=1)


@nnx.jit
def logits_fn(model, ids, mask):
    return model(ids, mask)


model = init_model(cfg, rngs=nnx.Rngs(0))
cpu = jax.devices("cpu")[0]
cpu_model = nnx.merge(nnx.graphdef(model), jax.device_put(nnx.state(model), cpu))
for side, mask in (("right", right), ("left", left)):
    ref = np.asarray(seq_logp(cpu_model, jax.device_put(ids, cpu), jax.device_put(mask, cpu)))
    for prec in ("highest", None):
        got = np.asarray(seq_logp(variant(model, precision=prec), ids, mask))
        print(
            f"{side} fp32 precision={prec}: seq logp {ref.round(2)} "
            f"|gpu-cpu| max {np.abs(got - ref).max():.2e}",
            flush=True,
        )

bf16 = variant(model, dtype=jnp.bfloat16)
fp32_logits = np.asarray(logits_fn(model, ids, left))
for impl in ("xla", "cudnn"):
    try:
        m = variant(model, dtype=jnp.bfloat16, attention_impl=impl)
        out = np.asarray(logits_fn(m, ids, left).astype(jnp.float32))
        real = left.astype(bool)
        jax.block_until_ready(logits_fn(m, ids, left))
        t = time.perf_counter()
        for _ in range(10):
            jax.block_until_ready(logits_fn(m, ids, left))
        dt = (time.perf_counter() - t) / 10
        print(
            f"bf16 {impl}: finite={np.isfinite(out).all()} |bf16-fp32| max on real "
            f"{np.abs(out - fp32_logits)[real].max():.3f} "
            f"(logit scale {np.abs(fp32_logits).max():.2f}); {dt * 1e3:.2f} ms/fwd",
            flush=True,
        )
    except Exception as e:  # report and go on
        print(f"bf16 {impl}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)


def loss(m, ids, mask):
    logp = jax.nn.log_softmax(m(ids, mask).astype(jnp.float32))
    picked = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(mask[:, 1:] > 0, picked, 0.0))


for impl in ("xla", "cudnn"):
    try:
        m = variant(model, dtype=jnp.bfloat16, attention_impl=impl, remat=True)
        grads = nnx.jit(nnx.grad(loss))(m, jnp.asarray(ids), jnp.asarray(left))
        leaves = jax.tree.leaves(grads)
        norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)))
        print(
            f"grad bf16 {impl} remat: "
            f"finite={all(bool(jnp.isfinite(x).all()) for x in leaves)} norm {norm:.4f}",
            flush=True,
        )
    except Exception as e:
        print(f"grad {impl}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)


@nnx.jit(donate_argnums=3)
def step(m, ids, mask, cache):
    return m(ids, mask, cache=cache)


P, N = 64, 8
pids, pmask = ids[:, :P] * left[:, -P:], left[:, -P:]
new = rng.randint(1, 2048, (B, N)).astype(np.int32)
full_ids = np.concatenate([pids, new], 1)
full_mask = np.concatenate([pmask, np.ones((B, N), np.int32)], 1)
for impl in ("xla", "cudnn"):
    try:
        m = variant(model, dtype=jnp.bfloat16, attention_impl=impl)
        cache = m.init_cache(B, P + N)
        lg, cache = step(m, jnp.asarray(pids), jnp.asarray(pmask), cache)
        outs = [np.asarray(lg.astype(jnp.float32))]
        for i in range(N):
            lg, cache = step(m, jnp.asarray(new[:, i : i + 1]), jnp.ones((B, 1), jnp.int32), cache)
            outs.append(np.asarray(lg.astype(jnp.float32)))
        full = np.asarray(logits_fn(m, full_ids, full_mask).astype(jnp.float32))
        cached = np.concatenate(outs, 1)
        real = full_mask.astype(bool)
        print(
            f"cache bf16 {impl}: |cached-full| max {np.abs(cached - full)[real].max():.3f}, "
            f"finite={np.isfinite(cached).all()}",
            flush=True,
        )
    except Exception as e:
        print(f"cache {impl}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)
print("done")
