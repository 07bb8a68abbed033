"""Training configuration: one frozen dataclass, named presets, command-line overrides.

`TrainConfig` holds every knob of a run. A preset is a named set of field values
(`PRESETS`); the command line picks one with ``--preset NAME`` and overrides any field
with ``--field-name VALUE`` (underscores become dashes: ``--max-steps 100``). The default
preset, ``paper``, is the setup of the SafeDPO paper (safe-rlhf's DPO defaults; see
``shared/docs/safedpo.md`` §6).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from safedpo_jax.data.pairs import PairMode
from safedpo_jax.data.rows import SafetyLabel
from safedpo_jax.data.tokenization import SFTResponses
from safedpo_jax.losses import LinkName
from safedpo_jax.models.options import DTYPE_NAMES, DTypeName

# The enumerations of the config come from the modules that own them; the command line's
# choices are read off the Literal annotations (`build_parser`), so each has one source.
ReferenceMode = Literal["in_step", "cached"]
# One name per builder of `safedpo_jax.train.objectives.OBJECTIVES` (a test checks this).
ObjectiveName = Literal["preference", "sft", "reward", "cost", "kto", "bfpo"]
ScoreLayout = Literal["safe_rlhf", "hf"]
Template = Literal["safe_rlhf", "chat"]
LOSSES: tuple[str, ...] = get_args(LinkName)
REFERENCE_MODES: tuple[str, ...] = get_args(ReferenceMode)
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
DTYPES = DTYPE_NAMES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a SafeDPO (or DPO baseline) run needs.

    Model
      model: policy initialisation, a local Hugging Face directory or a Hub id. ``None``
        builds a randomly initialised model from ``model_config``.
      ref_model: the frozen reference; defaults to ``model`` (or, for a random model, a
        copy of the policy's initial weights).
      model_config: a Hugging Face ``config.json`` as a dict (or a path to one), used when
        ``model`` is None; ``vocab_size`` and special-token ids default to the tokenizer's.
      dtype / param_dtype: compute and master-weight dtypes ("bfloat16" over "float32" is
        the mixed-precision setup).
      remat: rematerialise each decoder block in the backward pass.
      attention_impl: None (XLA) or "cudnn" (flash attention on NVIDIA GPUs).

    LoRA (`safedpo_jax.train.lora`; the reference is then the base with the adapters'
    initial values, sharing the base's memory)
      lora_rank: adapter rank; 0 trains every weight (no adapters) unless ``lora_adapter``.
      lora_alpha, lora_rslora: the scale ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
      lora_targets: comma-separated projection names, or a regex fully matching PEFT module
        names (``model.layers.3.self_attn.q_proj``).
      lora_dropout: PEFT's dropout; only 0 is implemented.
      lora_adapter: a PEFT LoRA adapter directory to start from (an SFT adapter): the
        trained adapter starts from it and the reference is base plus it, frozen.

    Data
      dataset: a Hub name, a local file or directory, or "sample" (the embedded synthetic
        PKU-SafeRLHF-style sample).
      dataset_config: the Hub configuration (for the full PKU-SafeRLHF).
      split / eval_split: training and held-out splits (``eval_split=None``: no eval).
      pairs: one of `PAIR_MODES`: "safedpo" (helpfulness order + safety labels; the kernel
        applies T), "helpful", "harmless", "safebetter" (the paper's DPO baselines).
      tokenizer: defaults to ``model``, or the sample's tokenizer for ``dataset="sample"``.
      max_length: prompt + response tokens; longer pairs keep the start.
      template: "safe_rlhf" or "chat" (the tokenizer's chat template).
      safety_label: "is_safe" (the ``is_response_*_safe`` columns) or "severity".
      keep_both_unsafe: keep pairs of two unsafe responses in the batches (the kernel
        gives them zero weight); dropped before batching by default.

    Objective
      objective: "preference" (SafeDPO or a DPO baseline, by ``pairs``), "sft"
        (supervised fine-tuning on prompt + response, to make a reference model),
        "reward" / "cost" (Safe RLHF's reward and cost models: a score head on the
        decoder), "kto" (KTO on the safety labels, SACPO's safety stage) or "bfpo".
      sft_responses: which responses SFT imitates: "both" (every response of every row),
        "better", "safer" or "safe".
      loss: one of `LOSSES`, the direct-alignment link (SafeDAA for ``pairs="safedpo"``).
      beta, delta, label_smoothing: the loss hyperparameters (delta only for "safedpo").
      score_regularization, contradictory, score_layout: reward/cost models ("reward",
        "cost"): the score-magnitude penalty (safe-rlhf: 0.001); contradictory safety
        pairs (safer response unsafe, other safe) dropped and counted, or an error; the
        layout of a score model started from a causal LM ("safe_rlhf" *ForScore with a
        zero bias, or "hf" *ForSequenceClassification).
      kto_desirable_weight, kto_undesirable_weight: KTO's class weights ("kto"); an unset
        undesirable weight is SACPO's n_desirable / n_undesirable of the training set.
      bfpo_b1, bfpo_alpha: BFPO's constants ("bfpo"; the paper's 3 and 0.5).
      reference: "in_step" (frozen reference run in every step under stop_gradient) or
        "cached" (one pass over the data before training, cached on disk).
      ref_cache_dir: where cached reference log-probs live (default
        ``~/.cache/safedpo_jax/reference``).
      logprob_chunk_size: positions per chunk of the memory-efficient log-prob path
        (`safedpo_jax.losses.chunked_sequence_logprobs`); 0 materialises the full
        [2B, T, V] float32 logits; None (the default) decides per shape: full logits while
        one device's share of them takes at most 32 MiB, else the fewest chunks of at
        most 256 MiB each (`safedpo_jax.train.step.auto_chunk_size`).

    Optimisation
      batch_size: pairs per optimizer step, over all devices and hosts.
      micro_batches: gradient-accumulation microbatches per step (divides batch_size).
      learning_rate, warmup_ratio, weight_decay, adam_b1, adam_b2, adam_eps: AdamW with
        linear warmup and cosine decay to 0.
      max_grad_norm: global-norm clipping (0 disables).
      epochs / max_steps: the run length (max_steps wins when set).
      seed: shuffling and initialisation.

    Mesh and hosts
      mesh_data, mesh_fsdp, mesh_tensor: mesh axis sizes; one may be -1 (the rest).
      coordinator_address, num_processes, process_id: `jax.distributed.initialize`
        arguments for multi-host runs (on Cloud TPU they are discovered automatically
        when ``distributed`` is True).

    Output
      output_dir: metrics.jsonl, TensorBoard events, checkpoints/, hf/ (the exported policy).
      save_every / keep_checkpoints: checkpoint cadence and how many to keep.
      log_every / eval_every: steps between metric lines / held-out evaluations (0: eval
        only at the end).
      eval_batches: cap on held-out batches per evaluation (None: the whole split).
      export: write the final policy in Hugging Face format to ``output_dir/hf``.
    """

    # model
    model: str | None = None
    ref_model: str | None = None
    model_config: dict[str, Any] | str | None = None
    dtype: DTypeName = "bfloat16"
    param_dtype: DTypeName = "float32"
    remat: bool = False
    attention_impl: str | None = None
    # LoRA (safedpo_jax.train.lora)
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    lora_rslora: bool = False
    lora_dropout: float = 0.0
    lora_adapter: str | None = None
    # data
    dataset: str = "PKU-Alignment/PKU-SafeRLHF-30K"
    dataset_config: str | None = None
    split: str = "train"
    eval_split: str | None = "test"
    pairs: PairMode = "safedpo"
    tokenizer: str | None = None
    max_length: int = 512
    template: Template = "safe_rlhf"
    safety_label: SafetyLabel = "is_safe"
    keep_both_unsafe: bool = False
    # objective
    objective: ObjectiveName = "preference"
    sft_responses: SFTResponses = "both"
    loss: LinkName = "sigmoid"
    beta: float = 0.1
    delta: float = 10.0
    label_smoothing: float = 0.0
    score_regularization: float = 0.001
    contradictory: Literal["drop", "raise"] = "drop"
    score_layout: ScoreLayout = "safe_rlhf"
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float | None = None
    bfpo_b1: float = 3.0
    bfpo_alpha: float = 0.5
    reference: ReferenceMode = "in_step"
    ref_cache_dir: str | None = None
    logprob_chunk_size: int | None = None
    # optimisation
    batch_size: int = 128
    micro_batches: int = 1
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    epochs: int = 2
    max_steps: int | None = None
    seed: int = 42
    # mesh and hosts
    mesh_data: int = 1
    mesh_fsdp: int = -1
    mesh_tensor: int = 1
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # output
    output_dir: str = "runs/safedpo"
    save_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int | None = None
    export: bool = True

    def __post_init__(self) -> None:
        for name, annotation in _hints().items():
            choices = _literal_choices(annotation)
            value = getattr(self, name)
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"TrainConfig: {name} must be one of {choices}, got {value!r}")
        checks = [
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.delta >= 0, f"delta must be >= 0, got {self.delta}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.micro_batches > 0, f"micro_batches must be positive, got {self.micro_batches}"),
            (
                self.batch_size % self.micro_batches == 0,
                f"micro_batches ({self.micro_batches}) must divide batch_size ({self.batch_size})",
            ),
            (self.max_length > 1, f"max_length must be > 1, got {self.max_length}"),
            (self.save_every > 0, f"save_every must be positive, got {self.save_every}"),
            (self.log_every > 0, f"log_every must be positive, got {self.log_every}"),
            (self.keep_checkpoints > 0, "keep_checkpoints must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.lora_rank >= 0, f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}"),
            (
                self.logprob_chunk_size is None or self.logprob_chunk_size >= 0,
                "logprob_chunk_size must be >= 0 (or None: automatic)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        if self.model is None and self.model_config is None:
            raise ValueError("TrainConfig: give --model (a checkpoint) or a model_config")

    @property
    def reference_model(self) -> str | None:
        """The reference checkpoint (``ref_model``, else ``model``)."""
        return self.ref_model if self.ref_model is not None else self.model

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# A small Llama for CPU runs on the embedded sample; vocab and special tokens come from
# the tokenizer.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's setup: safe-rlhf DPO defaults on PKU-SafeRLHF-30K, starting from the
    # reproduced Alpaca-7B (an SFT Llama) as policy and reference; 16 pairs per device on
    # 8 devices.
    "paper": {
        "model": "PKU-Alignment/alpaca-7b-reproduced",
        "dataset": "PKU-Alignment/PKU-SafeRLHF-30K",
        "pairs": "safedpo",
        "beta": 0.1,
        "delta": 10.0,
        "learning_rate": 1e-6,
        "warmup_ratio": 0.03,
        "weight_decay": 0.05,
        "adam_b1": 0.9,
        "adam_b2": 0.95,
        "max_length": 512,
        "epochs": 2,
        "batch_size": 128,
        "dtype": "bfloat16",
        "param_dtype": "float32",
        "remat": True,
    },
    # safe-rlhf's score-model scripts (reward / cost models): pick --objective reward|cost.
    "safe-rlhf-score": {
        "model": "PKU-Alignment/alpaca-7b-reproduced",
        "dataset": "PKU-Alignment/PKU-SafeRLHF-30K",
        "objective": "reward",
        "score_regularization": 0.001,
        "learning_rate": 2e-5,
        "warmup_ratio": 0.03,
        "weight_decay": 0.1,
        "adam_b1": 0.9,
        "adam_b2": 0.95,
        "max_length": 512,
        "epochs": 2,
        "batch_size": 128,
        "dtype": "bfloat16",
        "param_dtype": "float32",
        "remat": True,
    },
    # A random tiny Llama on the embedded synthetic sample: about a minute on 2 CPU cores.
    "tiny": {
        "model": None,
        "model_config": TINY_LLAMA,
        "dataset": "sample",
        "max_length": 64,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "epochs": 1,
        "max_steps": 60,
        "dtype": "float32",
        "save_every": 20,
        "log_every": 5,
        "eval_batches": 4,
        "output_dir": "runs/tiny",
    },
}


def from_preset(name: str = "paper", **overrides: Any) -> TrainConfig:
    """The `TrainConfig` of preset ``name`` with ``overrides`` applied.

    >>> from_preset("tiny", beta=0.5).beta
    0.5
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    if isinstance(fields.get("model_config"), str):
        fields["model_config"] = json.loads(Path(fields["model_config"]).read_text())
    return TrainConfig(**fields)


@functools.cache
def _hints() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _field_parser(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``(argparse type, choices)`` for a resolved field annotation."""
    if annotation is bool:
        return _parse_bool, None
    if annotation in (int, float, str):
        return annotation, None
    if get_origin(annotation) is Literal:
        return str, get_args(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if type(None) in get_args(annotation) and args:
        inner = args[0]
        if get_origin(inner) is Literal:
            return _none_or(str), get_args(inner)
        return _none_or(inner if inner in (int, float, str) else str), None
    return str, None


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--preset`` plus one ``--field-name`` flag per config field."""
    parser = argparse.ArgumentParser(
        prog="python -m safedpo_jax.train",
        description="Train a policy with SafeDPO (or a DPO baseline) on a device mesh.",
    )
    parser.add_argument("--preset", default="paper", help=f"one of {sorted(PRESETS)}")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    hints = _hints()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind, choices = _field_parser(hints[field.name])
        parser.add_argument(flag, dest=field.name, type=kind, default=None, choices=choices)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parses ``argv`` into a `TrainConfig` (preset first, then the explicit flags).

    >>> cfg, _ = parse_args(["--preset", "tiny", "--max-steps", "3", "--ref-model", "none"])
    >>> cfg.max_steps, cfg.ref_model, cfg.dataset
    (3, None, 'sample')
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    overrides: Mapping[str, Any] = {
        f.name: getattr(ns, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(ns, f.name) is not None or _given(argv, f.name)
    }
    try:
        return from_preset(ns.preset, **overrides), ns
    except (ValueError, TypeError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def _given(argv: Sequence[str], name: str) -> bool:
    """Whether ``--name`` appeared explicitly (so an explicit ``none`` overrides a preset)."""
    flag = "--" + name.replace("_", "-")
    return any(a == flag or a.startswith(flag + "=") for a in argv)
