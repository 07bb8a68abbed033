"""JAX's persistent compilation cache for the commands: a second launch compiles nothing.

The commands (``python -m safedpo_jax.train``) call `enable_compilation_cache` before they
build anything. Compiled programs are then written to, and on the next launch of the same
configuration read from, one directory:

- ``$SAFEDPO_JAX_CACHE`` when set (``off``, ``0``, ``false`` or ``none`` disable the cache),
- else ``$XDG_CACHE_HOME/safedpo_jax/jax_cache`` (``~/.cache/safedpo_jax/jax_cache``).

The directory is printed once per process. Clearing it is deleting it
(``rm -rf ~/.cache/safedpo_jax/jax_cache``); entries are keyed by the program, the
backend, the jax version and the compile options, so a stale entry is never used for a
different program, only left behind. Every program is cached, however quick its compile
(`jax_persistent_cache_min_compile_time_secs` 0): a launch runs many small programs whose
compiles add up. The library itself (tests, `safedpo_jax.models`) never turns it on.

>>> enable_compilation_cache(env={"SAFEDPO_JAX_CACHE": "off"}, announce=False) is None
True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "SAFEDPO_JAX_CACHE"
_DISABLED = frozenset({"off", "0", "false", "none", "no"})
_announced: set[str] = set()


def cache_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The cache directory `enable_compilation_cache` uses, or None when disabled.

    >>> str(cache_dir({"SAFEDPO_JAX_CACHE": "/tmp/c"}))
    '/tmp/c'
    >>> str(cache_dir({"XDG_CACHE_HOME": "/x"}))
    '/x/safedpo_jax/jax_cache'
    >>> cache_dir({"SAFEDPO_JAX_CACHE": "off"}) is None
    True
    """
    env = os.environ if env is None else env
    value = env.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in _DISABLED:
            return None
        if not value.strip():
            raise ValueError(f"{ENV_VAR} is set but empty; give a directory or 'off'")
        return Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "safedpo_jax" / "jax_cache"


def enable_compilation_cache(
    env: Mapping[str, str] | None = None, *, announce: bool = True
) -> Path | None:
    """Turns on JAX's persistent compilation cache in `cache_dir`; returns it (None: off).

    Call it before the first compilation. With ``announce``, the directory is printed to
    stderr once per process.
    """
    path = cache_dir(env)
    if path is None:
        return None
    import jax

    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if announce and str(path) not in _announced:
        _announced.add(str(path))
        print(
            f"jax compilation cache: {path} (delete it to clear; {ENV_VAR}=off disables)",
            file=sys.stderr,
            flush=True,
        )
    return path
