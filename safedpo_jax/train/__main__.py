"""``python -m safedpo_jax.train``: train with SafeDPO or a DPO baseline (see `TrainConfig`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from safedpo_jax.train.config import parse_args

    config, ns = parse_args(argv)
    if ns.print_config:
        print(config.to_json())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    from safedpo_jax.data import DataError
    from safedpo_jax.train.checkpoint import CheckpointMismatch, CheckpointWriteError
    from safedpo_jax.train.loop import NonFiniteError, train
    from safedpo_jax.train.reference import CacheWriteError
    from safedpo_jax.train.rundir import RunDirError

    errors = (CacheWriteError, CheckpointMismatch, CheckpointWriteError, RunDirError)
    try:
        result = train(config)
    except (DataError, NonFiniteError, ValueError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: step {result.step}, output in {result.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
