"""Tiny random Hugging Face torch models for parity tests (imported by the test modules).

Every helper imports torch lazily: test modules call ``pytest.importorskip("torch")`` first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Tiny configs, one per family and switch combination. GQA ratios: 1, 2 and 4.
BASE = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, pad_token_id=0
)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-mha-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama3-rope-gqa2-tied": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
            rope_theta=500000.0,
        ),
    ),
    "llama-linear-rope-gqa4": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    ),
    "mistral-gqa2": (
        "mistral",
        dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
    ),
    "mistral-window3-gqa4": (
        "mistral",
        dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=3),
    ),
    "qwen2-bias-gqa2-tied": (
        "qwen2",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    ),
    "qwen2-window3-layer1": (
        "qwen2",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=1,
        ),
    ),
    "qwen3-qknorm-headdim16-gqa4": (
        "qwen3",
        dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    ),
    "qwen3-tied-gqa2": (
        "qwen3",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    ),
}


def hf_config(family: str, **overrides: Any):
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[family]
    return cls(**{**BASE, **overrides})


def randomize(model, seed: int = 0) -> None:
    """Weights of O(1) effect (HF's init leaves biases at zero and norms at one)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def build_hf(family: str, path: Path, *, head: str = "causal_lm", seed: int = 0, **overrides):
    """A random HF torch model (eager attention, eval mode) saved to ``path``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    auto = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "sequence_classification": transformers.AutoModelForSequenceClassification,
    }[head]
    model = auto.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions(mask)),
        )
    return out.logits.float().numpy()


def batches(vocab: int = 96, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Right- and left-padded batches [3, 9] (one row unpadded), pad id 0."""
    rng = np.random.RandomState(seed)
    lengths = np.array([9, 5, 2])
    ids = rng.randint(1, vocab, (3, 9))
    right = (np.arange(9)[None] < lengths[:, None]).astype(np.int32)
    left = right[:, ::-1].copy()
    return {
        "right": (np.where(right, ids, 0), right),
        "left": (np.where(left, ids, 0), left),
    }


@nnx.jit
def forward(model, ids, mask):
    return model(ids, mask)


def run(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))


def write_checkpoint(path: Path, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """A hand-made checkpoint directory (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        path / "model.safetensors",
        metadata={"format": "pt"},
    )


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    return json.loads((path / "config.json").read_text()), load_file(path / "model.safetensors")


def safe_rlhf_checkpoint(
    path: Path,
    *,
    score_dim: int,
    bias: bool,
    score_type: str,
    do_normalize: bool,
    seed: int = 0,
    bias_key: str = "bias",
    zero_mean: bool = False,
):
    """A safe-rlhf LlamaForScore checkpoint: Llama backbone (``model.*``) + ``score_head``.

    ``bias_key``: the config name of the head-bias switch (``bias`` in the safe-rlhf
    releases of the beaver v1 models, ``score_bias`` in current safe-rlhf).
    Returns the torch backbone and the head/normalizer tensors for the reference.
    """
    import torch
    import transformers

    config = hf_config("llama", num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(seed)
    backbone = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()
    randomize(backbone, seed)
    rng = np.random.RandomState(seed)
    head = {
        "score_head.weight": rng.normal(0, 0.3, (score_dim, 32)).astype(np.float32),
        "normalizer.mean": rng.normal(0, 1, (score_dim,)).astype(np.float32),
        "normalizer.var": rng.uniform(0.5, 2, (score_dim,)).astype(np.float32),
        "normalizer.count": np.array([1234], np.int64),
    }
    if zero_mean:
        head["normalizer.mean"][:] = 0
    if bias:
        head["score_head.bias"] = rng.normal(0, 1, (score_dim,)).astype(np.float32)
    tensors = {f"model.{k}": v.numpy() for k, v in backbone.state_dict().items()}
    hf = config.to_dict()
    hf.update(
        architectures=["LlamaForScore"],
        score_dim=score_dim,
        score_type=score_type,
        do_normalize=do_normalize,
        normalizer_type="ExponentialMovingAverage",
        momentum=0.9,
    )
    hf[bias_key] = bias
    write_checkpoint(path, hf, {**tensors, **head})
    return backbone, head


def safe_rlhf_reference(backbone, head, ids, mask, score_type, do_normalize, *, per_token=False):
    """safe-rlhf's ScoreModelMixin.get_scores, written out in torch / numpy.

    ``end_scores`` ``[B, C]``, or with ``per_token`` the normalised ``scores`` ``[B, T, C]``.
    """
    import torch

    with torch.no_grad():
        hidden = backbone(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions(mask)),
        ).last_hidden_state.numpy()
    scores = hidden @ head["score_head.weight"].T + head.get("score_head.bias", 0.0)
    if not per_token:
        end = np.array([np.nonzero(m)[0][-1] for m in mask])
        scores = scores[np.arange(len(ids)), end]
    std = np.sqrt(head["normalizer.var"])
    if do_normalize and score_type == "reward":
        scores = (scores - head["normalizer.mean"]) / (std + 1e-8)
    if do_normalize and score_type == "cost":
        scores = scores / (std + 1e-8)
    return scores
