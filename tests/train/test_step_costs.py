"""Counted FLOPs of the train step and the reference pass against the 6 N t rule.

The micro Llama of `trainhelpers` (2 layers, hidden 32, MLP 64, 4 heads of 8 with 2
key/value heads, an untied 64-token head): N = 20,480 matmul weights. A DPO step with a
cached reference runs the policy forward and backward over the batch's B x 2 x T padded
tokens: 6 N t FLOPs, plus attention (4 T d per token and layer forward, x3 with the
backward); the reference pass is the forward alone (2 N t plus attention). XLA counts
norms, activations, log-softmax and the AdamW update on top: within 15%.
"""

from __future__ import annotations

import jax
import numpy as np
from trainhelpers import MICRO, B, T, batch, build

from safedpo_jax import costs, sharding
from safedpo_jax.train.config import from_preset
from safedpo_jax.train.setup import setup_step

D, L = MICRO["hidden_size"], MICRO["num_hidden_layers"]
KV = D // MICRO["num_attention_heads"] * MICRO["num_key_value_heads"]
N = L * (2 * D * D + 2 * D * KV + 3 * D * MICRO["intermediate_size"]) + D * MICRO["vocab_size"]
TOKENS = B * 2 * T
ATTENTION = 4 * T * D * L * TOKENS  # forward, every position of the padded pairs
RTOL = 0.15


def test_step_and_reference_pass_flops_follow_6nt_and_2nt():
    assert N == 20_480
    mesh = sharding.make_mesh(1, 1, 1)
    # full logits: the chunked log-prob path is a lax.scan over chunks, counted once
    config = from_preset(
        "tiny",
        model_config=MICRO,
        pairs="helpful",
        batch_size=B,
        max_length=T,
        logprob_chunk_size=0,
    )
    # unrolled layers: XLA counts a scanned stack's body once (test_costs.py)
    policy, reference = build(mesh, 0, scan_layers=False), build(mesh, 1, scan_layers=False)
    setup = setup_step(config, policy, mesh, reference=reference, total_steps=4)
    ledger = costs.Ledger()
    with costs.recording(ledger), jax.set_mesh(mesh):
        ref = costs.counted("reference_pass", setup.reference_logps())(setup.reference, batch())
        step = costs.counted("train_step", setup.compile(reference_in_step=False))
        state, _ = step(setup.state, None, batch(ref))
        state, _ = step(state, None, batch(ref))
    forward, train = ledger.entries["reference_pass"], ledger.entries["train_step"]
    assert forward.calls == 1 and train.calls == 2 and train.variants == 1
    np.testing.assert_allclose(forward.flops, 2 * N * TOKENS + ATTENTION, rtol=RTOL)
    np.testing.assert_allclose(train.flops, 2 * (6 * N * TOKENS + 3 * ATTENTION), rtol=RTOL)
    # forward and backward: about three forwards (a forward-only count would give 1)
    assert 2.7 < train.flops_per_call[0] / forward.flops < 3.5
    assert train.memory is not None and train.memory["peak"] > 0
    # the only loop whose trips XLA leaves out: the step's random-key split (threefry
    # rounds on a few integers), no matmul
    assert all("threefry" in op for op in train.uncounted_loops), train.uncounted_loops
    assert forward.uncounted_loop_trips == 0
