"""Metric output: one JSON object per logged step in ``metrics.jsonl``, TensorBoard and,
optionally, Weights & Biases (`MetricsLog.for_run`, ``--report-to``).

Only the primary process (``jax.process_index() == 0``) writes; on other processes a
`MetricsLog` is a no-op. On resumption the records after the restored step are removed
first, from ``metrics.jsonl`` and from the TensorBoard event files alike, so a resumed
run's output holds each step once and reads exactly like an uninterrupted run's. A final
line torn by a crash mid-write is dropped there too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends ``{"step": s, **metrics}`` lines to ``output_dir/metrics.jsonl``.

    The TensorBoard writer (``output_dir/tensorboard``) opens at the first `write`, after
    any `truncate_after`, so a new event file never sits beside events it would repeat.

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
        self.tensorboard_dir = Path(output_dir) / "tensorboard"
        self.enabled = enabled
        self._use_tb = tensorboard
        self._tb: Any = None
        self._wandb: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # TensorBoard's writer opens lazily (after a resume's truncation); W&B now.
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
        if self._use_tb and self._tb is None:
            from tensorboardX import SummaryWriter

            # A unique suffix: tensorboardX names files by the second, and a writer that
            # reused an earlier launch's name would overwrite its events.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self._tb = SummaryWriter(str(self.tensorboard_dir), filename_suffix=suffix)
        if self._tb is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._wandb is not None:
            scalars = {k: v for k, v in record.items() if k != "step"}
            self._wandb.log(scalars, step=int(step))

    def read(self) -> list[dict[str, Any]]:
        """The records on disk; a torn last line (a crash mid-write) is left out."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                if i != len(lines) - 1:
                    raise ValueError(f"{self.path}: line {i + 1} is not JSON") from None
                log.warning("%s: dropping a torn last line %r", self.path, line[:80])
        return records

    def truncate_after(self, step: int) -> None:
        """Drops the records of steps after ``step`` (those a resumed run will redo).

        Both ``metrics.jsonl`` and every TensorBoard event file are rewritten (to a
        temporary file, then renamed).
        """
        if not self.enabled:
            return
        if self.path.exists():
            kept = [r for r in self.read() if r["step"] <= step]
            _replace(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        if self.tensorboard_dir.is_dir():
            for events in sorted(self.tensorboard_dir.glob("events.out.tfevents.*")):
                truncate_events(events, step)

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


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """``(raw record, payload)`` of each complete TFRecord in ``path`` (a torn tail is skipped).

    A TFRecord is: uint64 length, uint32 CRC of it, the payload, uint32 CRC of that.
    """
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            break
        yield data[pos:end], data[pos + 12 : pos + 12 + length]
        pos = end


def read_events(path: str | Path) -> list[Any]:
    """The TensorBoard ``Event`` protos of one event file, in order."""
    from tensorboardX.proto import event_pb2

    events = []
    for _, payload in _records(Path(path)):
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
    return events


def read_scalars(tensorboard_dir: str | Path) -> list[tuple[str, int, float]]:
    """Every scalar ``(tag, step, value)`` in the event files of ``tensorboard_dir``."""
    out = []
    for path in sorted(Path(tensorboard_dir).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                out.append((value.tag, int(event.step), float(value.simple_value)))
    return out


def truncate_events(path: Path, step: int) -> None:
    """Rewrites the event file ``path`` without the summaries of steps after ``step``."""
    from tensorboardX.proto import event_pb2

    kept, dropped = [], 0
    for raw, payload in _records(path):
        event = event_pb2.Event()
        event.ParseFromString(payload)
        if event.HasField("summary") and event.step > step:
            dropped += 1
        else:
            kept.append(raw)
    if dropped or sum(map(len, kept)) != path.stat().st_size:
        _replace(path, b"".join(kept))


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy / jax scalars become Python numbers."""
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        return value.item()
    return value
