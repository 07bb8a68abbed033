"""Linear merging of two Hugging Face checkpoints, streamed one tensor at a time (P-SACPO).

P-SACPO (Wachi et al. 2024, "Stepwise Alignment for Constrained Language Model Policy
Optimization") interpolates the weights of two aligned policies,
``theta = (1 - q) * theta_a + q * theta_b`` (typically ``q`` in {0.25, 0.5, 0.75}), to
trade helpfulness against harmlessness without training. `merge_checkpoints` does this for
two safetensors checkpoint directories and writes a third:

- Every tensor is read from A and B with `safetensors.safe_open`, merged in float32
  (``(1 - q) * a + q * b``; a term whose weight is exactly 0 is left out, so ``q = 0`` and
  ``q = 1`` reproduce an input bit for bit, signed zeros and non-finite values included)
  and cast back to A's stored dtype. Integer and boolean tensors cannot be interpolated:
  they must be equal in A and B and are copied.
- The output keeps A's file layout: the same shard files, each with A's safetensors header
  (the same keys, dtypes, shapes and offsets, hence the same header bytes) followed by the
  merged tensors written in file order as they are computed, and A's
  ``model.safetensors.index.json`` for a sharded checkpoint. B may be sharded differently.
- Every other top-level file of A (config.json, generation_config.json, tokenizer files,
  chat templates, ...) is copied; B's are not read except its config.json.
- Memory: the host holds one tensor of A, the same tensor of B, their float32 merge and
  one float32 temporary at a time (for float32 weights four times the largest tensor,
  e.g. the embedding; measured by the tests with `tracemalloc`), never a whole checkpoint
  or shard. The merge is "shardable" in that it needs no accelerator and no
  JAX devices: it runs on any host with disk access.

The merge fails with a one-line `ValueError` before writing anything when the two key
sets, a shape, or the configs' ``architectures`` / ``model_type`` / shape fields differ;
an integer tensor that differs is found while writing, and the partial output is removed.

Command::

    python -m safedpo_jax.models.merge A B --q 0.5 --output DIR

>>> import numpy as np, tempfile, pathlib
>>> from safetensors.numpy import save_file, load_file
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for name, value in (("a", 0.0), ("b", 2.0)):
...     (root / name).mkdir()
...     _ = (root / name / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
...     save_file({"w": np.full((2,), value, np.float32)}, root / name / "model.safetensors")
>>> summary = merge_checkpoints(root / "a", root / "b", q=0.25, output=root / "m")
>>> load_file(root / "m" / "model.safetensors")["w"].tolist(), summary.tensors
([0.5, 0.5], 1)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# config.json fields that must agree for a merge to mean anything (when present).
CONFIG_FIELDS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)
# Weight files of other formats are not copied (and not merged).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


@dataclasses.dataclass(frozen=True)
class MergeSummary:
    """What `merge_checkpoints` wrote: tensor, file and byte counts, and the copied files."""

    tensors: int
    weight_files: int
    bytes: int
    copied: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: Path) -> tuple[bytes, dict[str, _Entry]]:
    """The raw header (length prefix included) and its tensors, of one safetensors file."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError(f"{path}: truncated safetensors header")
    header = json.loads(raw)
    header.pop("__metadata__", None)
    entries = {
        key: _Entry(path.name, info["dtype"], tuple(info["shape"]), *info["data_offsets"])
        for key, info in header.items()
    }
    return prefix + raw, entries


def _weight_files(directory: Path) -> list[str]:
    index, single = directory / INDEX_FILE, directory / SINGLE_FILE
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if single.exists():
        return [SINGLE_FILE]
    raise FileNotFoundError(
        f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors checkpoints "
        "can be merged)"
    )


def _entries(directory: Path) -> dict[str, _Entry]:
    out: dict[str, _Entry] = {}
    for name in _weight_files(directory):
        for key, entry in _read_header(directory / name)[1].items():
            if key in out:
                raise ValueError(f"{directory}: key {key!r} appears in more than one file")
            out[key] = entry
    return out


def _check_configs(a: Path, b: Path) -> None:
    configs = []
    for directory in (a, b):
        path = directory / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} has no config.json")
        configs.append(json.loads(path.read_text()))
    for field in CONFIG_FIELDS:
        va, vb = configs[0].get(field), configs[1].get(field)
        if va != vb:
            raise ValueError(f"config.json field {field!r} differs: {va!r} in {a}, {vb!r} in {b}")


def _check_keys(a: Path, b: Path, ea: dict[str, _Entry], eb: dict[str, _Entry]) -> None:
    only_a, only_b = sorted(set(ea) - set(eb)), sorted(set(eb) - set(ea))
    if only_a or only_b:
        raise ValueError(
            f"key sets differ: {len(only_a)} key(s) only in {a} ({', '.join(only_a[:4])}), "
            f"{len(only_b)} only in {b} ({', '.join(only_b[:4])})"
        )
    for key, entry in ea.items():
        if entry.shape != eb[key].shape:
            raise ValueError(
                f"tensor {key!r} has shape {entry.shape} in {a} but {eb[key].shape} in {b}"
            )
        floating = {_is_float(entry.dtype), _is_float(eb[key].dtype)}
        if floating != {True} and entry.dtype != eb[key].dtype:
            raise ValueError(
                f"tensor {key!r} is {entry.dtype} in {a} but {eb[key].dtype} in {b}; only "
                "floating tensors can differ in dtype"
            )


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))


def _merge_tensor(key: str, a: np.ndarray, b: np.ndarray, q: float) -> np.ndarray:
    """``(1 - q) * a + q * b`` in float32, cast to ``a``'s dtype; zero-weight terms left out."""
    if not _floating_array(a):
        if a.dtype != b.dtype or not np.array_equal(a, b):
            raise ValueError(f"{a.dtype} tensor {key!r} differs between the checkpoints")
        return a
    out: np.ndarray | None = None
    for weight, x in ((1.0 - q, a), (q, b)):
        if weight == 0.0:  # q in [0, 1]: at least one term stays
            continue
        term = np.float32(weight) * x.astype(np.float32, copy=False)
        if out is None:
            out = term
        else:
            out += term
        del term
    assert out is not None
    return out.astype(a.dtype, copy=False)


def _floating_array(x: np.ndarray) -> bool:
    name = x.dtype.name
    return np.issubdtype(x.dtype, np.floating) or name == "bfloat16" or name.startswith("float8")


def _copy_other_files(a: Path, output: Path) -> list[str]:
    copied = []
    for path in sorted(a.iterdir()):
        if not path.is_file() or path.name == INDEX_FILE or path.suffix in _WEIGHT_SUFFIXES:
            continue
        shutil.copyfile(path, output / path.name)
        copied.append(path.name)
    return copied


def _bytes_of(x: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8))


def merge_checkpoints(
    a: str | Path,
    b: str | Path,
    *,
    q: float,
    output: str | Path,
) -> MergeSummary:
    """Writes ``(1 - q) * A + q * B`` to ``output`` (see the module docstring).

    ``a`` and ``b`` are checkpoint directories (config.json and ``model.safetensors`` or
    sharded files with ``model.safetensors.index.json``); ``q`` in ``[0, 1]``; ``output``
    a new or empty directory.
    """
    a, b, output = Path(a), Path(b), Path(output)
    if not (isinstance(q, (int, float)) and math.isfinite(q) and 0.0 <= q <= 1.0):
        raise ValueError(f"q must be a number in [0, 1], got {q!r}")
    for directory in (a, b):
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"output directory {output} exists and is not empty")
    if output.resolve() in (a.resolve(), b.resolve()):
        raise ValueError(f"output directory {output} is one of the inputs")
    _check_configs(a, b)
    ea, eb = _entries(a), _entries(b)
    _check_keys(a, b, ea, eb)

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        written, files = _write_weights(a, b, eb, output, q)
        if (a / INDEX_FILE).exists():
            shutil.copyfile(a / INDEX_FILE, output / INDEX_FILE)
        copied = _copy_other_files(a, output)
    except BaseException:  # leave no partial checkpoint behind (output was new or empty)
        if created:
            shutil.rmtree(output, ignore_errors=True)
        else:
            for path in output.iterdir():
                path.unlink()
        raise
    return MergeSummary(len(ea), len(files), written, tuple(copied))


def _write_weights(
    a: Path, b: Path, eb: dict[str, _Entry], output: Path, q: float
) -> tuple[int, list[str]]:
    """Writes each of A's weight files merged, tensor by tensor; ``(bytes, file names)``."""
    written = 0
    files = _weight_files(a)
    with contextlib.ExitStack() as stack:
        handles_b = {
            name: stack.enter_context(safe_open(b / name, framework="numpy"))
            for name in {e.file for e in eb.values()}
        }
        for name in files:
            header, entries = _read_header(a / name)
            with (
                safe_open(a / name, framework="numpy") as handle_a,
                open(output / name, "wb") as out,
            ):
                out.write(header)
                position = 0
                for key, entry in sorted(entries.items(), key=lambda kv: kv[1].begin):
                    if entry.begin != position:
                        raise ValueError(f"{a / name}: tensor {key!r} is not contiguous")
                    x_a = handle_a.get_tensor(key)
                    x_b = handles_b[eb[key].file].get_tensor(key)
                    merged = _merge_tensor(key, x_a, x_b, q)
                    data = _bytes_of(merged)
                    if len(data) != entry.end - entry.begin:
                        raise ValueError(
                            f"tensor {key!r}: {len(data)} bytes for a slot of "
                            f"{entry.end - entry.begin} in {a / name}"
                        )
                    out.write(data)
                    position = entry.end
                    del x_a, x_b, merged, data
                written += out.tell()
    return written, files


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m safedpo_jax.models.merge",
        description="Linear merge of two Hugging Face safetensors checkpoints: "
        "(1 - q) * A + q * B (P-SACPO), streamed one tensor at a time.",
    )
    p.add_argument("a", help="first checkpoint directory (config and tokenizer are copied)")
    p.add_argument("b", help="second checkpoint directory")
    p.add_argument("--q", type=float, required=True, help="weight of B, in [0, 1]")
    p.add_argument("--output", required=True, help="new (or empty) output directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: merges, prints a one-line summary; errors print one line, exit 1."""
    args = _parse(argv)
    try:
        summary = merge_checkpoints(args.a, args.b, q=args.q, output=args.output)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"merge: error: {error}", file=sys.stderr)
        return 1
    print(
        f"merged {summary.tensors} tensors ({summary.bytes:,} bytes in {summary.weight_files} "
        f"file(s)) with q={args.q} into {args.output}; copied {', '.join(summary.copied)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
