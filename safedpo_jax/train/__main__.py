"""``python -m safedpo_jax.train``: train with SafeDPO or a DPO baseline (see `TrainConfig`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from safedpo_jax.train.config import format_config, parse_args

    config, ns = parse_args(argv)
    if ns.print_config:
        print(format_config(config, ns.print_config), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    from safedpo_jax.data import DataError
    from safedpo_jax.train.loop import NonFiniteError, train

    try:
        result = train(config)
    except (DataError, NonFiniteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: step {result.step}, output in {result.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
