"""Time and memory estimates for the paper configs, from FLOPs and bytes (no measurement).

Nothing here was measured at full scale: this repository has no pod and no Hub access.
Every number is a formula over the architecture in ``architectures.json`` and the config's
TrainConfig fields, with these assumptions (change them here, then regenerate):

Compute (per optimizer step)
    N_mm  = parameters that enter a matmul per token: all parameters minus the input
            embedding table when it is not tied (a tied table is the head, so it counts).
    fwd   = 2 * N_mm * tokens + 4 * T * H * hd * L * tokens        (attention: Q K^T and
            A V over the full T x T block, which XLA computes whatever the causal mask)
    model = 3 * fwd (policy forward + backward) + fwd (in-step reference forward)
    time  = model / (chips * peak_bf16 * MFU)
    tokens = pairs * 2 * T (SFT: examples * T), with T = max_length: batches are padded to
    the bucket of the longest example of the global batch, which at 128 pairs per batch is
    mostly ``max_length``; so this is an upper bound on the work.
    MFU (model FLOPs utilisation; remat's extra forward, about +1/3 hardware FLOPs, is not
    counted as model FLOPs):
      H100: 35%, MEASURED for this step on one H100 (see `MEASURED`); a pod adds FSDP
        communication, which one device does not have, so this is optimistic there.
      TPU v4 / v5p: 40%, ASSUMED (no TPU here): below the >50% that well-tuned JAX stacks
        publish for Llama pre-training on TPU, because sequences are short (512) and
        attention is XLA's (no flash kernel).
    Steps: PKU-SafeRLHF-30K has about 26,900 training rows (``TRAIN_ROWS``); pair
    constructions that drop rows (SafeDPO drops unsafe-unsafe pairs, SAFEBETTER
    unsafe-winner pairs) take fewer steps, so the row count is again an upper bound.

Memory (per device, bytes)
    states   = P * (4 param + 4 grad + 8 Adam mu/nu) / (fsdp * tensor), float32 master
               weights and moments; + 4 P / (fsdp * tensor) for the in-step reference
               (held in param_dtype); + one more 4 P / shards gradient accumulator when
               micro_batches > 1.
    gathered = 2 layers' weights in the compute dtype (FSDP all-gathers ahead of use).
    acts     = with remat: L * tok * D * 2 (block inputs, bf16) + one block's working set;
               without: L * working set. Working set per token: 2 bytes * (7 D + 3 H hd +
               3 KV hd + 4 I) + H * T * 8 (float32 scores and probabilities).
               tok = tokens of one microbatch on one device.
    logits   = sequences * chunk * V * 4 * 3 (float32 logits, softmax, gradient of one
               chunk; chunk = logprob_chunk_size, or T when it is 0).
    The total leaves XLA's temporaries and fragmentation out: keep 20% headroom. It is
    otherwise an upper bound: on one H100 (`MEASURED`) the step peaked at 31.4 GB where
    this sum says 43.6 GB (XLA keeps bf16 gradients of bf16 compute, and activations,
    logits and gradients peak at different times).

Evaluation (one host, ``evaluate`` in the config)
    generation is bandwidth-bound: every decode step reads the bf16 weights once;
    steps = ceil(prompts / batch) * max_new_tokens; time = steps * 2 P / (host chips *
    HBM bandwidth * 50%). Scoring (reward + cost model, 7B each) is 2 * 2 * 7B * tokens
    FLOPs at the same MFU. Prompts: about 3,000 (PKU-SafeRLHF-30K test split).

    python experiments/paper/estimates.py            # print the table
    python experiments/paper/estimates.py --write    # regenerate ESTIMATES.md and the
                                                     # "expect" block of every config
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG_DIR = HERE / "configs"
ARCHITECTURES_FILE = HERE / "architectures.json"

# The one measurement behind these numbers (experiments/paper/measure_step.py's method,
# run inline on the library at commit 6ac6f0d, jax 0.11.2): one NVIDIA H100 80GB, a
# LLaMA-7B-wide model cut to 8 layers (1.88B parameters), 16 pairs x 512 tokens (the
# paper's per-device batch), bf16 over float32, remat, AdamW, reference log-probs
# given (cached; the in-step reference adds one forward, counted in the estimates).
MEASURED = {
    "device": "NVIDIA H100 80GB HBM3 (one)",
    "model": "alpaca-7b-reproduced architecture, 8 layers, 1.88B parameters",
    "pairs_x_length": "16 x 512",
    "step_s": {"xla_attention": 0.513, "cudnn_attention": 0.468},
    "mfu": {"xla_attention": 0.346, "cudnn_attention": 0.379},
    "peak_memory_gb": 31.4,
    "estimated_memory_gb": 43.6,  # train_estimate() of the same setup: an upper bound
}
GENERATION_BANDWIDTH_EFFICIENCY = 0.5
TRAIN_ROWS = 26_900  # PKU-SafeRLHF-30K train split, about
TEST_PROMPTS = 3_000  # its test split, about
PROMPT_TOKENS = 128  # a typical PKU-SafeRLHF prompt in the safe-rlhf template, about
SCORE_MODEL_PARAMS = 6.74e9  # beaver-7b-unified-reward / -cost: LLaMA-7B score models
BYTES_PER_GIB = 2**30
BASIS = (
    "estimated from FLOPs and bytes: MFU 40% assumed on TPU, 35% on H100 as measured for "
    "this step on one H100; no full-scale run measured; see experiments/paper/estimates.py"
)


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One chip: dense bf16 peak, memory, memory bandwidth, chips per host (published specs),
    and the model FLOPs utilisation the estimates take for it."""

    name: str
    peak_tflops: float
    hbm_gib: float
    hbm_gbps: float
    chips_per_host: int
    mfu: float

    @property
    def flops(self) -> float:
        """Sustained model FLOP/s: peak times MFU."""
        return self.peak_tflops * 1e12 * self.mfu


# Cloud TPU slice names count TensorCores (2 per v4/v5p chip); GPUs are named by count.
ACCELERATORS: dict[str, Accelerator] = {
    "v5p": Accelerator("TPU v5p", 459.0, 95.0, 2765.0, 4, mfu=0.40),
    "v4": Accelerator("TPU v4", 275.0, 32.0, 1200.0, 4, mfu=0.40),
    "H100": Accelerator("NVIDIA H100 SXM 80GB", 989.0, 80e9 / BYTES_PER_GIB, 3350.0, 8, mfu=0.35),
}


@dataclasses.dataclass(frozen=True)
class Pod:
    """A slice or cluster: ``v5p-16`` (8 chips, 2 hosts) or ``8xH100`` (one node)."""

    name: str
    accelerator: Accelerator
    chips: int

    @property
    def hosts(self) -> int:
        return max(1, math.ceil(self.chips / self.accelerator.chips_per_host))

    @classmethod
    def parse(cls, name: str) -> Pod:
        """``v5p-16`` / ``v4-32`` (TensorCores, 2 per chip) or ``8xH100``.

        >>> Pod.parse("v5p-16").chips, Pod.parse("v5p-16").hosts, Pod.parse("16xH100").hosts
        (8, 2, 2)
        """
        tpu = re.fullmatch(r"(v4|v5p)-(\d+)", name)
        if tpu:
            return cls(name, ACCELERATORS[tpu.group(1)], int(tpu.group(2)) // 2)
        gpu = re.fullmatch(r"(\d+)x(H100)", name)
        if gpu:
            return cls(name, ACCELERATORS[gpu.group(2)], int(gpu.group(1)))
        raise ValueError(f"unknown pod {name!r}: use v4-N, v5p-N or NxH100")


# ----------------------------------------------------------------------------- counts
@dataclasses.dataclass(frozen=True)
class Shape:
    """The dimensions of a decoder that FLOPs and bytes depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Shape:
        heads = hf["num_attention_heads"]
        return cls(
            layers=hf["num_hidden_layers"],
            hidden=hf["hidden_size"],
            intermediate=hf["intermediate_size"],
            heads=heads,
            kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            vocab=hf["vocab_size"],
            tied=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=hf["model_type"] == "qwen2" or bool(hf.get("attention_bias", False)),
            qk_norm=hf["model_type"] == "qwen3",
        )

    @property
    def layer_params(self) -> int:
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d
        attention += (q + 2 * kv) * self.qkv_bias + 2 * self.head_dim * self.qk_norm
        return attention + 3 * d * self.intermediate + 2 * d

    @property
    def params(self) -> int:
        """All parameters (Llama-2-7B: 6,738,415,616)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + self.hidden + embeddings

    @property
    def matmul_params(self) -> int:
        """Parameters used in a matmul per token (the input table is a gather unless tied)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)

    def forward_flops_per_token(self, seq_len: int) -> float:
        attention = 4 * seq_len * self.heads * self.head_dim * self.layers
        return 2.0 * self.matmul_params + attention

    def working_set_bytes_per_token(self, seq_len: int) -> float:
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2.0 * (7 * d + 3 * q + 3 * kv + 4 * self.intermediate) + self.heads * seq_len * 8


# ----------------------------------------------------------------------------- estimates
def _mesh(fields: Mapping[str, Any], chips: int) -> tuple[int, int, int]:
    sizes = [fields.get("mesh_data", 1), fields.get("mesh_fsdp", -1), fields.get("mesh_tensor", 1)]
    known = math.prod(s for s in sizes if s != -1)
    return tuple(chips // known if s == -1 else s for s in sizes)  # type: ignore[return-value]


def train_estimate(
    hf: Mapping[str, Any], fields: Mapping[str, Any], pod: Pod, examples: int
) -> dict[str, float]:
    """Steps, FLOPs, time and per-device memory of one training run on ``pod``."""
    shape = Shape.from_hf(hf)
    data, fsdp, tensor = _mesh(fields, pod.chips)
    objective = fields.get("objective", "preference")
    sft = objective == "sft"
    # Score models (reward, cost) train a head on the decoder without a reference; KTO has
    # two examples per row, each a sequence and its mismatched KL sequence.
    uses_reference = objective in ("preference", "kto", "bfpo")
    in_step = uses_reference and fields.get("reference", "in_step") == "in_step"
    seq_len = fields.get("max_length", 512)
    batch = fields.get("batch_size", 128)
    micro = fields.get("micro_batches", 1)
    seqs_per_example = 1 if sft else 2
    if objective == "kto":
        examples *= 2
    steps = fields.get("epochs", 2) * math.ceil(examples / batch)

    tokens = batch * seqs_per_example * seq_len
    fwd = shape.forward_flops_per_token(seq_len) * tokens
    model_flops = 3 * fwd + (fwd if in_step else 0.0)
    step_s = model_flops / (pod.chips * pod.accelerator.flops)

    shards = fsdp * tensor
    p = shape.params
    states = p * (4 + 4 + 8) + (4 * p if in_step else 0) + (4 * p if micro > 1 else 0)
    gathered = 2 * shape.layer_params * 2
    seqs = batch // micro // (data * fsdp) * seqs_per_example
    tok = seqs * seq_len
    work = shape.working_set_bytes_per_token(seq_len) * tok / tensor
    if fields.get("remat", False):
        acts = shape.layers * tok * shape.hidden * 2 + work
    else:
        acts = shape.layers * work
    chunk = fields.get("logprob_chunk_size", 512) or seq_len
    logits = seqs * min(chunk, seq_len) * shape.vocab * 4 * 3 / tensor
    memory = states / shards + gathered + acts + logits
    return {
        "steps": steps,
        "tokens_per_step": tokens,
        "model_tflop_per_step": model_flops / 1e12,
        "step_s": step_s,
        "hours": steps * step_s / 3600,
        "memory_gib": memory / BYTES_PER_GIB,
        "states_gib": states / shards / BYTES_PER_GIB,
        "activations_gib": (gathered + acts + logits) / BYTES_PER_GIB,
    }


def ppo_estimate(hf: Mapping[str, Any], fields: Mapping[str, Any], pod: Pod) -> dict[str, float]:
    """PPO-Lagrangian (SafeRLHF) on ``pod``: rollouts, experience and updates per step.

    Per step of ``prompt_batch_size`` prompts (one epoch over ``TRAIN_ROWS`` prompts, one
    update iteration, safe-rlhf's ppo-lag.sh): generation of ``max_length - PROMPT_TOKENS``
    new tokens, data-parallel from a gathered bf16 copy of the actor on every chip (one
    all-gather per rollout, not counted; decoding from FSDP shards would all-gather the
    weights at every token instead), bandwidth-bound: every decode step reads the whole
    copy from one chip's HBM; experience: forwards of the actor, the reference, both critics and
    both score models over the full sequences (6 forwards); updates: the actor and both
    critics, forward and backward (9 forwards). The reward/cost models and critics are
    taken as the actor's size (7B score models for a 7B actor, as in the paper).
    Memory per chip: actor and two critics with float32 master weights, gradients and Adam
    moments (16 bytes a parameter each), reference and both score models in bf16 (2 bytes),
    sharded over the chips, plus the larger of the gathered bf16 generation copy (2 bytes a
    parameter, not sharded; rollouts only) and the activations of the updates (as for a
    training step of the same tokens).
    """
    shape = Shape.from_hf(hf)
    data, fsdp, tensor = _mesh(fields, pod.chips)
    prompts = fields.get("prompt_batch_size", 16)
    seq_len = fields.get("max_length", 512)
    new_tokens = fields.get("max_new_tokens") or seq_len - PROMPT_TOKENS
    steps = fields.get("epochs", 1) * math.ceil(TRAIN_ROWS / prompts)
    tokens = prompts * seq_len
    fwd = shape.forward_flops_per_token(seq_len) * tokens
    model_flops = (6 + 9) * fwd
    compute_s = model_flops / (pod.chips * pod.accelerator.flops)
    bandwidth = pod.accelerator.hbm_gbps * 1e9 * GENERATION_BANDWIDTH_EFFICIENCY
    generate_s = new_tokens * 2 * shape.params / bandwidth
    step_s = compute_s + generate_s
    p, shards = shape.params, fsdp * tensor
    states = 3 * 16 * p + 3 * 2 * p
    seqs = prompts // (data * fsdp)
    work = shape.working_set_bytes_per_token(seq_len) * seqs * seq_len / tensor
    acts = shape.layers * seqs * seq_len * shape.hidden * 2 + work
    logits = seqs * seq_len * shape.vocab * 4 * 3 / tensor
    # The generation copy lives during rollouts only; activations during updates only.
    memory = states / shards + max(2 * p, 2 * shape.layer_params * 2 + acts + logits)
    return {
        "steps": steps,
        "tokens_per_step": tokens,
        "model_tflop_per_step": model_flops / 1e12,
        "generate_s": generate_s,
        "step_s": step_s,
        "hours": steps * step_s / 3600,
        "memory_gib": memory / BYTES_PER_GIB,
        "states_gib": states / shards / BYTES_PER_GIB,
        "activations_gib": (acts + logits) / BYTES_PER_GIB,
    }


def evaluate_estimate(
    hf: Mapping[str, Any], evaluate: Mapping[str, Any], pod: Pod, n_models: int
) -> dict[str, float]:
    """Generation + scoring time of ``n_models`` policies on one host of ``pod``."""
    shape = Shape.from_hf(hf)
    args = evaluate.get("args", {})
    batch = args.get("batch_size", 8)
    new_tokens = args.get("max_new_tokens", 128)
    prompts = args.get("max_prompts") or TEST_PROMPTS
    chips = min(pod.chips, pod.accelerator.chips_per_host)
    bandwidth = chips * pod.accelerator.hbm_gbps * 1e9 * GENERATION_BANDWIDTH_EFFICIENCY
    generate_s = math.ceil(prompts / batch) * new_tokens * 2 * shape.params / bandwidth
    score_tokens = prompts * (new_tokens + 128)
    score_s = 4 * SCORE_MODEL_PARAMS * score_tokens / (chips * pod.accelerator.flops)
    kv_cache = batch * (new_tokens + 512) * shape.layers * 2 * shape.kv_heads * shape.head_dim * 2
    memory = max(2 * shape.params, 2 * SCORE_MODEL_PARAMS) / chips + kv_cache / chips
    return {
        "hours": n_models * (generate_s + score_s) / 3600,
        "memory_gib": memory / BYTES_PER_GIB,
    }


def load_architectures() -> dict[str, dict[str, Any]]:
    return json.loads(ARCHITECTURES_FILE.read_text())


def config_estimates(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``expect`` block of an experiment config: every pod it names, every stage."""
    hf = load_architectures()[config["architecture"]]
    out: dict[str, Any] = {"basis": BASIS}
    runs = config.get("runs", {})
    for pod_name in config["pods"]:
        pod = Pod.parse(pod_name)
        stages: dict[str, dict[str, float]] = {}
        if config.get("sft"):
            fields = {**config["common"], **config["sft"]}
            per_row = 2 if fields.get("sft_responses", "both") == "both" else 1
            stages["sft"] = train_estimate(hf, fields, pod, TRAIN_ROWS * per_row)
        for name, run in runs.items():
            kind = run.get("stage", "train")
            if kind == "ppo":
                stages[name] = ppo_estimate(hf, run, pod)
            elif kind == "train":
                stages[name] = train_estimate(hf, {**config["common"], **run}, pod, TRAIN_ROWS)
            # "merge": a streaming pass over two checkpoints, minutes of I/O; not counted
        if config.get("evaluate"):
            stages["evaluate"] = evaluate_estimate(
                hf, config["evaluate"], pod, len(config["evaluate"]["runs"])
            )
        train = [s for k, s in stages.items() if k != "evaluate"]
        out[pod_name] = {
            "chips": pod.chips,
            "hosts": pod.hosts,
            "hbm_gib_per_chip": round(pod.accelerator.hbm_gib, 1),
            "peak_memory_gib_per_chip": round(max(s["memory_gib"] for s in train), 1),
            "step_s": {k: round(s["step_s"], 2) for k, s in stages.items() if "step_s" in s},
            "stage_hours": {k: round(s["hours"], 2) for k, s in stages.items()},
            "train_hours": round(sum(s["hours"] for s in train), 2),
            "evaluate_hours": round(stages.get("evaluate", {}).get("hours", 0.0), 2),
        }
    return out


def config_paths() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.json"))


def markdown_table() -> str:
    """ESTIMATES.md: one row per config and pod."""
    archs = load_architectures()
    lines = [
        "# Estimated time and memory of the paper configs",
        "",
        "Generated by `python experiments/paper/estimates.py --write`; do not edit by hand.",
        f"Basis: {BASIS}. The formulas and assumptions are in the docstring of `estimates.py`.",
        "Train hours add up every training stage of the config (SFT included); stages that",
        "another config of the same group already ran (the runner skips them) count in both.",
        "",
        "Measured (the only measurement): one H100, LLaMA-7B width cut to 8 layers (1.88B",
        "parameters), 16 pairs x 512 tokens, bf16 over float32, remat, AdamW, reference",
        f"log-probs given: {MEASURED['step_s']['xla_attention']} s/step with XLA attention",
        f"(MFU {MEASURED['mfu']['xla_attention']:.1%}), "
        f"{MEASURED['step_s']['cudnn_attention']} s with `--attention-impl cudnn`",
        f"(MFU {MEASURED['mfu']['cudnn_attention']:.1%}); peak memory "
        f"{MEASURED['peak_memory_gb']} GB against {MEASURED['estimated_memory_gb']} GB estimated.",
        "",
        "| config | model | params | pod | chips / hosts | peak GiB per chip (HBM) "
        "| s / step (main run) | train h | evaluate h |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for path in config_paths():
        config = json.loads(path.read_text())
        expect = config_estimates(config)
        params = Shape.from_hf(archs[config["architecture"]]).params
        main = next(n for n, r in config["runs"].items() if r.get("stage", "train") == "train")
        for pod_name in config["pods"]:
            e = expect[pod_name]
            lines.append(
                f"| {path.stem} | {config['architecture']} | {params / 1e9:.2f}B | {pod_name} "
                f"| {e['chips']} / {e['hosts']} "
                f"| {e['peak_memory_gib_per_chip']} ({e['hbm_gib_per_chip']}) "
                f"| {e['step_s'][main]} | {e['train_hours']} | {e['evaluate_hours']} |"
            )
    return "\n".join(lines) + "\n"


def write_all() -> None:
    """Rewrites every config's ``expect`` block and ESTIMATES.md."""
    for path in config_paths():
        config = json.loads(path.read_text())
        config["expect"] = config_estimates(config)
        path.write_text(json.dumps(config, indent=2) + "\n")
    (HERE / "ESTIMATES.md").write_text(markdown_table())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate ESTIMATES.md and configs")
    args = parser.parse_args()
    if args.write:
        write_all()
    print(markdown_table(), end="")


if __name__ == "__main__":
    main()
