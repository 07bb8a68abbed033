"""Counted compute: XLA's FLOPs and memory of each compiled function, times the calls that ran.

A `Ledger` records, per named function, the calls made and the floating-point operations
XLA counts in the compiled program of each call (``compiled.cost_analysis()["flops"]``),
with XLA's memory estimate of the program (``compiled.memory_analysis()``). Library code
marks what it runs with `counted`; a ledger listens only while `recording` is active (the
trainer and the PPO loop record every run into ``OUTPUT_DIR/compute.json``). Without an
active ledger `counted` calls the function unchanged.

With a ledger, `counted` compiles the function ahead of time once per argument signature
(shapes, dtypes, shardings, tree structure and static arguments), exactly the program the
jitted call would have compiled, and runs that executable: nothing is compiled twice.

Conventions:

- ``flops`` of a call is XLA's count for the program times the number of devices its
  arguments live on (under SPMD the count is of one device's program), so it is the
  work the machine did, padding included (XLA counts every position of a padded shape).
- XLA's cost analysis counts the body of a ``while`` loop once, whatever its trip count
  (tested in ``tests/test_costs.py``). Code that runs a loop adds the missing trips with
  `Ledger.add_flops` (generation: ``prefill + steps x decode step``). Loops of a known
  trip count in the compiled program (``jax.lax.scan``: the decoder's scanned layers) are
  found in its HLO and their uncounted trips recorded per function
  (``uncounted_loop_trips``): a count with such trips covers one layer of the stack, so
  `Ledger.complete` is False and code that needs whole counts builds its models with
  ``scan_layers=False`` (the same parameters and numbers, every layer in the count).
- A ``lax.cond`` counts as its costlier branch, whichever runs (the skipped log-prob
  chunks of `safedpo_jax.losses` are counted as projected: an upper bound).
- Memory: the largest ``argument + output + temp - alias`` bytes over the function's
  compiled variants (XLA's estimate of the program's live buffers, not the process's RSS).

>>> import jax, jax.numpy as jnp
>>> ledger = Ledger()
>>> matmul = counted("matmul", jax.jit(lambda a, b: a @ b))
>>> with recording(ledger):
...     _ = matmul(jnp.ones((8, 4)), jnp.ones((4, 16)))
...     _ = matmul(jnp.ones((8, 4)), jnp.ones((4, 16)))
>>> ledger.entries["matmul"].calls, ledger.entries["matmul"].flops  # 2 * (2 * 8 * 4 * 16)
(2, 2048.0)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

__all__ = [
    "Entry",
    "Ledger",
    "cost_of",
    "counted",
    "current",
    "memory_bytes",
    "program_flops",
    "recording",
    "uncounted_loops",
    "uncounted_trips",
]

_ACTIVE: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar(
    "safedpo_jax_ledger", default=None
)


def program_flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled program (``jax.stages.Compiled``).

    ``cost_analysis()`` returns a dict in current JAX and a list with one dict per
    program in older releases; both are read. Raises ``ValueError`` when the backend
    gives no ``flops`` entry.
    """
    analysis = compiled.cost_analysis()
    analyses = list(analysis) if isinstance(analysis, list | tuple) else [analysis]
    if not analyses or any(a is None or "flops" not in a for a in analyses):
        raise ValueError(f"the backend reports no FLOP count for this program: {analysis!r}")
    return float(sum(a["flops"] for a in analyses))


_TRIP_COUNT = re.compile(r'known_trip_count"?\s*:\s*\{\s*"?n"?\s*:\s*"?(\d+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def uncounted_loops(compiled: Any) -> dict[str, int]:
    """The loops of known trip count in a compiled program's HLO text, by the JAX operation
    that made them (``op_name``), with the trips beyond the first that XLA's count leaves
    out; empty when the backend gives no text."""
    try:
        text = compiled.as_text()
    except (NotImplementedError, RuntimeError, AttributeError):
        return {}
    loops: dict[str, int] = {}
    for line in (text or "").splitlines():
        if " while(" not in line:
            continue
        trips = _TRIP_COUNT.search(line)
        if trips is None or int(trips.group(1)) < 2:
            continue
        name = _OP_NAME.search(line)
        key = name.group(1) if name else "while"
        loops[key] = loops.get(key, 0) + int(trips.group(1)) - 1
    return loops


def uncounted_trips(compiled: Any) -> int:
    """The trips XLA's count leaves out of a compiled program's loops of known trip count
    (each loop's trips beyond the first, summed; see `uncounted_loops`)."""
    return sum(uncounted_loops(compiled).values())


def memory_bytes(compiled: Any) -> dict[str, int] | None:
    """XLA's memory estimate of a compiled program, in bytes, or None where unavailable:
    ``argument``, ``output``, ``temp``, ``alias`` and ``peak`` (argument + output + temp
    - alias: the program's live buffers; donated arguments are aliased to outputs)."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if stats is None:
        return None
    out = {
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


@dataclasses.dataclass
class Entry:
    """One named function's record.

    calls: calls that ran. flops: their total (XLA's counts, plus `Ledger.add_flops`).
    variants: compiled programs (distinct argument signatures); flops_per_call: each
    variant's count in compile order. memory: `memory_bytes` of the variant with the
    largest peak. loop_trips: loop iterations added by `Ledger.add_flops`.
    last_call_flops: the count of the latest call's program. uncounted_loop_trips: the
    trips beyond the first of the known-trip-count loops in its programs (the most of any
    variant), which XLA's count leaves out (see the module docstring); uncounted_loops:
    those trips by the JAX operation that made each loop (a random-key split's threefry
    rounds, a scanned layer stack, ...).
    """

    name: str
    calls: int = 0
    flops: float = 0.0
    variants: int = 0
    flops_per_call: list[float] = dataclasses.field(default_factory=list)
    memory: dict[str, int] | None = None
    loop_trips: int = 0
    last_call_flops: float = 0.0
    uncounted_loop_trips: int = 0
    uncounted_loops: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Program:
    compiled: Any
    flops: float
    function: Any  # held so that its id (in the key) is never reused while the ledger lives


class Ledger:
    """Counted calls and FLOPs per function name (see the module docstring)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._programs: dict[Any, _Program] = {}

    def entry(self, name: str) -> Entry:
        if name not in self.entries:
            self.entries[name] = Entry(name)
        return self.entries[name]

    def program(
        self, key: Any, name: str, function: Any, compile_fn: Callable[[], Any], devices: int
    ) -> _Program:
        """The compiled program under ``key``, compiled (and its cost read) on first use."""
        found = self._programs.get(key)
        if found is None:
            compiled = compile_fn()
            found = _Program(compiled, devices * program_flops(compiled), function)
            self._programs[key] = found
            entry = self.entry(name)
            entry.variants += 1
            entry.flops_per_call.append(found.flops)
            loops = uncounted_loops(compiled)
            if sum(loops.values()) >= entry.uncounted_loop_trips:
                entry.uncounted_loop_trips, entry.uncounted_loops = sum(loops.values()), loops
            memory = memory_bytes(compiled)
            if memory is not None and (
                entry.memory is None or memory["peak"] > entry.memory["peak"]
            ):
                entry.memory = memory
        return found

    def record_call(self, name: str, flops: float) -> None:
        entry = self.entry(name)
        entry.calls += 1
        entry.flops += flops
        entry.last_call_flops = flops

    def add_flops(self, name: str, flops: float, *, loop_trips: int = 0) -> None:
        """Work XLA's count leaves out (a loop's trips beyond the first), added to ``name``."""
        if flops < 0 or loop_trips < 0:
            raise ValueError(f"add_flops({name!r}): negative flops {flops} or trips {loop_trips}")
        entry = self.entry(name)
        entry.flops += flops
        entry.loop_trips += loop_trips

    @property
    def complete(self) -> bool:
        """Whether every count covers every loop trip (no `Entry.uncounted_loop_trips`)."""
        return all(e.uncounted_loop_trips == 0 for e in self.entries.values())

    @property
    def total_flops(self) -> float:
        return float(sum(e.flops for e in self.entries.values()))

    def to_dict(self) -> dict[str, Any]:
        """``{"flops": total, "functions": {name: Entry fields}}`` (JSON-ready)."""
        return {
            "flops": self.total_flops,
            "complete": self.complete,
            "functions": {name: e.to_dict() for name, e in self.entries.items()},
        }


def current() -> Ledger | None:
    """The ledger `recording` made active in this context, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def recording(ledger: Ledger) -> Iterator[Ledger]:
    """Makes ``ledger`` record every `counted` call in this context."""
    token = _ACTIVE.set(ledger)
    try:
        yield ledger
    finally:
        _ACTIVE.reset(token)


def _leaf_key(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return ("array", jax.typeof(x), x.sharding)
    if isinstance(x, np.ndarray | np.generic):
        return ("numpy", x.shape, x.dtype)
    if isinstance(x, bool | int | float | complex):
        return ("python", type(x))
    try:
        hash(x)
    except TypeError:
        return ("object", id(x))
    return ("value", x)


def _devices(leaves: list[Any]) -> int:
    counts = [len(x.sharding.device_set) for x in leaves if isinstance(x, jax.Array)]
    return max(counts, default=1)


def _program(
    ledger: Ledger,
    name: str,
    fn: Any,
    static_argnames: tuple[str, ...],
    args: tuple,
    kwargs: dict[str, Any],
) -> tuple[_Program, dict[str, Any]]:
    """``fn``'s compiled program for these arguments (compiled on first use) and the
    keyword arguments the executable takes (the static ones removed)."""
    base = getattr(fn, "__wrapped__", fn)  # jax.jit(f) made afresh each time: f, one program
    static = {k: v for k, v in kwargs.items() if k in static_argnames}
    dynamic = {k: v for k, v in kwargs.items() if k not in static_argnames}
    leaves, treedef = jax.tree.flatten((args, dynamic))
    key = (
        name,
        id(base),
        treedef,
        tuple(_leaf_key(x) for x in leaves),
        tuple(sorted((k, _leaf_key(v)) for k, v in static.items())),
    )
    program = ledger.program(
        key, name, base, lambda: fn.lower(*args, **kwargs).compile(), _devices(leaves)
    )
    return program, dynamic


def counted(
    name: str, fn: Callable[..., Any], *, static_argnames: tuple[str, ...] = ()
) -> Callable[..., Any]:
    """``fn`` (a jitted function, or anything with ``fn.lower(*args).compile()``), counted
    under ``name`` in the active ledger; called unchanged when none is active.

    ``static_argnames``: ``fn``'s static keyword arguments (they pick the program and are
    not passed to the compiled executable). One name stands for one function per ledger.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        ledger = current()
        if ledger is None:
            return fn(*args, **kwargs)
        program, dynamic = _program(ledger, name, fn, static_argnames, args, kwargs)
        out = program.compiled(*args, **dynamic)
        ledger.record_call(name, program.flops)
        return out

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def cost_of(
    ledger: Ledger,
    name: str,
    fn: Callable[..., Any],
    *args: Any,
    static_argnames: tuple[str, ...] = (),
    **kwargs: Any,
) -> float:
    """The FLOPs one call of ``fn`` on these arguments would count, without running it
    (the program is compiled once per signature and listed under ``name`` with no calls)."""
    program, _ = _program(ledger, name, fn, static_argnames, args, kwargs)
    return program.flops
