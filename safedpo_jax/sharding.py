"""Device meshes and the one table that maps logical axis names to mesh axes.

Every parameter of a `safedpo_jax.models` model carries logical axis names in its
``out_sharding`` metadata (``("embed", "mlp")`` for an MLP input matrix, say). This module
turns those names into `jax.sharding.NamedSharding`s on a mesh with three axes:

``data``
    pure data parallelism: parameters are replicated, the batch is split.
``fsdp``
    fully sharded data parallelism: the batch is split *and* parameters are sharded
    along their ``embed`` dimension (gathered layer by layer by XLA).
``tensor``
    tensor (Megatron) parallelism: heads, MLP and vocabulary dimensions are split.

The mesh uses `jax.sharding.AxisType.Auto` axes: shardings are given explicitly at the
jit boundary (parameters, optimizer state, batch) and XLA's partitioner propagates them
through the model, which is what FSDP wants (the same mesh axis shards a weight's
contraction dimension and the activations' batch dimension).

A mesh axis that does not divide an array dimension is dropped for that array (the
dimension is replicated instead), so a model with 2 key/value heads still loads on a
``tensor=4`` mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or axes, or None for replicated). Keep it one screen.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),  # examples (pairs) in a batch
    ("length", None),  # sequence positions
    ("vocab", "tensor"),  # vocabulary rows of the embedding / columns of the head
    ("embed", "fsdp"),  # model (hidden) dimension of weights
    ("mlp", "tensor"),  # MLP intermediate dimension
    ("heads", "tensor"),  # query heads
    ("kv_heads", "tensor"),  # key/value heads
    ("head_dim", None),  # per-head features
    ("norm", None),  # RMSNorm scales
    ("score", None),  # the output dimension of a score head (1 or a few labels)
    ("layers", None),  # the stacked-layer axis of the decoder's blocks (scanned over)
)


def make_mesh(
    data: int = 1,
    fsdp: int = -1,
    tensor: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices).

    One of the three sizes may be ``-1``: it takes every device the others leave. The
    default puts every device on ``fsdp``. On a single process, explicit sizes whose
    product is smaller than the device count use the first devices (``1, 1, 1`` is a
    one-device mesh).

    >>> mesh = make_mesh(devices=jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1, 'fsdp': 1, 'tensor': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices cannot be split into "
                f"data={data} fsdp={fsdp} tensor={tensor}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if (
        -1 not in (data, fsdp, tensor)
        and math.prod(sizes) < len(devices)
        and (jax.process_count() == 1)
    ):
        # Explicit sizes that ask for fewer devices than there are: use the first ones
        # (single-process only; on several hosts every device must be in the mesh).
        devices = devices[: math.prod(sizes)]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{math.prod(sizes)} devices, but {len(devices)} are available"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The `PartitionSpec` for an array whose dimensions carry logical ``names``.

    With ``shape`` and ``mesh`` given, mesh axes that do not divide their dimension, that
    the mesh lacks, or that an earlier dimension already uses are left out.

    >>> logical_to_spec(("embed", "mlp"))
    P('fsdp', 'tensor')
    >>> logical_to_spec(("batch", "length"))
    P(('data', 'fsdp'), None)
    """
    table: Mapping[str, str | tuple[str, ...] | None] = dict(rules)
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for dim, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept: list[str] = []
        for axis in axes:
            if axis in used:
                continue
            if mesh is not None:
                if axis not in mesh.shape:
                    continue
                if shape is not None:
                    size = math.prod(mesh.shape[a] for a in (*kept, axis))
                    if shape[dim] % size:
                        continue
            kept.append(axis)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    """`NamedSharding` on ``mesh`` for an array of ``shape`` with logical axis ``names``."""
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def variable_names(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names a model variable carries (``()`` when it has none)."""
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else ()


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """A state of `NamedSharding`s for an (abstract or concrete) `nnx.State`.

    Each leaf's sharding comes from its variable's logical names through
    `LOGICAL_AXIS_RULES`; a variable without names is replicated.
    """

    def one(variable: nnx.Variable) -> nnx.Variable:
        value = variable.get_value()
        names = variable_names(variable)
        if names and len(names) != np.ndim(value):
            raise ValueError(
                f"variable of shape {np.shape(value)} carries {len(names)} logical names {names}"
            )
        spec = logical_to_spec(names, np.shape(value), mesh) if names else PartitionSpec()
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding for a batch array of rank ``ndim``: leading axis over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def batch_shards(mesh: Any) -> int:
    """How many ways a batch's leading axis is split on ``mesh`` (the ``batch`` rule's axes).

    Works on a concrete or abstract mesh; an empty mesh (no ambient one) gives 1.
    """
    if mesh.empty:
        return 1
    axes = dict(LOGICAL_AXIS_RULES)["batch"]
    return math.prod(size for name, size in mesh.shape.items() if name in axes)


def to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array from this process's rows of the batch (split over ``("data","fsdp")``).

    On one process this is a sharded `device_put`; on several, each process contributes
    its own consecutive block of rows (`jax.make_array_from_process_local_data`).
    """
    spec = batch_sharding(mesh, local.ndim)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(spec, local, global_shape)
