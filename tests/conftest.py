"""Test configuration: 8 fake CPU devices, so the sharded code paths run everywhere.

XLA reads XLA_FLAGS once, when jax first initialises its backends, so this must run
before any test module imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

# The commands turn on JAX's persistent compilation cache (safedpo_jax.compile_cache);
# tests never write to the user's cache directory.
os.environ.setdefault("SAFEDPO_JAX_CACHE", "off")
