"""GPU checks before the GPU benchmark: cuDNN attention against XLA attention, matmul rates.

The ``attention_impl="cudnn"`` path of `safedpo_jax.models` had never run. On a small
random Llama (hidden 256, 2 layers, 4 query and 2 key/value heads of width 64) in bf16
compute over float32 parameters, these checks compare:

1. logits with cuDNN attention against XLA attention, for a right-padded batch (training)
   and a left-padded one (generation prompts), on the real tokens; pass when the largest
   difference is under 2% of the largest logit (bf16 keeps about 3 significant digits);
2. the first loss and gradient norm of one train step (the library's `setup_step`, DPO on
   random right-padded pairs) with either attention; pass at 2% relative;
3. dense matmul throughput: bf16 and float32 8192^3 under the default and "highest"
   precision, i.e. what ``precision="highest"`` (the models' default) costs on this card;
   the best bf16 rate is the measured peak `gpu_mfu.py` reports beside the datasheet's.

    PYTHONPATH=. python experiments/benchmarks/gpu_checks.py           # on a GPU, ~1 min
    PYTHONPATH=. python experiments/benchmarks/gpu_checks.py --smoke   # CPU: XLA vs XLA

Each check catches its own failure and reports it; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from typing import Any

import _common as C

SMALL = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.05,
}
REL_TOL = 0.02


def _variant(model: Any, **options: Any) -> Any:
    """The same weights under other static options (e.g. another attention_impl)."""
    from flax import nnx

    abstract = nnx.eval_shape(lambda: type(model)(model.config, rngs=nnx.Rngs(0), **options))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


def _options(impl: str | None) -> dict[str, Any]:
    import jax.numpy as jnp

    return {
        "dtype": jnp.bfloat16,
        "param_dtype": jnp.float32,
        "attention_impl": impl,
        "precision": None,
    }


def check_logits(impl: str, reference_impl: str | None, length: int = 128) -> dict[str, Any]:
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from safedpo_jax import models

    config = models.DecoderConfig.from_hf(SMALL)
    base = models.init_model(config, rngs=nnx.Rngs(0), **_options(reference_impl))
    other = _variant(base, **_options(impl))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, SMALL["vocab_size"], (4, length)), jnp.int32)
    lengths = np.array([length, length - 27, length // 2, 1])
    right = np.arange(length)[None, :] < lengths[:, None]
    out: dict[str, Any] = {}
    for name, mask in (("right_padded", right), ("left_padded", right[:, ::-1])):
        forward = lambda m, mask=mask: nnx.jit(lambda m, i, k: m(i, k))(  # noqa: E731
            m, ids, jnp.asarray(mask, jnp.int32)
        )
        want = np.asarray(forward(base), np.float32)[mask]
        got = np.asarray(forward(other), np.float32)[mask]
        err = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        out[name] = {
            "max_abs_diff": err,
            "max_abs_logit": scale,
            "rel": err / scale,
            "finite": bool(np.isfinite(got).all()),
            "pass": bool(np.isfinite(got).all() and err <= REL_TOL * scale),
        }
    return out


def check_train_step(impl: str, reference_impl: str | None, length: int = 128) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from safedpo_jax import models, sharding
    from safedpo_jax.train import objectives as steps
    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    mesh = sharding.make_mesh(1, 1, 1)
    config = models.DecoderConfig.from_hf(SMALL)
    b = 4
    rng = np.random.default_rng(1)
    lengths = rng.integers(length // 2, length + 1, (b, 2))
    attention = np.arange(length)[None, None, :] < lengths[..., None]
    batch = steps.StepBatch(
        input_ids=jnp.asarray(rng.integers(3, SMALL["vocab_size"], (b, 2, length)), jnp.int32),
        attention_mask=jnp.asarray(attention, jnp.int32),
        loss_mask=jnp.asarray(attention & (np.arange(length) >= length // 4)),
        unsafe=jnp.zeros((b, 2), bool),
        valid=jnp.ones((b,), bool),
    )
    train_config = from_preset(
        "tiny", model_config=SMALL, pairs="helpful", batch_size=b, max_length=length
    )
    out: dict[str, Any] = {}
    for name, attention_impl in (("reference", reference_impl), ("candidate", impl)):
        build = lambda seed, impl=attention_impl: models.init_model(  # noqa: E731
            config, rngs=nnx.Rngs(seed), mesh=mesh, **_options(impl)
        )
        setup = setup_step(train_config, build(0), mesh, reference=build(1), total_steps=10)
        fn = setup.compile()
        with jax.set_mesh(mesh):
            _, metrics = fn(setup.state, setup.reference, batch)
        out[name] = {k: float(metrics[k]) for k in ("loss", "grad_norm", "logps/chosen")}
    rel = {
        k: abs(out["candidate"][k] - out["reference"][k]) / abs(out["reference"][k])
        for k in out["reference"]
    }
    out["rel"] = rel
    out["pass"] = all(v <= REL_TOL for v in rel.values())
    return out


def check_matmuls(n: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    out: dict[str, Any] = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.random.normal(key_a, (n, n), dtype)
        b = jax.random.normal(key_b, (n, n), dtype)
        for precision in ("default", "highest"):
            f = jax.jit(lambda a, b, p=precision: jnp.matmul(a, b, precision=p))
            f(a, b).block_until_ready()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                f(a, b).block_until_ready()
                times.append(time.perf_counter() - start)
            out[f"{jnp.dtype(dtype).name}_{precision}_tflops"] = 2 * n**3 / C.median(times) / 1e12
    return out


def run_checks(smoke: bool) -> dict[str, Any]:
    """Every check; each records its result or its error."""
    import jax

    gpu = jax.default_backend() == "gpu"
    impl, reference_impl = ("cudnn", "xla") if gpu and not smoke else ("xla", None)
    length = 128 if gpu and not smoke else 16
    results: dict[str, Any] = {"candidate_impl": impl, "reference_impl": reference_impl}
    checks = {
        "logits": lambda: check_logits(impl, reference_impl, length),
        "train_step": lambda: check_train_step(impl, reference_impl, length),
        "matmuls": lambda: check_matmuls(8192 if gpu and not smoke else 256),
    }
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = check()
        except Exception as e:  # reported, so that the other checks still run
            results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            traceback.print_exc()
        results[name + "_s"] = time.perf_counter() - start
        print(f"check {name}: " + json.dumps(results[name]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    C.emit({"checks": run_checks(args.smoke), "machine": info})


if __name__ == "__main__":
    main()
