"""Metric output: one JSON object per logged step in ``metrics.jsonl``, TensorBoard and,
optionally, Weights & Biases (`MetricsLog.for_run`, ``--report-to``).

Only the primary process (``jax.process_index() == 0``) writes; on other processes a
`MetricsLog` is a no-op. On resumption the lines after the restored step are removed
first, so a resumed run's file reads exactly like an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends ``{"step": s, **metrics}`` lines to ``output_dir/metrics.jsonl``.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> log = MetricsLog(d, enabled=True, tensorboard=False)
    >>> log.write(1, {"loss": 0.5}); log.write(2, {"loss": 0.25}); log.truncate_after(1)
    >>> log.read()
    [{'step': 1, 'loss': 0.5}]
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
    ):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._wandb: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            if wandb is not None:
                self._wandb = _start_wandb(Path(output_dir), wandb)

    @classmethod
    def for_run(cls, config: Any, output_dir: str | Path, *, enabled: bool) -> MetricsLog:
        """The log a `TrainConfig` asks for: ``report_to`` in tensorboard / wandb / all /
        none (metrics.jsonl always); the W&B run is named ``run_name`` (else the output
        directory's name) and holds the whole config."""
        report_to = config.report_to
        wandb = None
        if report_to in ("wandb", "all"):
            wandb = {
                "name": config.run_name or Path(output_dir).resolve().name,
                "config": dataclasses.asdict(config),
            }
        return cls(
            output_dir,
            enabled=enabled,
            tensorboard=report_to in ("tensorboard", "all"),
            wandb=wandb,
        )

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._wandb is not None:
            scalars = {k: v for k, v in record.items() if k != "step"}
            self._wandb.log(scalars, step=int(step))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops the records of steps after ``step`` (those a resumed run will redo)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


WANDB_ID_FILE = "wandb_run_id"


def _start_wandb(output_dir: Path, settings: Mapping[str, Any]) -> Any:
    """A W&B run for ``output_dir``: the project from ``WANDB_PROJECT`` (default
    safedpo_jax), files under ``output_dir``, and one run id kept in ``output_dir`` so a
    resumed training run continues the same W&B run. ``WANDB_MODE=offline`` logs without
    a network (``wandb sync`` uploads later)."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError(
            "--report-to wandb needs the wandb package: pip install wandb "
            "(or pick --report-to tensorboard / none)"
        ) from None
    id_file = output_dir / WANDB_ID_FILE
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "safedpo_jax"),
        name=settings["name"],
        config=dict(settings["config"]),
        dir=str(output_dir),
        id=run_id,
        resume="allow",
    )


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy / jax scalars become Python numbers."""
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        return value.item()
    return value
