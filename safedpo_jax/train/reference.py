"""Reference log-probs computed once, cached on disk, reused by later runs.

With ``reference="cached"`` the trainer runs the frozen reference over every pair of a
dataset before training (in order, in global batches sharded like training), stores the
``[N, 2]`` float32 log-probs under ``ref_cache_dir/<key>.npy`` and frees the reference.
Each training batch then looks its rows up by ``pair_index``.

The key hashes everything the numbers depend on: the reference model (its config and
the headers, sizes and edge bytes of its weight files, or the seed and config of a
random initialisation), the tokenised dataset (every token id and loss mask), the
compute dtype and the log-prob path. A changed model or dataset therefore never reuses a
stale cache; an identical one (another run, another output directory) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from safedpo_jax.data.batches import BatchIterator
from safedpo_jax.data.tokenization import PairDataset

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/safedpo_jax/reference").expanduser()
_EDGE_BYTES = 1 << 20


def model_fingerprint(path_or_id: str | None, *, random_init: dict[str, Any] | None = None) -> str:
    """A hash identifying reference weights.

    For a local directory: ``config.json`` plus, for every ``*.safetensors`` file, its
    name, size, header and first and last MiB (enough to tell checkpoints apart without
    reading tens of GB). For a Hub id (not yet downloaded here): the id itself. For a
    random initialisation: ``random_init`` (config and seed).
    """
    h = hashlib.sha256()
    if path_or_id is None:
        h.update(json.dumps(random_init, sort_keys=True, default=str).encode())
        return h.hexdigest()
    path = Path(path_or_id)
    if not path.is_dir():
        h.update(f"hub:{path_or_id}".encode())
        return h.hexdigest()
    h.update((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        size = weights.stat().st_size
        h.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(header_len, 1 << 26)))
            f.seek(0)
            h.update(f.read(_EDGE_BYTES))
            f.seek(max(0, size - _EDGE_BYTES))
            h.update(f.read(_EDGE_BYTES))
    return h.hexdigest()


def dataset_fingerprint(dataset: PairDataset) -> str:
    """A hash of every token id, prompt length and length of a tokenised pair dataset."""
    h = hashlib.sha256()
    h.update(f"{len(dataset)}:{dataset.max_length}:{dataset.pad_id}:{dataset.eos_id}".encode())
    h.update(np.ascontiguousarray(dataset.prompt_lengths).tobytes())
    h.update(np.ascontiguousarray(dataset.lengths).tobytes())
    for chosen, rejected in dataset.sequences:
        h.update(np.ascontiguousarray(chosen).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(rejected).tobytes())
        h.update(b";")
    return h.hexdigest()


def cache_key(model_fp: str, dataset_fp: str, *, dtype: str, chunk_size: int | None) -> str:
    """The cache file's stem."""
    text = f"model={model_fp};data={dataset_fp};dtype={dtype};chunk={chunk_size};v=1"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compute_reference_logps(
    dataset: PairDataset,
    logps_fn: Callable[[Any], jax.Array],
    to_device: Callable[[Any], Any],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[N, 2]`` float32 log-probs of every pair, by one in-order pass.

    ``to_device`` places a host `PairBatch` (this process's rows) on the mesh;
    ``logps_fn`` maps it to global ``[B, 2]`` log-probs. Every process ends up with the
    full array.
    """
    out = np.full((len(dataset), 2), np.nan, np.float32)
    iterator = BatchIterator(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_epochs=1,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for batch in iterator:
        logps = logps_fn(to_device(batch))
        index = multihost_utils.process_allgather(batch.pair_index, tiled=True)
        values = np.asarray(multihost_utils.process_allgather(logps, tiled=True))
        real = index >= 0
        out[index[real]] = values[real]
        if progress is not None:
            progress(int(real.sum()))
    if np.isnan(out).any():
        missing = int(np.isnan(out).any(axis=1).sum())
        raise RuntimeError(
            f"reference pass left {missing} of {len(dataset)} pairs without log-probs"
        )
    if not np.isfinite(out).all():
        raise FloatingPointError("the reference produced non-finite log-probs")
    return out


def load_or_compute(
    cache_dir: str | Path | None,
    key: str,
    compute: Callable[[], np.ndarray],
    *,
    expected_rows: int,
) -> tuple[np.ndarray, Path, bool]:
    """The cached array for ``key`` or, failing that, ``compute()`` saved under it.

    Returns ``(logps, path, hit)``. Only process 0 writes (to a temporary file, then an
    atomic rename), so a crash never leaves a truncated cache behind; every process waits
    for the file before returning.
    """
    directory = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
    path = directory / f"{key}.npy"
    if path.exists():
        try:
            logps = np.load(path)
            if logps.shape == (expected_rows, 2) and np.isfinite(logps).all():
                return logps, path, True
            log.warning("ignoring cached reference log-probs %s: shape %s", path, logps.shape)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable reference cache %s (%s)", path, e)
    logps = compute()
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, logps)
        os.replace(tmp, path)
    multihost_utils.sync_global_devices(f"reference-cache-{key}")
    return logps, path, False


def cache_reference(
    setup: Any,
    datasets: dict[str, PairDataset],
    *,
    reference_path: str | None,
    random_init: dict[str, Any] | None,
    cache_dir: str | Path | None,
    batch_size: int,
    dtype: str,
    chunk_size: int | None,
    announce: Callable[[str], None] | None = None,
    reference_tag: str | None = None,
) -> dict[str, np.ndarray]:
    """Cached reference log-probs ``{split: [N, 2]}`` of each dataset, then frees the reference.

    ``setup`` is the run's `safedpo_jax.train.setup.StepSetup`: its reference model runs over
    each dataset once (through the same log-prob path as an in-step reference) unless the
    cache already holds the result; afterwards ``setup.reference`` is None, so the
    reference's memory is released before training starts. ``reference_tag`` names what
    else the reference's weights depend on (a LoRA run's starting adapter) and joins the key.
    """
    fingerprint = model_fingerprint(reference_path, random_init=random_init)
    if reference_tag is not None:
        fingerprint = hashlib.sha256(f"{fingerprint}:{reference_tag}".encode()).hexdigest()
    logps_fn = setup.reference_logps()
    reference = setup.reference
    to_device = lambda b: setup.objective.device_batch(b, setup.mesh, None)  # noqa: E731
    cached: dict[str, np.ndarray] = {}
    for split, ds in datasets.items():
        key = cache_key(fingerprint, dataset_fingerprint(ds), dtype=dtype, chunk_size=chunk_size)
        values, path, hit = load_or_compute(
            cache_dir,
            key,
            lambda ds=ds: compute_reference_logps(
                ds, lambda b: logps_fn(reference, b), to_device, batch_size=batch_size
            ),
            expected_rows=len(ds),
        )
        cached[split] = values
        if announce is not None:
            announce(f"reference log-probs ({split}): {'reused' if hit else 'computed'} {path}")
    setup.reference = None  # the reference's memory is free from here on
    return cached
