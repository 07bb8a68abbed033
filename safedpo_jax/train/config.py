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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from safedpo_jax.data.pairs import PairMode
from safedpo_jax.data.rows import OnError, SafetyLabel
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


# The option groups of the command line, in `--help` order, with one line each.
GROUPS: dict[str, str] = {
    "model": "the policy, its reference and how they compute",
    "data": "where the preference pairs come from and how they are tokenised",
    "objective": "what is optimised: SafeDPO, a DPO baseline, SFT, reward/cost models, KTO, BFPO",
    "optimisation": "AdamW with linear warmup and cosine decay to 0",
    "lora": "low-rank adapters: only they train; the reference is the base with them off",
    "mesh": "device mesh and multi-host set-up",
    "checkpoints": "where the outputs go, checkpoint cadence, export",
    "logging": "metrics.jsonl, TensorBoard, Weights & Biases, held-out evaluation",
}
# What `--report-to` accepts (TRL's spelling): metrics.jsonl is always written.
ReportTo = Literal["tensorboard", "wandb", "all", "none"]


def _option(default: Any, group: str, help: str) -> Any:
    """A config field with its `--help` line and group: the one source of its docs."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}; known: {list(GROUPS)}")
    return dataclasses.field(default=default, metadata={"group": group, "help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a SafeDPO (or DPO baseline, SFT, score-model, KTO, BFPO) run needs.

    Each field carries its one-line documentation and its option group in its metadata
    (``dataclasses.fields(TrainConfig)[i].metadata["help"]``); ``python -m
    safedpo_jax.train --help`` prints them grouped, with type, choices and default, and
    ``--print-config`` writes them as comments above each value. Enumerations are
    ``Literal`` annotations, checked here and offered as the command line's choices.
    Lengths are in tokens, ``batch_size`` in preference pairs per optimizer step over
    all devices and hosts.
    """

    # model
    model: str | None = _option(
        None,
        "model",
        "policy initialisation: a local Hugging Face directory or a Hub id; none builds a "
        "randomly initialised model from --model-config",
    )
    ref_model: str | None = _option(
        None,
        "model",
        "the frozen reference (directory or Hub id); none: the same weights as --model "
        "(for a random model, a copy of the policy's initial weights)",
    )
    model_config: dict[str, Any] | str | None = _option(
        None,
        "model",
        "a Hugging Face config.json (path, or a mapping in a --config file) for a random "
        "model when --model is none; vocab size and special tokens default to the tokenizer's",
    )
    dtype: DTypeName = _option("bfloat16", "model", "compute dtype")
    param_dtype: DTypeName = _option(
        "float32",
        "model",
        "master-weight dtype (bfloat16 compute over float32 weights is "
        "the paper's mixed precision)",
    )
    remat: bool = _option(False, "model", "rematerialise each decoder block in the backward pass")
    attention_impl: str | None = _option(
        None, "model", "none (XLA attention) or cudnn (flash attention on NVIDIA GPUs)"
    )
    scan_layers: bool = _option(
        True,
        "model",
        "apply the stacked decoder blocks with jax.lax.scan (compile time flat in depth); "
        "false: a Python loop over them (same numbers)",
    )
    # LoRA (safedpo_jax.train.lora)
    lora_rank: int = _option(
        0, "lora", "adapter rank; 0 trains every weight (no adapters) unless --lora-adapter"
    )
    lora_alpha: float = _option(
        16.0, "lora", "adapter scale alpha / r (alpha / sqrt(r) with rsLoRA)"
    )
    lora_targets: str = _option(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "lora",
        "comma-separated projection names, or a regex fully matching PEFT module names "
        "(model.layers.3.self_attn.q_proj)",
    )
    lora_rslora: bool = _option(False, "lora", "rsLoRA scaling alpha / sqrt(r)")
    lora_dropout: float = _option(0.0, "lora", "PEFT's adapter dropout; only 0 is implemented")
    lora_adapter: str | None = _option(
        None,
        "lora",
        "a PEFT LoRA adapter directory to start from (an SFT adapter): training starts from it "
        "and the reference is base plus it, frozen",
    )
    # data
    dataset: str = _option(
        "PKU-Alignment/PKU-SafeRLHF-30K",
        "data",
        "PKU-SafeRLHF-schema rows: a Hub name, a local jsonl/json/parquet file or directory, "
        "or 'sample' (the embedded synthetic sample)",
    )
    dataset_config: str | None = _option(
        None, "data", "the Hub configuration (e.g. alpaca-7b of PKU-Alignment/PKU-SafeRLHF)"
    )
    split: str = _option("train", "data", "training split")
    eval_split: str | None = _option(
        "test", "data", "held-out split for eval/* metrics; none: no held-out evaluation"
    )
    pairs: PairMode = _option(
        "safedpo",
        "data",
        "pair construction: safedpo (helpfulness order + safety labels; the kernel applies T), "
        "helpful, harmless, safebetter (the paper's DPO-HELPFUL/-HARMLESS/-SAFEBETTER); "
        "unpaired: one example per response (kto)",
    )
    tokenizer: str | None = _option(
        None, "data", "tokenizer directory or Hub id; none: --model's, or the sample's"
    )
    max_length: int = _option(
        512, "data", "prompt + response tokens; longer pairs keep the start (and are counted)"
    )
    pack_length: int = _option(
        0,
        "data",
        "padding-free packing (preference objective): the row length in tokens that "
        "sequences are packed into, with attention confined to each sequence; 0: padded "
        "[B, 2, T] batches. Must be >= max_length (every sequence fits, none is dropped)",
    )
    template: Template = _option(
        "safe_rlhf",
        "data",
        "prompt template: safe_rlhf's BEGINNING OF CONVERSATION, or the tokenizer's chat template",
    )
    safety_label: SafetyLabel = _option(
        "is_safe", "data", "safety from the is_response_*_safe columns or from severity"
    )
    on_error: OnError = _option(
        "raise",
        "data",
        "a row that fails validation stops the run naming file, row and column (raise), or "
        "is dropped and counted in the data summary (drop)",
    )
    keep_both_unsafe: bool = _option(
        False,
        "data",
        "keep pairs of two unsafe responses in the batches (the kernel gives them zero weight); "
        "dropped before batching by default",
    )
    # objective
    objective: ObjectiveName = _option(
        "preference",
        "objective",
        "preference (SafeDPO or a DPO baseline, by --pairs), sft (supervised fine-tuning, to "
        "make a reference), reward / cost (Safe RLHF's score models), kto (KTO on the safety "
        "labels, SACPO's safety stage) or bfpo",
    )
    sft_responses: SFTResponses = _option("both", "objective", "sft: which responses to imitate")
    loss: LinkName = _option(
        "sigmoid",
        "objective",
        "direct-alignment link: sigmoid (DPO), ipo, hinge (SafeDAA variants with --pairs safedpo)",
    )
    beta: float = _option(0.1, "objective", "KL strength of the implicit reward (the paper: 0.1)")
    delta: float = _option(
        10.0, "objective", "SafeDPO's safety margin Delta on safe-vs-unsafe pairs (the paper: 10)"
    )
    label_smoothing: float = _option(0.0, "objective", "cDPO label smoothing")
    length_normalize: bool = _option(
        False,
        "objective",
        "divide each log-ratio by its completion length (TRL's ipo form); default: summed "
        "log-probs, as the IPO paper",
    )
    score_regularization: float = _option(
        0.001, "objective", "reward/cost: penalty on the score's magnitude (safe-rlhf: 0.001)"
    )
    contradictory: Literal["drop", "raise"] = _option(
        "drop",
        "objective",
        "cost: pairs whose safer response is unsafe and the other safe are dropped and counted, "
        "or an error",
    )
    score_layout: ScoreLayout = _option(
        "safe_rlhf",
        "objective",
        "reward/cost from a causal LM: safe-rlhf *ForScore (zero bias) or HF "
        "*ForSequenceClassification",
    )
    kto_desirable_weight: float = _option(1.0, "objective", "kto: weight of desirable examples")
    kto_undesirable_weight: float | None = _option(
        None,
        "objective",
        "kto: weight of undesirable examples; none: SACPO's n_desirable / n_undesirable",
    )
    bfpo_b1: float = _option(3.0, "objective", "bfpo: the constant b1 (the paper's 3)")
    bfpo_alpha: float = _option(0.5, "objective", "bfpo: the constant alpha (the paper's 0.5)")
    reference: ReferenceMode = _option(
        "in_step",
        "objective",
        "reference log-probs: run the frozen reference in every step, or one pass before "
        "training cached on disk (same losses)",
    )
    ref_cache_dir: str | None = _option(
        None, "objective", "cached reference log-probs; none: ~/.cache/safedpo_jax/reference"
    )
    logprob_chunk_size: int | None = _option(
        None,
        "objective",
        "positions per chunk of the chunked log-prob path; 0: full [2B, T, V] logits; none: "
        "automatic (full while a device's share is <= 32 MiB)",
    )
    # optimisation
    batch_size: int = _option(128, "optimisation", "pairs per optimizer step, over all devices")
    micro_batches: int = _option(
        1, "optimisation", "gradient-accumulation microbatches per step (must divide batch size)"
    )
    learning_rate: float = _option(1e-6, "optimisation", "peak learning rate")
    warmup_ratio: float = _option(0.03, "optimisation", "share of the steps in linear warmup")
    weight_decay: float = _option(0.05, "optimisation", "AdamW weight decay")
    adam_b1: float = _option(0.9, "optimisation", "AdamW beta1")
    adam_b2: float = _option(0.95, "optimisation", "AdamW beta2")
    adam_eps: float = _option(1e-8, "optimisation", "AdamW epsilon")
    max_grad_norm: float = _option(1.0, "optimisation", "global-norm clipping; 0 disables")
    epochs: int = _option(2, "optimisation", "passes over the training pairs")
    max_steps: int | None = _option(
        None, "optimisation", "stop after this many steps (wins over --epochs); none: epochs"
    )
    seed: int = _option(42, "optimisation", "shuffling and initialisation seed")
    # mesh and hosts
    mesh_data: int = _option(1, "mesh", "data-parallel axis size (-1: the remaining devices)")
    mesh_fsdp: int = _option(-1, "mesh", "fully-sharded axis size (-1: the remaining devices)")
    mesh_tensor: int = _option(1, "mesh", "tensor-parallel axis size (-1: the remaining devices)")
    distributed: bool = _option(
        False, "mesh", "call jax.distributed.initialize() (multi-host; auto-discovered on TPU)"
    )
    coordinator_address: str | None = _option(
        None, "mesh", "multi-host coordinator HOST:PORT (GPU clusters)"
    )
    num_processes: int | None = _option(None, "mesh", "multi-host: number of processes")
    process_id: int | None = _option(None, "mesh", "multi-host: this process's index")
    # output
    output_dir: str = _option(
        "runs/safedpo",
        "checkpoints",
        "where everything goes: config.json, data_summary.json, metrics.jsonl, tensorboard/, "
        "checkpoints/, hf/ (the exported policy)",
    )
    save_every: int = _option(500, "checkpoints", "steps between checkpoints")
    keep_checkpoints: int = _option(3, "checkpoints", "how many checkpoints to keep")
    export: bool = _option(
        True, "checkpoints", "write the final policy in Hugging Face format to OUTPUT_DIR/hf"
    )
    overwrite_output_dir: bool = _option(
        False,
        "checkpoints",
        "when OUTPUT_DIR holds a run, move it aside (OUTPUT_DIR.replaced-<time>) and start "
        "over; without it a matching run resumes and a different one stops",
    )
    log_every: int = _option(10, "logging", "steps between metric lines")
    eval_every: int = _option(
        0, "logging", "steps between held-out evaluations; 0: only at the end"
    )
    eval_batches: int | None = _option(
        None, "logging", "cap on held-out batches per evaluation; none: the whole split"
    )
    report_to: ReportTo = _option(
        "tensorboard",
        "logging",
        "where metrics go besides metrics.jsonl (TRL's spelling; process 0 only); wandb "
        "honours WANDB_PROJECT and WANDB_MODE=offline",
    )
    run_name: str | None = _option(
        None, "logging", "the run's name in Weights & Biases; none: OUTPUT_DIR's name"
    )

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
            (
                self.pack_length == 0 or self.pack_length >= self.max_length,
                f"pack_length ({self.pack_length}) must be 0 (off) or >= max_length "
                f"({self.max_length}), so that every sequence fits a row",
            ),
            (
                self.pack_length == 0 or self.objective == "preference",
                f"pack_length (packing) applies to --objective preference, not {self.objective}",
            ),
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


def _type_name(annotation: Any) -> str:
    """How `--help` names a field's type: ``int``, ``float or none``, ``choice``, ..."""
    args = get_args(annotation)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if args else [annotation]
    if get_origin(annotation) is Literal or any(get_origin(a) is Literal for a in inner):
        name = "choice"
    elif dict in {get_origin(a) or a for a in inner}:
        name = "path"
    else:
        name = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
    return f"{name} or none" if optional else name


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)


class _BoolFlag(argparse.Action):
    """``--flag`` / ``--no-flag`` (and, as the experiment runner spells it, ``--flag false``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        flag = option_strings[0]
        strings = [flag, "--no-" + flag.removeprefix("--")]
        super().__init__(strings, dest, nargs="?", type=_parse_bool, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        negated = option_string is not None and option_string.startswith("--no-")
        if negated and values is not None:
            parser.error(f"{option_string} takes no value, got {values!r}")
        setattr(namespace, self.dest, not negated if values is None else values)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Flags as ``--flag VALUE`` (``--flag, --no-flag`` for booleans), help wrapped at 100."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _BoolFlag):
            return ", ".join(action.option_strings)
        if action.option_strings and action.nargs != 0:
            return f"{action.option_strings[0]} {self._format_args(action, action.dest.upper())}"
        return super()._format_action_invocation(action)


DEFAULT_PRESET = "paper"

_USAGE = (
    "python -m safedpo_jax.train [--preset NAME] [--config FILE] [--FIELD VALUE ...]\n"
    "                                  [--print-config [{yaml,json}]]"
)
_DESCRIPTION = """\
Train a policy with SafeDPO (Kim et al., ICLR 2026), a DPO baseline, SFT, a reward or cost
model, KTO or BFPO, sharded over every visible device.

Settings apply in order: the preset (--preset, default 'paper'), then the --config file, then
the flags given here. --print-config writes the resolved settings in the --config format.

  python -m safedpo_jax.train --preset tiny --output-dir runs/tiny          # CPU, ~1 minute
  python -m safedpo_jax.train --model PATH_OR_HUB_ID --dataset data.jsonl \\
      --pairs safedpo --beta 0.1 --delta 10 --output-dir runs/mine
  python -m safedpo_jax.train --config run.yaml --max-steps 100"""


def _preset_help() -> str:
    lines = {
        "paper": "the paper's setup on alpaca-7b-reproduced",
        "safe-rlhf-score": "safe-rlhf's reward/cost-model scripts",
        "tiny": "a random tiny Llama on the embedded sample, for CPU",
    }
    known = ", ".join(f"{name} ({lines.get(name, 'see PRESETS')})" for name in PRESETS)
    return f"the base settings: {known} [default: {DEFAULT_PRESET}]"


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--preset``, ``--config``, ``--print-config`` and one flag per
    config field (``--field-name``), grouped as `GROUPS`, each with its field's help line,
    type, choices and the default preset's value."""
    parser = argparse.ArgumentParser(
        prog="python -m safedpo_jax.train",
        usage=_USAGE,
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
        epilog="Outputs under OUTPUT_DIR: config.json, metrics.jsonl (one JSON line per logged\n"
        "step), tensorboard/, checkpoints/ (relaunching the same command resumes), hf/ (the\n"
        "policy, loadable by transformers). Then: python -m safedpo_jax.evaluate --help.",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME", help=_preset_help())
    run.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML or JSON file of field: value settings (as --print-config writes them) "
        "applied over the preset; flags given here override it",
    )
    run.add_argument(
        "--print-config",
        nargs="?",
        const="yaml",
        choices=CONFIG_FORMATS,
        help="print the resolved settings (YAML with each field's help as a comment, or JSON) "
        "and exit",
    )
    hints = _hints()
    defaults = {**_field_defaults(), **PRESETS[DEFAULT_PRESET]}
    groups = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}
    for field in dataclasses.fields(TrainConfig):
        if "help" not in field.metadata:
            raise TypeError(
                f"TrainConfig.{field.name} has no help line: declare it as "
                f"{field.name}: TYPE = _option(DEFAULT, GROUP, HELP) (GROUP one of {list(GROUPS)})"
            )
        flag = "--" + field.name.replace("_", "-")
        kind, choices = _field_parser(hints[field.name])
        type_name = _type_name(hints[field.name])
        shown = f"default: {_show(defaults[field.name])}"
        if choices is None and type_name != "bool":
            shown = f"{type_name}; {shown}"
        metavar = None if choices is not None else type_name.split(" or ")[0].upper()
        helptext = f"{field.metadata['help']} [{shown}]"
        group = groups[field.metadata["group"]]
        if hints[field.name] is bool:
            group.add_argument(flag, dest=field.name, action=_BoolFlag, help=helptext,
                               default=argparse.SUPPRESS)  # fmt: skip
        else:
            group.add_argument(
                flag,
                dest=field.name,
                type=kind,
                choices=choices,
                metavar=metavar,
                default=argparse.SUPPRESS,
                help=helptext,
            )
    return parser


def _field_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


# ----------------------------------------------------------------------------- config files
CONFIG_FORMATS = ("yaml", "json")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The ``field: value`` settings of a YAML (``.yaml``/``.yml``) or JSON file, checked
    and converted to each field's type (a string such as ``1e-6`` or ``none`` is parsed
    as the command line would). A ``preset`` key names the base preset.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "run.yaml"
    >>> _ = p.write_text("preset: tiny\\nlearning_rate: 1e-4\\nremat: true\\n")
    >>> load_config_file(p)
    {'preset': 'tiny', 'learning_rate': 0.0001, 'remat': True}
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path}: not JSON (line {e.lineno}: {e.msg})") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: not YAML ({e})") from None
    else:
        raise ValueError(f"--config {path}: give a .yaml, .yml or .json file")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of field: value, got {data!r}")
    hints = _hints()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "preset":
            if value not in PRESETS:
                raise ValueError(
                    f"--config {path}: preset {value!r} unknown; known: {list(PRESETS)}"
                )
            out[key] = value
            continue
        if key not in hints:
            raise ValueError(f"--config {path}: {key!r} is not a TrainConfig field (see --help)")
        out[key] = _coerce(hints[key], value, f"--config {path}: {key}")
    return out


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    """``value`` as a field of type ``annotation``, or a ValueError naming ``where``."""
    kind, choices = _field_parser(annotation)
    if isinstance(value, str):
        try:
            value = kind(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"{where}: expected {_type_name(annotation)}, got {value!r}") from None
    allowed = set(get_args(annotation)) | {annotation}
    if value is None:
        ok = type(None) in allowed
    elif isinstance(value, bool):
        ok = bool in allowed
    elif isinstance(value, int):
        ok = bool(allowed & {int, float})
        value = float(value) if int not in allowed and float in allowed else value
    elif isinstance(value, float):
        ok = float in allowed
    elif isinstance(value, dict):
        ok = any((get_origin(a) or a) is dict for a in allowed)
    else:
        ok = isinstance(value, str) and (str in allowed or choices is not None)
    if not ok:
        raise ValueError(f"{where}: expected {_type_name(annotation)}, got {value!r}")
    return value


def format_config(config: TrainConfig, fmt: str = "yaml") -> str:
    """``config`` in the ``--config`` format: JSON, or YAML grouped as `GROUPS` with each
    field's help line as a comment. Read back with `load_config_file`, it gives ``config``.

    >>> text = format_config(from_preset("tiny"))
    >>> "# SafeDPO's safety margin Delta" in text, "delta: 10.0" in text
    (True, True)
    """
    if fmt == "json":
        return config.to_json() + "\n"
    if fmt != "yaml":
        raise ValueError(f"format_config: fmt must be one of {CONFIG_FORMATS}, got {fmt!r}")
    import textwrap

    import yaml

    lines = ["# python -m safedpo_jax.train --config THIS_FILE  (flags given after it win)"]
    values = dataclasses.asdict(config)
    fields = dataclasses.fields(TrainConfig)
    for group, about in GROUPS.items():
        lines += ["", f"# ---- {group}: {about}"]
        for field in (f for f in fields if f.metadata["group"] == group):
            lines += textwrap.wrap(field.metadata["help"], 98, initial_indent="# ",
                                   subsequent_indent="# ")  # fmt: skip
            dumped = yaml.safe_dump({field.name: values[field.name]}, sort_keys=False, width=1000)
            lines += dumped.rstrip("\n").splitlines()
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parses ``argv`` into a `TrainConfig`: the preset, then ``--config FILE``, then the
    explicit flags.

    >>> cfg, _ = parse_args(["--preset", "tiny", "--max-steps", "3", "--ref-model", "none"])
    >>> cfg.max_steps, cfg.ref_model, cfg.dataset
    (3, None, 'sample')
    >>> parse_args(["--preset", "tiny", "--remat"])[0].remat
    True
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    flags = {name: getattr(ns, name) for name in names if hasattr(ns, name)}
    try:
        from_file = load_config_file(ns.config) if ns.config else {}
        preset = ns.preset if _given(argv, "preset") else from_file.pop("preset", ns.preset)
        from_file.pop("preset", None)
        return from_preset(preset, **{**from_file, **flags}), ns
    except (ValueError, TypeError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def _given(argv: Sequence[str], name: str) -> bool:
    """Whether ``--name`` appeared explicitly."""
    flag = "--" + name.replace("_", "-")
    return any(a == flag or a.startswith(flag + "=") for a in argv)
