"""GPU check of safedpo_jax.evaluate: cached greedy vs full forwards, seeded sampling on a mesh,
generation throughput of a 0.27B bf16 model, and the evaluation command end to end.

    PYTHONPATH=. python experiments/benchmarks/gpu_eval_check.py
"""

import os
import sys
import time

import jax
import numpy as np

print("jax", jax.__version__, jax.devices(), flush=True)
import flax  # noqa: E402

print("flax", flax.__version__, flush=True)
sys.path.insert(0, "tests/evaluate")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from safedpo_jax import models, sharding  # noqa: E402
from safedpo_jax.evaluate.generation import generate  # noqa: E402

out = os.environ.get("OUT", "/tmp/out")

# 1. tiny model: cached greedy == full forwards; sampling reproducible; one-device mesh
import test_eval_generation as t  # noqa: E402

cfg = models.DecoderConfig(
    vocab_size=t.VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.5,
)
m = models.CausalLM(cfg, rngs=nnx.Rngs(0))
ids, mask = t._prompts(rows=8)
g = generate(m, ids, mask, max_new_tokens=t.N, eos_id=t.VOCAB + 1, pad_id=t.PAD)
want = t._greedy_by_full_forwards(m, ids, mask, t.N, eos=t.VOCAB + 1)
print("greedy cached == full forwards:", bool((np.asarray(g.tokens) == want).all()), flush=True)
kw = dict(max_new_tokens=t.N, eos_id=t.VOCAB + 1, pad_id=t.PAD, temperature=1.0, top_p=0.9)
a = np.asarray(generate(m, ids, mask, seed=1, **kw).tokens)
b = np.asarray(generate(m, ids, mask, seed=1, **kw).tokens)
mesh = sharding.make_mesh()
c = np.asarray(generate(m, ids, mask, seed=1, mesh=mesh, **kw).tokens)
print("sampling reproducible:", (a == b).all(), "mesh equal:", (a == c).all(), flush=True)

# 2. throughput: a 0.27B random Llama in bf16, batch 32, prompt 64, 128 new tokens
if jax.default_backend() == "gpu":
    from _common import SIZES

    big = models.DecoderConfig(vocab_size=32000, **SIZES["medium"])
    t0 = time.time()
    bm = models.init_model(
        big, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, mesh=mesh
    )
    print(f"init {time.time() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(0)
    B, P, N = 32, 64, 128
    bids = rng.integers(4, 32000, (B, P)).astype(np.int32)
    bmask = np.ones((B, P), np.int32)
    for temp, top_p in ((0.0, 1.0), (0.7, 0.9)):
        kw = dict(max_new_tokens=N, eos_id=-1, pad_id=0, temperature=temp, top_p=top_p, mesh=mesh)
        t0 = time.time()
        jax.block_until_ready(generate(bm, bids, bmask, **kw).tokens)
        first = time.time() - t0
        t0 = time.time()
        o = jax.block_until_ready(generate(bm, bids, bmask, **kw))
        dt = time.time() - t0
        print(
            f"T={temp} top_p={top_p}: first call {first:.1f}s, then {dt:.2f}s = "
            f"{B * N / dt:.0f} tokens/s ({dt / N * 1e3:.1f} ms/step), "
            f"lengths {set(np.asarray(o.lengths).tolist())}",
            flush=True,
        )


# 3. the command on the GPU: tiny models, synthetic prompts (txt: no `datasets` needed)
from safedpo_jax.data import load_tokenizer  # noqa: E402
from safedpo_jax.evaluate import cli  # noqa: E402
from safedpo_jax.worlds import synthetic  # noqa: E402

tok = load_tokenizer("sample")
small = models.DecoderConfig(
    vocab_size=len(tok),
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)
for name, seed in (("sft", 0), ("safedpo", 1)):
    models.save_pretrained(models.CausalLM(small, rngs=nnx.Rngs(seed)), f"/tmp/m/{name}")
    tok.save_pretrained(f"/tmp/m/{name}")
with open("/tmp/prompts.txt", "w") as f:
    f.write("\n".join(p.text for p in synthetic.prompts("test")) + "\n")
t0 = time.time()
rc = cli.main(
    [
        "--model",
        "/tmp/m/sft",
        "/tmp/m/safedpo",
        "--prompts",
        "/tmp/prompts.txt",
        "--oracle",
        "synthetic",
        "--max-new-tokens",
        "16",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--batch-size",
        "32",
        "--output-dir",
        f"{out}/eval",
        "--no-progress",
    ]
)
print(f"command rc={rc} in {time.time() - t0:.1f}s", flush=True)
