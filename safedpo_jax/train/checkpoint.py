"""Orbax checkpoints of the train state plus the data position, with safe resumption.

A checkpoint at step ``s`` is a directory ``checkpoints/<s>/`` holding two items:

- ``state``: the train-state pytree (parameters, optimizer state, step, RNG), saved and
  restored shard by shard in its `NamedSharding`s;
- ``meta``: JSON with the data iterator's position and anything else the loop records.

Orbax writes each checkpoint into a temporary directory and renames it only once every
process has finished, so a run killed mid-save (``kill -9`` included) leaves no
half-written step behind. If the newest complete step cannot be restored anyway (a file
lost or truncated afterwards), `Checkpointer.restore_latest` reports it and falls back to
the one before.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves every ``save_every`` steps (and on request), keeping the last ``keep``.

    Saving is asynchronous: `save` returns once the arrays are copied off the devices
    and the files are written in the background (`wait` blocks until they are done).
    """

    def __init__(
        self, directory: str | Path, *, save_every: int, keep: int, use_async: bool = True
    ):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=save_every,
            enable_async_checkpointing=use_async,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        """Complete checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Saves ``state`` and ``meta`` at ``step`` if it is a save step (or ``force``)."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state (placed in ``abstract_state``'s shardings) and meta saved at ``step``."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.meta)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """The newest restorable checkpoint as ``(step, state, meta)``, or None if there is none.

        A checkpoint that fails to restore is reported (a warning with the reason), moved
        to ``damaged/<step>`` beside the others (kept for inspection, out of the way of
        the steps the resumed run will save again) and the next older one is tried.
        """
        damaged: list[int] = []
        found = None
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means "damaged"
                reason = str(e).splitlines()[0][:300] if str(e) else ""
                log.warning(
                    "checkpoint %s is damaged and was skipped (%s: %s); trying an older one",
                    self.directory / str(step),
                    type(e).__name__,
                    reason,
                )
                damaged.append(step)
                continue
            found = (step, state, meta)
            break
        if damaged:
            if jax.process_index() == 0:
                for step in damaged:
                    target = self.directory / "damaged" / f"{step}-{time.time_ns()}"
                    target.parent.mkdir(exist_ok=True)
                    (self.directory / str(step)).rename(target)
            multihost_utils.sync_global_devices("checkpoint-damaged-moved")
            self._manager.reload()
        return found

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) describing the arrays of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
