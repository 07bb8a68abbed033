"""Generation throughput: our jitted KV-cache `generate` against Hugging Face `generate`.

Both sides decode from the same random Llama weights (a `LlamaForCausalLM` saved to a
temporary directory; ours loads it with `safedpo_jax.models.from_pretrained`), the same
left-padded prompts (random ids, lengths drawn between half and all of ``--prompt``), the
same number of new tokens per row (no EOS on either side, so every row decodes
``--new`` tokens), in the same dtype, on this machine's accelerator (CUDA for torch, the
default JAX backend for ours) or the CPU. Two decodings: greedy, and sampling at
temperature 0.7 with top-p 0.9 (Hugging Face's default top-k of 50 switched off, as ours
has none). Hugging Face runs as users call it: `model.generate` with its default dynamic
KV cache, eager PyTorch.

Timing: one warm-up call per side and decoding (ours compiles there; its compile time is
reported apart), then ``--repeats`` rounds interleaved side by side; medians and their
ratio (``speedup`` = our tokens/s over Hugging Face's).

Correctness cross-check: the greedy continuations of both sides are compared token by
token: the share of rows that agree on the first token and the mean length of the common
prefix. In float32 they must agree on every token (``--smoke`` asserts it); in bfloat16
the two sides' rounding differs, so greedy paths part once two logits come within it.

    PYTHONPATH=. python experiments/benchmarks/generation_vs_hf.py           # on a GPU
    PYTHONPATH=. python experiments/benchmarks/generation_vs_hf.py --smoke   # seconds, CPU

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from typing import Any

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt", type=int, default=64, help="prompt positions P")
    p.add_argument("--new", type=int, default=128, help="new tokens per row N")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, float32, CPU")
    args = p.parse_args(argv)
    args.size = "medium"
    if args.smoke:
        args.size, args.vocab, args.dtype = "tiny", 256, "float32"
        args.batch, args.prompt, args.new, args.repeats = 4, 12, 8, 1
    return args


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Any, Any]:
    """Left-padded random prompts: ids ``[B, P]`` (pad 0) and the 0/1 mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch)
    ids = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), np.int64)
    for i, n in enumerate(lengths):
        ids[i, length - n :] = rng.integers(3, vocab, n)
        mask[i, length - n :] = 1
    return ids, mask


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from safedpo_jax import models
    from safedpo_jax.evaluate.generation import generate

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    jax_dtype = getattr(jnp, args.dtype)
    config = C.llama_config(args.size, vocab_size=args.vocab, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    n_params = sum(p.numel() for p in hf.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = models.from_pretrained(tmp, dtype=jax_dtype, param_dtype=jax_dtype)
    hf = hf.to(device=torch_device, dtype=torch_dtype).eval()
    hf.generation_config.eos_token_id = None  # every row decodes exactly N tokens
    hf.generation_config.pad_token_id = 0

    ids, mask = prompts(args.batch, args.prompt, args.vocab)
    t_ids, t_mask = torch.from_numpy(ids).to(torch_device), torch.from_numpy(mask).to(torch_device)
    j_ids, j_mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    n = args.new
    decodings = {
        "greedy": ({"temperature": 0.0}, {"do_sample": False}),
        "top_p": (
            {"temperature": 0.7, "top_p": 0.9, "seed": 1},
            {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": None},
        ),
    }

    def run_ours(kw: dict[str, Any]) -> np.ndarray:
        out = generate(ours, j_ids, j_mask, max_new_tokens=n, eos_id=-1, pad_id=0, **kw)
        return np.asarray(jax.block_until_ready(out.tokens))

    def run_hf(kw: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=t_ids, attention_mask=t_mask, max_new_tokens=n, min_new_tokens=n, **kw
            )
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return out[:, ids.shape[1] :].cpu().numpy()

    results: dict[str, Any] = {}
    for name, (ours_kw, hf_kw) in decodings.items():
        ours_call = functools.partial(run_ours, ours_kw)
        hf_call = functools.partial(run_hf, hf_kw)
        compile_s = C.timed(ours_call)
        ours_tokens, hf_tokens = ours_call(), hf_call()
        ours_s, hf_s = [], []
        for _ in range(args.repeats):
            ours_s.append(C.timed(ours_call))
            hf_s.append(C.timed(hf_call))
        row = {
            "ours_s": C.median(ours_s),
            "hf_s": C.median(hf_s),
            "ours_first_call_s": compile_s,
            "ours_tokens_per_s": args.batch * n / C.median(ours_s),
            "hf_tokens_per_s": args.batch * n / C.median(hf_s),
        }
        row["speedup"] = row["hf_s"] / row["ours_s"]
        assert ours_tokens.shape == hf_tokens.shape == (args.batch, n)
        if name == "greedy":
            same = ours_tokens == hf_tokens
            prefix = np.where(same.all(axis=1), n, np.argmin(same, axis=1))
            row["first_token_agreement"] = float(same[:, 0].mean())
            row["mean_common_prefix"] = float(prefix.mean())
        results[name] = row
        print(name, json.dumps(row), flush=True)

    summary = {
        "machine": C.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_device": torch.cuda.get_device_name() if torch_device == "cuda" else "cpu",
        "params": n_params,
        "dtype": args.dtype,
        "batch": args.batch,
        "prompt": args.prompt,
        "new_tokens": n,
        "results": results,
    }
    if args.smoke:
        assert results["greedy"]["mean_common_prefix"] == n, results["greedy"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
