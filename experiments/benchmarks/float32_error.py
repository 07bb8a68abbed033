"""float32 rounding of the stacked decoder, measured against float64 (jax x64) as the truth.

The tolerances of the remat and gradient-accumulation tests come from here, not from
loosening until green. Each figure is the largest absolute difference over every
parameter's gradient (or parameter after the steps), float32 result against the same
computation in float64:

- ``remat``: gradients of a sequence NLL of the 3-layer mixed-window Qwen2 of
  tests/models/test_models_numerics.py, for the scanned and unrolled layouts, without and
  with rematerialisation (True and ``dots_with_no_batch_dims_saveable``);
- ``accumulation``: parameters after 3 AdamW steps of the DPO train step (`setup_step`,
  the micro Llama of tests/train/trainhelpers.py, 4 pairs) with 1 and with 4
  microbatches, scanned and unrolled.

    PYTHONPATH=. python experiments/benchmarks/float32_error.py  # about a minute
    (``--smoke`` runs the same: it is already small)

The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests/train"))

from safedpo_jax import models, sharding  # noqa: E402
from safedpo_jax.models import DecoderConfig  # noqa: E402

MIXED = DecoderConfig(
    model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
    sliding_window=3, layer_types=("full_attention",) * 2 + ("sliding_attention",),
)  # fmt: skip


def _max_abs(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _largest(a) -> float:
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def remat_errors() -> dict[str, float]:
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 64, (2, 9)), jnp.int32)
    mask = jnp.asarray([[1] * 9, [1] * 6 + [0] * 3], jnp.int32)
    base = models.init_model(MIXED, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    params = nnx.state(base, nnx.Param)

    def grads(dtype, **options):
        model = models.init_model(
            MIXED, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype, **options
        )
        nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), params))

        def loss(m):
            logp = jax.nn.log_softmax(m(ids, mask).astype(dtype))
            picked = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
            return -jnp.sum(jnp.where(mask[:, 1:] > 0, picked, 0.0))

        return nnx.jit(nnx.grad(loss))(model)

    truth = grads(jnp.float64)
    out = {"largest_gradient": _largest(truth)}
    variants = {}
    for scan in (True, False):
        for remat in (False, True, "dots_with_no_batch_dims_saveable"):
            name = f"{'scan' if scan else 'unrolled'}/remat={remat}"
            variants[name] = grads(jnp.float32, scan_layers=scan, remat=remat)
            out[f"{name} vs float64"] = _max_abs(variants[name], truth)
    plain = variants["scan/remat=False"]
    for name, g in variants.items():
        out[f"{name} vs scan/remat=False"] = _max_abs(g, plain)
    return out


def accumulation_errors() -> dict[str, float]:
    from trainhelpers import MICRO, batch

    from safedpo_jax.train.config import from_preset
    from safedpo_jax.train.setup import setup_step

    mesh = sharding.make_mesh(1, 1, 1)
    config = DecoderConfig.from_hf(MICRO)
    policy0 = nnx.state(models.init_model(config, rngs=nnx.Rngs(0)), nnx.Param)
    ref0 = nnx.state(models.init_model(config, rngs=nnx.Rngs(1)), nnx.Param)

    def params_after(dtype, micro_batches: int, scan: bool):
        def build(state):
            model = models.init_model(
                config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype, scan_layers=scan
            )
            nnx.update(model, jax.tree.map(lambda x: jnp.array(x, dtype), state))  # a copy
            return model

        cfg = from_preset(
            "tiny", model_config=MICRO, pairs="safedpo", batch_size=4, max_length=16,
            micro_batches=micro_batches, learning_rate=1e-3,
        )  # fmt: skip
        setup = setup_step(cfg, build(policy0), mesh, reference=build(ref0), total_steps=3)
        fn = setup.compile()
        state = setup.state
        with jax.set_mesh(mesh):
            for _ in range(3):
                state, _ = fn(state, setup.reference, batch())
        return state.params

    truth = params_after(jnp.float64, 1, True)
    out = {"largest_parameter": _largest(truth)}
    got = {}
    for scan in (True, False):
        for k in (1, 4):
            name = f"{'scan' if scan else 'unrolled'}/micro_batches={k}"
            got[name] = params_after(jnp.float32, k, scan)
            out[f"{name} vs float64"] = _max_abs(got[name], truth)
    out["scan: micro_batches=4 vs 1"] = _max_abs(
        got["scan/micro_batches=4"], got["scan/micro_batches=1"]
    )
    out["unrolled: micro_batches=4 vs 1"] = _max_abs(
        got["unrolled/micro_batches=4"], got["unrolled/micro_batches=1"]
    )
    return out


def main() -> None:
    unknown = [a for a in sys.argv[1:] if a != "--smoke"]
    if unknown:
        raise SystemExit(f"float32_error.py: unknown arguments {unknown}")
    result = {"remat": remat_errors(), "accumulation": accumulation_errors()}
    for part, values in result.items():
        for name, value in values.items():
            print(f"{part:13s} {name:50s} {value:.3e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
