"""Counted compute (`safedpo_jax.costs`): XLA's FLOPs against hand counts, calls, loops.

Hand counts: a matmul ``[m, k] @ [k, n]`` is ``2 m n k`` FLOPs (exact in XLA's count). A
decoder's forward over t tokens is ``2 N t`` for its N matmul weights (the embedding lookup
is free) plus attention ``4 S d`` per token and layer over S positions; a decode step is
that with t = B and S the cache length. XLA also counts norms, activations, softmax and
sampling, so model-level checks allow 12%.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safedpo_jax import costs, models
from safedpo_jax.evaluate import generation

MODEL = {
    "model_type": "llama",
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
D, F, L, V, KV = 64, 176, 2, 300, 32  # KV: key/value width (2 heads of 16)
MATMUL_WEIGHTS = L * (2 * D * D + 2 * D * KV + 3 * D * F) + D * V
MODEL_RTOL = 0.12


def test_a_matmul_counts_2mnk_per_call_and_every_call():
    m, n, k = 16, 24, 8
    matmul = costs.counted("matmul", jax.jit(lambda a, b: a @ b))
    ledger = costs.Ledger()
    with costs.recording(ledger):
        for _ in range(3):
            out = matmul(jnp.ones((m, k)), jnp.ones((k, n)))
        matmul(jnp.ones((2 * m, k)), jnp.ones((k, n)))  # a second program
    entry = ledger.entries["matmul"]
    assert entry.calls == 4 and entry.variants == 2
    assert entry.flops_per_call == [2.0 * m * n * k, 4.0 * m * n * k]
    assert entry.flops == 3 * 2.0 * m * n * k + 4.0 * m * n * k
    assert entry.memory is not None and entry.memory["output"] == 2 * m * n * 4
    np.testing.assert_array_equal(out, np.full((m, n), 8.0))


def test_without_a_ledger_the_function_runs_unchanged():
    fn = jax.jit(lambda x: 2 * x)
    wrapped = costs.counted("double", fn)
    np.testing.assert_array_equal(wrapped(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert costs.current() is None


def test_xla_counts_a_while_loop_body_once_whatever_its_trip_count():
    """The convention `Ledger.add_flops` corrects for (generation adds the missing steps)."""
    a, w = jnp.ones((8, 16)), jnp.ones((16, 16))

    def loop(a, w, trips):
        return jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, c[1] @ w), (0, a))

    counts = [costs.program_flops(jax.jit(loop).lower(a, w, trips).compile()) for trips in (2, 20)]
    one_body = 2 * 8 * 16 * 16
    assert counts[0] == counts[1]
    np.testing.assert_allclose(counts[0], one_body, rtol=0.01)


def test_program_flops_reads_both_cost_analysis_formats():
    class Old:  # jax < 0.4.30: one dict per program in a list
        def cost_analysis(self):
            return [{"flops": 10.0}]

    class New:
        def cost_analysis(self):
            return {"flops": 10.0, "bytes accessed": 4.0}

    class Empty:
        def cost_analysis(self):
            return None

    assert costs.program_flops(Old()) == costs.program_flops(New()) == 10.0
    with pytest.raises(ValueError, match="no FLOP count"):
        costs.program_flops(Empty())


@pytest.fixture(scope="module")
def model():
    return models.init_model(
        models.DecoderConfig.from_hf(MODEL), rngs=nnx.Rngs(0), scan_layers=False
    )


def forward_flops(tokens: int, positions: float) -> float:
    """Hand count of a forward over ``tokens`` tokens attending to ``positions`` each."""
    return 2.0 * MATMUL_WEIGHTS * tokens + 4.0 * positions * D * L * tokens


def generate_counted(model, max_new_tokens: int, b: int = 4, p: int = 10):
    ids, mask = np.full((b, p), 5, np.int32), np.ones((b, p), np.int32)
    ledger = costs.Ledger()
    with costs.recording(ledger):
        # 299 is never sampled greedily here, so every row runs max_new_tokens steps
        out = generation.generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_id=299,
                                  pad_id=0)  # fmt: skip
    plain = generation.generate(
        model, ids, mask, max_new_tokens=max_new_tokens, eos_id=299, pad_id=0
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)  # counting changes nothing
    assert int(np.max(out.lengths)) == max_new_tokens
    return ledger


def test_generation_counts_the_prefill_and_every_decode_step(model):
    b, p = 4, 10
    short, long = generate_counted(model, 4), generate_counted(model, 12)
    for ledger, n in ((short, 4), (long, 12)):
        entry = ledger.entries["generate"]
        assert entry.calls == 1 and entry.loop_trips == n - 1
        # The prefill (p positions of every row), then n decode steps of b tokens, each
        # attending over the whole cache (p + n slots, as the cache is laid out).
        want = forward_flops(b * p, p) + n * forward_flops(b, p + n)
        np.testing.assert_allclose(entry.flops, want, rtol=MODEL_RTOL)
    # Eight more decode steps cost eight decode steps: missing the trip count would add
    # almost nothing here.
    extra = long.entries["generate"].flops - short.entries["generate"].flops
    want = 12 * forward_flops(b, p + 12) - 4 * forward_flops(b, p + 4)
    np.testing.assert_allclose(extra, want, rtol=MODEL_RTOL)
    assert long.entries["generate/prefill"].calls == 0  # inside generate's count


def test_a_scanned_stack_is_flagged_as_counted_once():
    """XLA counts a scanned body once: the ledger records the trips it leaves out (the
    decoder's scanned layers), and the unrolled stack counts every layer."""
    x = jnp.ones((16, 16))
    ws = jnp.ones((4, 16, 16))

    def scanned(x, ws):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

    def unrolled(x, ws):
        for i in range(ws.shape[0]):
            x = jnp.tanh(x @ ws[i])
        return x

    ledger = costs.Ledger()
    with costs.recording(ledger):
        costs.counted("scanned", jax.jit(scanned))(x, ws)
        costs.counted("unrolled", jax.jit(unrolled))(x, ws)
    s, u = ledger.entries["scanned"], ledger.entries["unrolled"]
    matmul = 2 * 16 * 16 * 16
    assert s.uncounted_loop_trips == 3 and u.uncounted_loop_trips == 0
    assert matmul <= s.flops < 2 * matmul  # one layer's matmul
    assert 4 * matmul <= u.flops < 5 * matmul  # all four
    assert not ledger.complete

    # the decoder: scanned layers are flagged (L - 1 trips), unrolled ones are not
    ids = jnp.ones((1, 4), jnp.int32)
    layers = MODEL["num_hidden_layers"]
    for scan_layers, trips in ((True, layers - 1), (False, 0)):
        m = models.init_model(
            models.DecoderConfig.from_hf(MODEL), rngs=nnx.Rngs(0), scan_layers=scan_layers
        )
        graphdef, state = nnx.split(m)
        forward = jax.jit(lambda state, ids, g=graphdef: nnx.merge(g, state)(ids))
        assert costs.uncounted_trips(forward.lower(state, ids).compile()) == trips, scan_layers
