"""LoRA runs: adapters from a `TrainConfig`, base fingerprints in checkpoints, adapter export.

The training side needs no LoRA branch: `safedpo_jax.models.lora.split` (used by
`safedpo_jax.train.setup.setup_step`) makes the adapters the trained ``params`` and puts
the frozen base in ``rest``; the default reference is then the same graph and base with
a frozen copy of the adapters' initial values (the bare base for fresh adapters, base plus
the SFT adapter with ``lora_adapter``), so every objective trains adapters unchanged and
only adapters have optimizer state. This module wires the config to those pieces:

- `lora_config`: the `LoRAConfig` a run asks for (None: full fine-tuning);
- `attach`: fresh adapters, or a PEFT adapter to start from, on the built policy;
- `checkpoint_meta` / `check_resume`: the base's fingerprint beside each checkpoint and
  its check on resume (a checkpoint of adapters means nothing on another base);
- `reference_tag`: what the cached reference log-probs must also be keyed by;
- `export_adapter`: ``OUTPUT_DIR/adapter`` in PEFT's format.

>>> from safedpo_jax.train.config import from_preset
>>> lora_config(from_preset("tiny", lora_rank=4, lora_alpha=8.0)).scale
2.0
>>> lora_config(from_preset("tiny")) is None
True
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from safedpo_jax.models import CausalLM, Model, lora
from safedpo_jax.train.config import TrainConfig


def targets_of(text: str) -> tuple[str, ...] | str:
    """``lora_targets``: comma-separated projection names, else a regex.

    >>> targets_of("q_proj, v_proj")
    ('q_proj', 'v_proj')
    >>> targets_of(r"model\\.layers\\.[01]\\..*")
    'model\\\\.layers\\\\.[01]\\\\..*'
    """
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if names and all(n in lora.DEFAULT_TARGETS for n in names):
        return names
    if re.fullmatch(r"[A-Za-z_]+(,[A-Za-z_ ]+)*", text.strip()):
        raise ValueError(
            f"lora_targets {text!r}: names must be among {lora.DEFAULT_TARGETS} "
            "(or give a regex over PEFT module names)"
        )
    return text


def lora_config(config: TrainConfig) -> lora.LoRAConfig | None:
    """The adapters a run trains (None: every weight trains); ``lora_adapter`` wins."""
    if config.lora_adapter is not None:
        adapter = lora.read_peft_config(config.lora_adapter)
        if config.lora_rank not in (0, adapter.rank):
            raise ValueError(
                f"lora_rank {config.lora_rank} differs from the rank {adapter.rank} of "
                f"lora_adapter {config.lora_adapter}"
            )
        return adapter
    if config.lora_rank == 0:
        return None
    return lora.LoRAConfig(
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        targets=targets_of(config.lora_targets),
        use_rslora=config.lora_rslora,
        dropout=config.lora_dropout,
    )


def attach(config: TrainConfig, policy: Any, mesh: Mesh) -> Any:
    """``policy`` with the run's adapters (fresh, or loaded from ``lora_adapter``), in place."""
    cfg = lora_config(config)
    if cfg is None:
        return policy
    if config.lora_adapter is not None:
        lora.load_peft_adapter(policy, config.lora_adapter, mesh=mesh)
    else:
        lora.add_lora(policy, cfg, rngs=nnx.Rngs(config.seed + 1), mesh=mesh)
    return policy


def checkpoint_meta(policy: Model) -> dict[str, Any]:
    """``{"base_fingerprint": ...}`` when ``policy`` trains adapters, else ``{}``."""
    module = policy.merge()
    if not lora.has_adapters(module):
        return {}
    return {"base_fingerprint": lora.base_fingerprint(module)}


def check_resume(meta: dict[str, Any], policy: Model) -> None:
    """Raises when a restored adapter checkpoint was trained on another base."""
    saved = meta.get("base_fingerprint")
    if saved is None:
        return
    lora.check_base_fingerprint(saved, lora.base_fingerprint(policy.merge()))


def reference_tag(config: TrainConfig) -> str | None:
    """A hash of the starting adapter (part of the reference under LoRA), or None."""
    if config.lora_adapter is None:
        return None
    return lora.adapter_fingerprint(config.lora_adapter)


def export_adapter(config: TrainConfig, module: Any, output_dir: Path) -> tuple[Path | None, Any]:
    """Writes ``output_dir/adapter`` (PEFT) when a causal LM ``module`` has adapters.

    Returns ``(adapter path or None, the module to export in full)``: the merged weights
    (`safedpo_jax.models.lora.merged`) under LoRA, else ``module`` itself. Score models
    trained with adapters export merged only (PEFT's score-head layout is not written).
    """
    if not lora.has_adapters(module):
        return None, module
    if not isinstance(module, CausalLM):
        return None, lora.merged(module)
    cfg = lora_config(config)
    path = lora.save_peft_adapter(
        module, Path(output_dir) / "adapter", config=cfg, base_model=config.model
    )
    return path, lora.merged(module)
