"""Flax NNX ports of Llama, Mistral, Qwen2 and Qwen3 decoders, with Hugging Face weight I/O.

- `safedpo_jax.models.config`: `DecoderConfig`, the family switches (round-trips config.json).
- `safedpo_jax.models.decoder`: the decoder, `CausalLM`, `ScoreModel`, `KVCache`, `init_model`.
- `safedpo_jax.models.hf`: `from_pretrained` / `save_pretrained` through one key table; score
  models started from a causal LM (`score_model_from_causal_lm`) and converted between the
  Hugging Face and safe-rlhf layouts (`convert_score_model`).
- `safedpo_jax.models.merge`: the streaming linear merge of two checkpoints (P-SACPO),
  also a command: ``python -m safedpo_jax.models.merge A B --q 0.5 --output DIR``.
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
from safedpo_jax.models.hf import (
    convert_score_model,
    from_pretrained,
    save_pretrained,
    score_model_from_causal_lm,
)
from safedpo_jax.models.options import Model, ModelOptions

__all__ = [
    "CausalLM",
    "DecoderConfig",
    "KVCache",
    "Model",
    "ModelOptions",
    "ScoreModel",
    "convert_score_model",
    "from_pretrained",
    "init_model",
    "save_pretrained",
    "score_model_from_causal_lm",
]
