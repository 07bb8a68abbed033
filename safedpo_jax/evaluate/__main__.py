"""``python -m safedpo_jax.evaluate``: see `safedpo_jax.evaluate.cli`."""

import sys

from safedpo_jax.evaluate.cli import main

sys.exit(main())
