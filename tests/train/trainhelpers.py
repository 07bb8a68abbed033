"""A micro Llama and a batch of 4 random pairs, shared by the step and objective tests.

2 layers, hidden 32, a 64-token vocabulary, initializer range 0.2 (so a second seed is a
visibly different reference); pairs of 16 tokens with random lengths, the response after
4 prompt tokens; one pair of each safety-label kind.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from safedpo_jax import logprobs, models
from safedpo_jax.train.objectives import StepBatch

MICRO = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.2,
}
B, T = 4, 16
LABELS = np.array([[False, False], [True, False], [False, True], [True, True]])


def build(mesh, seed: int, hf: dict | None = None, **options):
    """A random micro model (``hf`` overrides MICRO, e.g. a score-model architecture;
    ``options``: `ModelOptions` fields such as ``scan_layers``)."""
    config = models.DecoderConfig.from_hf(MICRO if hf is None else hf)
    return models.init_model(config, rngs=nnx.Rngs(seed), mesh=mesh, **options)


def batch(ref_logps=None, unsafe=LABELS) -> StepBatch:
    rng = np.random.default_rng(0)
    lengths = rng.integers(T // 2, T + 1, (B, 2))
    attention = np.arange(T)[None, None, :] < lengths[..., None]
    return StepBatch(
        input_ids=jnp.asarray(rng.integers(1, 64, (B, 2, T)), jnp.int32),
        attention_mask=jnp.asarray(attention, jnp.int32),
        loss_mask=jnp.asarray(attention & (np.arange(T) >= 4)[None, None, :]),
        unsafe=jnp.asarray(unsafe),
        valid=jnp.ones((B,), bool),
        ref_logps=ref_logps,
    )


def pair_logps(model, b: StepBatch) -> np.ndarray:
    """float64 ``[B, 2]`` sequence log-probs of ``b`` under ``model`` (the library's path)."""
    args = (b.input_ids, b.attention_mask, b.loss_mask)
    return np.asarray(logprobs.sequence_logps(models.Model.split(model), *args), np.float64)
