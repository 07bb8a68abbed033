"""Reference log-probs computed once, cached on disk, reused by later runs.

With ``reference="cached"`` the trainer runs the frozen reference over every pair of a
dataset before training (in order, in global batches sharded like training), stores the
``[N, 2]`` float32 log-probs under ``ref_cache_dir/<key>.npy`` and frees the reference.
Each training batch then looks its rows up by ``pair_index``.

The key (`cache_key`) hashes an explicit dict of every fact the numbers depend on
(`cache_facts`): the reference weights (`model_fingerprint`: every byte of every weight
file, and the Hub revision for a Hub id, or the seed and config of a random
initialisation), the parameter and compute dtypes, the attention implementation, the
default matmul precision, the log-prob path (full or chunked, and what decides an
automatic choice), the tokenizer, template, maximum length, pair construction, the
dataset's name, configuration and split, the tokenised data itself (every token id and
mask, `dataset_fingerprint`) and `CACHE_FORMAT_VERSION`. A run that differs in any of
them computes its own cache; an identical one (another run, another output directory)
reuses it.

Each ``<key>.npy`` has a sidecar ``<key>.json`` holding its byte length and SHA-256 (and
the facts, for inspection). A file whose length or checksum does not match, or without
its sidecar, is reported and recomputed, never used. Both files are written to a
temporary name, flushed to disk and renamed, so a crash or a full disk leaves either the
complete old pair or nothing; a failed write raises `CacheWriteError`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from safedpo_jax import costs
from safedpo_jax.data.batches import BatchIterator
from safedpo_jax.data.tokenization import PairDataset

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/safedpo_jax/reference").expanduser()
# Bump when the cache's layout or meaning changes: older files then stop matching.
CACHE_FORMAT_VERSION = 2
_READ_BLOCK = 1 << 24


class CacheWriteError(OSError):
    """Writing a reference cache failed (e.g. a full disk); earlier cache files are intact."""


def _hash_file(h: Any, path: Path) -> None:
    """Feeds the name, size and every byte of ``path`` (streamed) into ``h``."""
    h.update(f"{path.name}:{path.stat().st_size};".encode())
    with path.open("rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)


def model_fingerprint(
    path_or_id: str | None,
    *,
    random_init: Mapping[str, Any] | None = None,
    resolve: Callable[[str], Path] | None = None,
) -> str:
    """A SHA-256 identifying reference weights, from every byte of them.

    - A local directory: ``config.json`` and every byte of every ``*.safetensors`` file
      (and the index), streamed. Cost: SHA-256 runs at about 1.5 GB/s on one core of the
      2-core AMD EPYC development machine (a 300 MB file in the page cache), so the
      13.5 GB of a bf16 7B checkpoint take about 9 s (more when the files must come off
      a cold disk), small next to a reference pass over the data.
    - A Hub id: ``resolve(id)`` must give the local snapshot (the trainer passes the
      loader's resolver, which has already downloaded it to build the model); the
      fingerprint covers the id, the snapshot's revision (its directory name, a commit
      hash) and every byte, as for a local directory.
    - None (a random initialisation): ``random_init`` (config and seed).

    >>> model_fingerprint(None, random_init={"seed": 0}) == model_fingerprint(
    ...     None, random_init={"seed": 1})
    False
    """
    h = hashlib.sha256()
    if path_or_id is None:
        h.update(json.dumps(random_init, sort_keys=True, default=str).encode())
        return h.hexdigest()
    path = Path(path_or_id).expanduser()
    if not path.is_dir():
        if resolve is None:
            raise ValueError(
                f"model_fingerprint: {path_or_id!r} is not a local directory; pass resolve= "
                "to find its Hub snapshot"
            )
        path = Path(resolve(str(path_or_id)))
        h.update(f"hub:{path_or_id}@{path.name};".encode())
    files = [path / "config.json", *sorted(path.glob("*.safetensors"))]
    files += sorted(path.glob("*.safetensors.index.json"))
    if len(files) == 1:
        raise FileNotFoundError(f"model_fingerprint: no *.safetensors files in {path}")
    for file in files:
        _hash_file(h, file)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A SHA-256 of a tokenizer's class, vocabulary, special tokens and chat template."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    specials = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    }
    h.update(json.dumps(specials, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
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


def cache_facts(
    config: Any,
    *,
    split: str,
    model_fp: str,
    dataset_fp: str,
    tokenizer_fp: str,
    mesh_shape: Mapping[str, int],
) -> dict[str, Any]:
    """Every fact a split's cached reference log-probs depend on, as a flat dict.

    ``config`` is the run's `TrainConfig`. The log-prob path is
    ``logprob_chunk_size``; when that is None (automatic) the choice depends on the rows
    per device, so the batch size and the mesh shape join the facts.
    """
    path: Any = config.logprob_chunk_size
    if path is None:
        path = f"auto:batch={config.batch_size}:mesh={sorted(dict(mesh_shape).items())}"
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "model": model_fp,
        "ref_model": config.reference_model,
        "param_dtype": config.param_dtype,
        "dtype": config.dtype,
        "attention_impl": config.attention_impl,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "logprob_path": str(path),
        "tokenizer": tokenizer_fp,
        "template": config.template,
        "max_length": config.max_length,
        "objective": config.objective,
        "pairs": config.pairs,
        "keep_both_unsafe": config.keep_both_unsafe,
        "safety_label": config.safety_label,
        "dataset": config.dataset,
        "dataset_config": config.dataset_config,
        "split": split,
        "data": dataset_fp,
    }


def cache_key(facts: Mapping[str, Any]) -> str:
    """The cache file's stem: a hash of ``facts`` (see `cache_facts`).

    >>> a = cache_key({"dtype": "float32", "data": "x"})
    >>> a == cache_key({"data": "x", "dtype": "float32"}), a == cache_key({"dtype": "bfloat16",
    ...     "data": "x"})
    (True, False)
    """
    text = json.dumps(dict(facts), sort_keys=True, default=str)
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


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, syncs it, renames it over.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_cache(path: Path, *, expected_rows: int) -> np.ndarray | None:
    """The array in ``path`` if it and its sidecar agree (length, SHA-256, shape), else None.

    Every reason to ignore a file is logged as a warning.
    """
    sidecar = path.with_suffix(".json")
    if not path.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ValueError(f"{size} bytes on disk, {meta['bytes']} written (truncated?)")
        if _sha256(path) != meta["sha256"]:
            raise ValueError("its SHA-256 differs from the one recorded when it was written")
        logps = np.load(path)
        if logps.shape != (expected_rows, 2) or logps.dtype != np.float32:
            raise ValueError(f"shape {logps.shape} {logps.dtype}, expected ({expected_rows}, 2)")
        if not np.isfinite(logps).all():
            raise ValueError("non-finite values")
        return logps
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring reference cache %s and recomputing it: %s", path, e)
        return None


def write_cache(path: Path, logps: np.ndarray, facts: Mapping[str, Any] | None = None) -> None:
    """Writes ``logps`` to ``path`` and its sidecar, each atomically (the array first).

    A failure (a full disk, say) raises `CacheWriteError` naming the file; nothing
    partial stays behind and other cache files are untouched.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.save(f, logps))
        meta = {"bytes": path.stat().st_size, "sha256": _sha256(path), "facts": facts}
        write_atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        path.unlink(missing_ok=True)
        reason = "no space left on device" if e.errno == errno.ENOSPC else str(e)
        raise CacheWriteError(
            e.errno, f"could not write the reference cache {path}: {reason}"
        ) from e


def load_or_compute(
    cache_dir: str | Path | None,
    key: str,
    compute: Callable[[], np.ndarray],
    *,
    expected_rows: int,
    facts: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, Path, bool]:
    """The cached array for ``key`` or, failing that, ``compute()`` saved under it.

    Returns ``(logps, path, hit)``. A cache file is used only if `read_cache` accepts it.
    Only process 0 writes (`write_cache`); every process waits for the file before
    returning.
    """
    directory = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
    path = directory / f"{key}.npy"
    logps = read_cache(path, expected_rows=expected_rows)
    if logps is not None:
        return logps, path, True
    logps = compute()
    if jax.process_index() == 0:
        write_cache(path, logps, facts)
    multihost_utils.sync_global_devices(f"reference-cache-{key}")
    return logps, path, False


def cache_reference(
    setup: Any,
    datasets: dict[str, PairDataset],
    *,
    config: Any,
    tokenizer: Any,
    announce: Callable[[str], None] | None = None,
    reference_tag: str | None = None,
) -> dict[str, np.ndarray]:
    """Cached reference log-probs ``{split: [N, 2]}`` of each dataset, then frees the reference.

    ``setup`` is the run's `safedpo_jax.train.setup.StepSetup`: its reference model runs over
    each dataset once (through the same log-prob path as an in-step reference) unless the
    cache already holds the result under the key of `cache_facts`; afterwards
    ``setup.reference`` is None, so the reference's memory is released before training.
    ``config`` is the run's `TrainConfig`; ``datasets`` maps "train" / "eval" to datasets.
    ``reference_tag`` names what else the reference's weights depend on (a LoRA run's
    starting adapter) and joins the key.
    """
    from safedpo_jax.models.hf import resolve

    ref_path = config.reference_model
    random_init = None if ref_path else {"config": config.model_config, "seed": config.seed}
    fingerprint = model_fingerprint(ref_path, random_init=random_init, resolve=resolve)
    if reference_tag is not None:
        fingerprint = hashlib.sha256(f"{fingerprint}:{reference_tag}".encode()).hexdigest()
    tokenizer_fp = tokenizer_fingerprint(tokenizer)
    logps_fn = costs.counted("reference_pass", setup.reference_logps())
    reference = setup.reference
    to_device = lambda b: setup.objective.device_batch(b, setup.mesh, None)  # noqa: E731
    cached: dict[str, np.ndarray] = {}
    for split, ds in datasets.items():
        facts = cache_facts(
            config,
            split=config.split if split == "train" else str(config.eval_split),
            model_fp=fingerprint,
            dataset_fp=dataset_fingerprint(ds),
            tokenizer_fp=tokenizer_fp,
            mesh_shape=dict(setup.mesh.shape),
        )
        key = cache_key(facts)
        values, path, hit = load_or_compute(
            config.ref_cache_dir,
            key,
            lambda ds=ds: compute_reference_logps(
                ds, lambda b: logps_fn(reference, b), to_device, batch_size=config.batch_size
            ),
            expected_rows=len(ds),
            facts=facts,
        )
        cached[split] = values
        if announce is not None:
            announce(f"reference log-probs ({split}): {'reused' if hit else 'computed'} {path}")
    setup.reference = None  # the reference's memory is free from here on
    return cached
