"""From the command to the first finished step: ours cold and warm against TRL's.

Ours is the command a user types, ``python -m safedpo_jax.train --preset tiny`` (a random
tiny Llama, the embedded sample, batch and length of the preset), stopped after
``--steps`` steps. Cold: an empty compilation cache (``SAFEDPO_JAX_CACHE`` a fresh
directory); warm: the same command again over the cache the cold launch filled. TRL's side
is a script a user would write: `transformers` loads a Llama of the tiny preset's shape
(saved beforehand, as a user's checkpoint would be), `trl.DPOTrainer` trains on the same
sample pairs with the preset's batch size and length (the same settings as vs_trl.py).

Measured per launch, from just before the process starts: seconds to the first finished
step (ours: the progress bar's first ``1/N`` update with a loss, read from stderr as it
arrives; TRL: a callback at the end of step 1 prints the time), seconds to exit, and the
child's CPU seconds (user + system, all threads: the figure that the shared cores distort
least). Launches rotate TRL, ours cold, ours warm, ``--rounds`` times; medians.

    PYTHONPATH=. python experiments/benchmarks/warm_start.py          # minutes
    PYTHONPATH=. python experiments/benchmarks/warm_start.py --smoke  # one round, no TRL

The last line is one JSON object: per side ``first_step_s``, ``exit_s``, ``cpu_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as C

FIRST_STEP = re.compile(r"\b1/\d+ \[[^\]]*loss=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--trl-child", help=argparse.SUPPRESS)  # weights directory
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.no_trl = 1, 1, True
    return args


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch(cmd: list[str], env: dict[str, str], first_step: re.Pattern[str]) -> dict[str, float]:
    """Runs ``cmd``; seconds to the first match of ``first_step`` in its output, to exit."""
    cpu0 = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    seen: dict[str, float] = {}
    text: list[str] = []

    def read() -> None:
        buffer = ""
        while chunk := proc.stdout.read1(4096):  # type: ignore[union-attr]
            buffer += chunk.decode(errors="replace")
            if "first" not in seen and first_step.search(buffer):
                seen["first"] = time.perf_counter() - start
            buffer = buffer[-400:]
            text.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read)
    reader.start()
    rc = proc.wait()
    reader.join()
    exit_s = time.perf_counter() - start
    if rc != 0 or "first" not in seen:
        raise RuntimeError(f"{' '.join(cmd)} (rc {rc}):\n{''.join(text)[-3000:]}")
    return {
        "first_step_s": round(seen["first"], 2),
        "exit_s": round(exit_s, 2),
        "cpu_s": round(_children_cpu() - cpu0, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def trl_child(weights: str, steps: int) -> None:
    """TRL's DPOTrainer on the sample's helpful pairs; prints when step 1 ends."""
    start = time.perf_counter()
    import transformers
    from transformers import TrainerCallback
    from vs_trl import load_pairs, make_trl, trl_dataset

    from safedpo_jax.train.config import from_preset

    preset = from_preset("tiny")
    b, t = preset.batch_size, preset.max_length
    transformers.logging.set_verbosity_error()
    tokenizer, ds = load_pairs("helpful", t, steps * b)
    dataset = trl_dataset(ds, tokenizer, steps * b)
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trl(Path(weights), tokenizer, dataset, "in_step", b, t, steps, out)

        class FirstStep(TrainerCallback):
            def on_step_end(self, a: Any, state: Any, *x: Any, **k: Any) -> None:
                if state.global_step == 1:
                    print(f"TRL step 1 done after {time.perf_counter() - start:.2f}", flush=True)

        trainer.add_callback(FirstStep())
        trainer.train()


def save_tiny(directory: Path) -> None:
    """The tiny preset's Llama shape as a Hugging Face checkpoint (policy and reference)."""
    from vs_trl import save_weights

    from safedpo_jax.data import load_tokenizer

    save_weights("tiny", load_tokenizer("sample"), directory)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_child:
        trl_child(args.trl_child, args.steps)
        return
    info = C.machine()
    print("machine: " + json.dumps(info), flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(C.ROOT), env.get("PYTHONPATH")]))
    env.pop("XLA_FLAGS", None)
    runs: dict[str, list[dict[str, float]]] = {"ours_cold": [], "ours_warm": [], "trl": []}
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        if not args.no_trl:
            save_tiny(work_dir / "weights")
        for r in range(args.rounds):
            if not args.no_trl:
                cmd = [sys.executable, "-u", __file__, "--steps", str(args.steps)]
                cmd += ["--trl-child", str(work_dir / "weights")]
                runs["trl"].append(launch(cmd, env, re.compile(r"TRL step 1 done")))
                print("trl: " + json.dumps(runs["trl"][-1]), flush=True)
            cache = work_dir / f"cache{r}"
            ours = [sys.executable, "-u", "-m", "safedpo_jax.train", "--preset", "tiny"]
            ours += ["--max-steps", str(args.steps), "--log-every", "1"]
            for side in ("ours_cold", "ours_warm"):
                out = work_dir / f"out{r}{side}"
                run_env = dict(env, SAFEDPO_JAX_CACHE=str(cache))
                runs[side].append(launch([*ours, "--output-dir", str(out)], run_env, FIRST_STEP))
                print(f"{side}: " + json.dumps(runs[side][-1]), flush=True)
    result: dict[str, Any] = {"machine": info, "steps": args.steps, "runs": runs}
    for side, rows in runs.items():
        if rows:
            result[side] = {k: C.median([row[k] for row in rows]) for k in rows[0]}
    if runs["trl"]:
        for key in ("first_step_s", "cpu_s"):
            result[f"warm_over_trl_{key}"] = result["ours_warm"][key] / result["trl"][key]
            result[f"cold_over_trl_{key}"] = result["ours_cold"][key] / result["trl"][key]
    C.emit(result)


if __name__ == "__main__":
    main()
