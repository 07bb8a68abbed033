"""Orbax checkpoints of the train state plus the data position, with safe resumption.

A checkpoint at step ``s`` is a directory ``checkpoints/<s>/`` holding two items:

- ``state``: the train-state pytree (parameters, optimizer state, step, RNG), saved and
  restored shard by shard in its `NamedSharding`s;
- ``meta``: JSON with the data iterator's position and anything else the loop records.

Orbax writes each checkpoint into a temporary directory and renames it only once every
process has finished, so a run killed mid-save (``kill -9`` included) leaves no
half-written step behind. If the newest complete step cannot be restored anyway (a file
lost or truncated afterwards), `Checkpointer.restore_latest` reports it and falls back to
the one before. "Damaged" means unreadable: a checkpoint that reads fine but holds arrays
of other shapes or dtypes than this run's state (another model, another run) is never
moved; `restore_latest` stops with `CheckpointMismatch` instead.

A write that fails (a full disk, say) raises `CheckpointWriteError` naming the step and
the complete checkpoints still on disk; the failed step's temporary directory never
becomes a checkpoint and is cleaned up at the next start.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the complete ones on disk are intact."""


class CheckpointMismatch(RuntimeError):
    """A readable checkpoint holds another state layout than this run's (another run)."""


def _unstacked_layers(tree: Any, path: tuple[str, ...] = ()) -> str | None:
    """The path of a per-layer ``layers/0, layers/1, ...`` subtree (the v0.1 layout), or None.

    The decoder now keeps its blocks stacked on a leading layer axis (``layers/mlp/...``
    of shape ``[L, ...]``); checkpoints written before hold one subtree per layer.
    """
    if not isinstance(tree, dict):
        return None
    for key, child in tree.items():
        here = (*path, str(key))
        layered = str(key) == "layers" and isinstance(child, dict) and child
        if layered and all(str(k).isdigit() for k in child):
            return "/".join(here)
        found = _unstacked_layers(child, here)
        if found is not None:
            return found
    return None


def _layout(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """The sorted ``(shape, dtype)`` of every array leaf of ``tree``."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return sorted((tuple(x.shape), str(x.dtype)) for x in leaves if hasattr(x, "shape"))


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
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._pending: int | None = None

    def _write_error(self, e: OSError, step: int | None) -> CheckpointWriteError:
        reason = "no space left on device" if e.errno == errno.ENOSPC else str(e)
        return CheckpointWriteError(
            e.errno,
            f"could not write checkpoint step {step} in {self.directory}: {reason}; "
            f"the complete checkpoints on disk (steps {self.steps()}) are intact and a "
            "relaunch resumes from the newest",
        )

    def steps(self) -> list[int]:
        """Complete checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Saves ``state`` and ``meta`` at ``step`` if it is a save step (or ``force``).

        Raises `CheckpointWriteError` if this write, or the previous asynchronous one,
        failed.
        """
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=force,
            )
        except OSError as e:
            failed = self._pending if self._pending is not None else step
            self._pending = None
            raise self._write_error(e, failed) from e
        if saved:
            self._pending = step
        return saved

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
        the steps the resumed run will save again) and the next older one is tried. A
        checkpoint whose recorded arrays differ in shape or dtype from ``abstract_state``
        is not damaged but another run's: `CheckpointMismatch`, and nothing is moved.
        """
        damaged: list[int] = []
        found = None
        expected = _layout(abstract_state)
        for step in reversed(self.steps()):
            try:
                on_disk = _layout(self._manager.item_metadata(step)["state"].tree)
            except Exception:  # noqa: BLE001 - unreadable metadata: restore decides below
                on_disk = None
            if on_disk is not None and on_disk != expected:
                old = _unstacked_layers(self._manager.item_metadata(step)["state"].tree)
                if old is not None:
                    raise CheckpointMismatch(
                        f"checkpoint {self.directory / str(step)} has the unstacked per-layer "
                        f"layout of safedpo_jax v0.1 ({old}/0, {old}/1, ...), which this "
                        "version (blocks stacked on a layer axis) cannot resume: finish or "
                        "export that run with v0.1 (HF / PEFT exports load here), or start "
                        "a fresh output directory; nothing was moved"
                    )
                raise CheckpointMismatch(
                    f"checkpoint {self.directory / str(step)} is readable but holds another "
                    f"state ({len(on_disk)} arrays, this run has {len(expected)}, or other "
                    "shapes/dtypes): it belongs to another run or model; nothing was moved"
                )
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
        """Blocks until every pending asynchronous save is on disk.

        Raises `CheckpointWriteError` if one failed.
        """
        try:
            self._manager.wait_until_finished()
        except OSError as e:
            failed, self._pending = self._pending, None
            raise self._write_error(e, failed) from e
        self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def abstract_like(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) describing the arrays of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
