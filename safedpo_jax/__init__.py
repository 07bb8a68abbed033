"""safedpo_jax: SafeDPO (Kim et al., ICLR 2026, arXiv 2505.20065) in pure JAX.

Submodules are imported on demand so that, for instance, ``import safedpo_jax.losses``
pulls in jax and numpy alone:

- `safedpo_jax.losses`: the loss kernel (safety transform, SafeDPO and SafeDAA losses,
  sequence log-probs, reductions, metrics).
- `safedpo_jax.sharding`: device meshes and the logical-axis rules table.
- `safedpo_jax.models`: Flax NNX Llama / Mistral / Qwen2 / Qwen3 decoders, score heads
  and KV cache, with Hugging Face weight I/O (`from_pretrained`, `save_pretrained`).
- `safedpo_jax.data`: preference data (PKU-SafeRLHF loading, pair constructions,
  tokenisation, resumable batches, the embedded synthetic sample and its oracle); no JAX.
- `safedpo_jax.train`: configs and presets, the sharded jitted step, reference caching,
  orbax checkpoints, the loop and ``python -m safedpo_jax.train``.
- `safedpo_jax.worlds.closed_form`: a tabular world with a known optimum, to test the kernel.
"""

__version__ = "0.1.0"
