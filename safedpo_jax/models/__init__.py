"""Flax NNX ports of Llama, Mistral, Qwen2 and Qwen3 decoders, with Hugging Face weight I/O.

- `safedpo_jax.models.config`: `DecoderConfig`, the family switches (round-trips config.json).
- `safedpo_jax.models.decoder`: the decoder, `CausalLM`, `ScoreModel`, `KVCache`, `init_model`.
- `safedpo_jax.models.hf`: `from_pretrained` / `save_pretrained` through one key table.
- `safedpo_jax.models.options`: `ModelOptions` (dtypes, remat, attention, precision) and
  `Model`, a split model (graph, params, buffers) that a jitted step takes as one value.

>>> from safedpo_jax.models import DecoderConfig, init_model
>>> from flax import nnx
>>> config = DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
...                        num_hidden_layers=1, num_attention_heads=2)
>>> model = init_model(config, rngs=nnx.Rngs(0))
>>> model.lm_head_weight().shape
(16, 64)
"""

from safedpo_jax.models.config import DecoderConfig
from safedpo_jax.models.decoder import CausalLM, KVCache, ScoreModel, init_model
from safedpo_jax.models.hf import from_pretrained, save_pretrained
from safedpo_jax.models.options import Model, ModelOptions

__all__ = [
    "CausalLM",
    "DecoderConfig",
    "KVCache",
    "Model",
    "ModelOptions",
    "ScoreModel",
    "from_pretrained",
    "init_model",
    "save_pretrained",
]
