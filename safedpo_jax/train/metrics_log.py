"""Metric output: one JSON object per logged step in ``metrics.jsonl``, and TensorBoard.

Only the primary process (``jax.process_index() == 0``) writes; on other processes a
`MetricsLog` is a no-op. On resumption the lines after the restored step are removed
first, so a resumed run's file reads exactly like an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
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

    def __init__(self, output_dir: str | Path, *, enabled: bool, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

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


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy / jax scalars become Python numbers."""
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        return value.item()
    return value
