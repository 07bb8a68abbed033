"""The output directory of a run: one launch at a time, and only the run it belongs to.

`claim` is what a launch does before it touches an output directory:

1. **Lock.** Process 0 takes an exclusive ``fcntl.flock`` on ``OUTPUT_DIR/.lock`` and holds
   it for the run's life (the kernel drops it when the process ends, ``kill -9``
   included). A second launch on the same directory stops at once with `RunDirLocked`,
   naming the holder (pid, host, start time), before it reads or writes anything else.
2. **Identity.** If the directory already holds a run (``config.json``, ``checkpoints/``
   or ``metrics.jsonl``), its ``config.json`` is compared with this launch's
   configuration. Only the fields in `MAY_DIFFER` may differ: they change where and how
   often things are written, or how the arithmetic is laid out over devices and hosts,
   never the numbers of the steps taken or to come. Any other difference (beta, delta,
   learning rate, ``max_steps`` or ``epochs`` -- which set the cosine schedule's length
   --, the model, the data, the dtypes, ...) stops the launch with `RunDirMismatch`,
   which lists each differing field with both values and the ways out: another
   ``--output-dir``, or ``--overwrite-output-dir true``. Nothing in the directory has been
   changed at that point.
3. **Overwrite.** With ``overwrite_output_dir`` a directory holding a run (matching or
   not) is not deleted: its contents are moved aside, into the sibling
   ``OUTPUT_DIR.replaced-<UTC time>``, and the new run starts empty.
4. **Record.** Only then is ``config.json`` written (to a temporary file, then renamed).

Every process runs the comparison (they read the same file); only process 0 locks,
moves and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
RUN_MARKERS = (CONFIG_FILE, "checkpoints", "metrics.jsonl")

# Fields a relaunch may change and still resume: output placement and cadence, the
# device mesh and the host set-up, where the reference cache lives, and this flag.
MAY_DIFFER = frozenset(
    {
        "output_dir",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "eval_every",
        "eval_batches",
        "export",
        "mesh_data",
        "mesh_fsdp",
        "mesh_tensor",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "ref_cache_dir",
        "overwrite_output_dir",
    }
)


class RunDirError(RuntimeError):
    """The output directory cannot be used by this launch (nothing in it was changed)."""


class RunDirLocked(RunDirError):
    """Another launch holds the output directory's lock."""


class RunDirMismatch(RunDirError):
    """The output directory holds a run with a different configuration."""


def differing_fields(on_disk: Mapping[str, Any], launch: Mapping[str, Any]) -> list[str]:
    """The fields outside `MAY_DIFFER` whose values differ, sorted.

    A field missing on one side counts as equal when the other side holds the
    `TrainConfig` default (a config.json written before the field existed).

    >>> differing_fields({"beta": 0.1, "save_every": 10}, {"beta": 0.2, "save_every": 5})
    ['beta']
    """
    from safedpo_jax.train.config import TrainConfig

    defaults = {
        f.name: json.loads(json.dumps(f.default))
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    missing = object()
    out = []
    for name in sorted(set(on_disk) | set(launch)):
        if name in MAY_DIFFER:
            continue
        a = on_disk.get(name, defaults.get(name, missing))
        b = launch.get(name, defaults.get(name, missing))
        if a != b:
            out.append(name)
    return out


def holds_run(directory: str | Path) -> bool:
    """Whether ``directory`` holds (part of) a run: a config, checkpoints or metrics."""
    return any((Path(directory) / name).exists() for name in RUN_MARKERS)


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``directory/.lock``, held until `release`."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunDirLocked(
                f"{directory} is in use by another launch ({holder}); wait for it to end "
                "or give another --output-dir"
            ) from None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(self._fd, 0)
        os.pwrite(
            self._fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0
        )

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_identity(directory: str | Path, config: Any) -> bool:
    """Raises `RunDirMismatch` unless ``directory``'s run may be resumed by ``config``.

    Returns whether the directory holds a run that must be moved aside first: any run,
    matching or not, when ``config.overwrite_output_dir`` is set. Reads only.
    """
    directory = Path(directory)
    if not holds_run(directory):
        return False
    if config.overwrite_output_dir:
        return True
    launch = json.loads(config.to_json())
    recorded = directory / CONFIG_FILE
    way_out = (
        "give another --output-dir, or --overwrite-output-dir true to move the old run "
        f"aside (to {directory}.replaced-<time>) and start over"
    )
    if not recorded.exists():
        problem = f"{directory} holds checkpoints or metrics but no {CONFIG_FILE}"
    else:
        try:
            on_disk = json.loads(recorded.read_text())
        except (OSError, ValueError) as e:
            raise RunDirMismatch(f"{recorded} is unreadable ({e}); {way_out}") from e
        diff = differing_fields(on_disk, launch)
        if not diff:
            return False
        shown = "; ".join(f"{n}: {on_disk.get(n)!r} -> {launch.get(n)!r}" for n in diff)
        problem = f"{directory} holds a run with a different configuration ({shown})"
    raise RunDirMismatch(f"{problem}. Nothing was changed; {way_out}.")


def move_aside(directory: Path) -> Path:
    """Moves everything in ``directory`` except the lock into a new sibling; returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory.with_name(f"{directory.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = directory.with_name(f"{directory.name}.replaced-{stamp}-{n}")
        n += 1
    target.mkdir()
    for entry in directory.iterdir():
        if entry.name != LOCK_FILE:
            entry.rename(target / entry.name)
    return target


@contextlib.contextmanager
def claim(config: Any, *, primary: bool | None = None) -> Iterator[Path]:
    """Locks, checks and records ``config.output_dir`` for this run (see the module doc).

    Yields the directory; the lock is held until the block ends.
    """
    primary = jax.process_index() == 0 if primary is None else primary
    directory = Path(config.output_dir)
    lock = None
    if primary:
        directory.mkdir(parents=True, exist_ok=True)
        lock = _Lock(directory)
    try:
        replace = check_identity(directory, config)
        multi = jax.process_count() > 1
        if multi:
            multihost_utils.sync_global_devices("run-dir-checked")
        if primary:
            if replace:
                moved = move_aside(directory)
                print(f"moved the previous run in {directory} to {moved}", flush=True)
            _write_text_atomic(directory / CONFIG_FILE, config.to_json())
        if multi:
            multihost_utils.sync_global_devices("run-dir-recorded")
        yield directory
    finally:
        if lock is not None:
            lock.release()
