"""The commands' persistent compilation cache: where it lives, and a second launch hits it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safedpo_jax.compile_cache import cache_dir

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from safedpo_jax.compile_cache import enable_compilation_cache
path = enable_compilation_cache()
f = jax.jit(lambda x: jnp.sin(x) * 3 + jnp.cos(x))
f(jnp.arange(17.0)).block_until_ready()
hits = sum(e == "/jax/compilation_cache/cache_hits" for e in events)
print(json.dumps({"path": str(path), "hits": hits}))
"""


def _launch(env_cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAFEDPO_JAX_CACHE=env_cache)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def test_default_location_and_switches(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert cache_dir(home) == Path.home() / ".cache" / "safedpo_jax" / "jax_cache"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "safedpo_jax" / "jax_cache"
    assert cache_dir({"SAFEDPO_JAX_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    for off in ("off", "OFF", "0", "false", "none"):
        assert cache_dir({"SAFEDPO_JAX_CACHE": off}) is None
    with pytest.raises(ValueError, match="SAFEDPO_JAX_CACHE is set but empty"):
        cache_dir({"SAFEDPO_JAX_CACHE": " "})


def test_tests_never_use_the_user_cache():
    assert os.environ["SAFEDPO_JAX_CACHE"] == "off"  # tests/conftest.py


def test_second_launch_reads_what_the_first_wrote(tmp_path):
    cache = tmp_path / "jax_cache"
    first = _launch(str(cache))
    assert first["path"] == str(cache) and first["hits"] == 0
    assert f"jax compilation cache: {cache}" in first["stderr"]
    written = sorted(p.name for p in cache.iterdir())
    assert written, "the first launch wrote nothing"
    second = _launch(str(cache))
    assert second["hits"] >= 1
    assert sorted(p.name for p in cache.iterdir()) == written  # nothing new compiled
    off = _launch("off")
    assert off["path"] == "None" and off["hits"] == 0
