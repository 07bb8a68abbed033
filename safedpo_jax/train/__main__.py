"""``python -m safedpo_jax.train``: train with SafeDPO or a DPO baseline (see `TrainConfig`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from safedpo_jax.train.config import format_config, parse_args

    config, ns = parse_args(argv)
    if ns.print_config:
        print(format_config(config, ns.print_config), end="")
        return 0
    _quiet_logging()
    import datasets
    import jax

    from safedpo_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # a second launch of the same configuration compiles nothing

    from safedpo_jax.data import DataError
    from safedpo_jax.train.checkpoint import CheckpointMismatch, CheckpointWriteError
    from safedpo_jax.train.console import closing_summary
    from safedpo_jax.train.loop import NonFiniteError, train
    from safedpo_jax.train.reference import CacheWriteError
    from safedpo_jax.train.rundir import RunDirError

    errors = (CacheWriteError, CheckpointMismatch, CheckpointWriteError, RunDirError)
    datasets.disable_progress_bars()  # "Generating train split" bars; the data summary says it
    start = time.perf_counter()
    try:
        result = train(config)
    except (DataError, NonFiniteError, ValueError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        summary = closing_summary(
            steps=result.step,
            seconds=time.perf_counter() - start,
            resumed_from=result.resumed_from,
            metrics=result.metrics,
            eval_metrics=result.eval_metrics,
            output_dir=result.output_dir,
            export_dir=result.export_dir,
        )
        print(summary, flush=True)
    return 0


def _quiet_logging() -> None:
    """The library's INFO messages; others' WARNINGs only (no backend probing on CPU)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("safedpo_jax").setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
