"""``python -m safedpo_jax.data``: see `safedpo_jax.data.cli`."""

from safedpo_jax.data.cli import main

raise SystemExit(main())
