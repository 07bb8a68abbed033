"""Run a paper config: SFT (where it has one) -> the preference runs -> evaluation.

    python experiments/paper/run.py alpaca7b_methods              # every stage, one host
    python experiments/paper/run.py alpaca7b_methods --plan       # print the commands only
    python experiments/paper/run.py scale_llama3.1-8b --dry-run   # tiny, on 8 fake CPU devices
    python experiments/paper/run.py alpaca7b_methods --distributed --runs-dir /mnt/runs
                                                   # on every worker of a pod: SFT + training
    python experiments/paper/run.py alpaca7b_methods --stages evaluate --runs-dir /mnt/runs
                                                   # then on one worker: evaluation
    python experiments/paper/run.py CONFIG -- --attention-impl cudnn   # extra trainer flags

CONFIG is a name under ``experiments/paper/configs/`` or a path to such a JSON file: an
architecture (a key of ``architectures.json``), a ``group`` (runs live in
``RUNS_DIR/GROUP/RUN``, so configs of one group share runs), the pods it expects, the
TrainConfig fields ``common`` to its runs, an optional ``sft`` stage, the preference
``runs`` and the ``evaluate`` stage; ``expect`` holds the generated estimates
(``estimates.py --write``). ``{group_dir}`` in a string field is ``RUNS_DIR/GROUP``.

Each training stage is its own ``python -m safedpo_jax.train --preset paper ...`` process
(a fresh process per stage: clean memory and one ``jax.distributed`` set-up each); a stage
whose ``OUTPUT_DIR/hf/config.json`` exists is done and skipped, an interrupted one resumes
from its last checkpoint. Evaluation runs ``python -m safedpo_jax.evaluate`` on one host;
with ``--distributed`` (or ``--coordinator-address`` among the extra flags) it is left out
and printed, to be run on one worker afterwards. On several hosts RUNS_DIR must be one
directory that every host sees (NFS, Filestore, a gcsfuse-mounted bucket): checkpoints and
the exported SFT model are read back by every host.

``--dry-run`` runs the same commands at tiny scale in this process: each model becomes a
random 1-layer model of the same family and switches (GQA ratio, tied embeddings, q/k/v
biases, q/k norms, rope scaling, sliding window), the data the embedded sample, the mesh
the config's (data, fsdp, tensor) layout scaled onto at most 8 CPU devices, and each
training stage runs 2 steps (the SFT stage exports its tiny model, which the next stages
load). It proves that every config parses through the trainer's command line, builds its
mesh and compiles. A stage whose model program was already compiled in this process (it
differs only in constants such as delta, or in which pairs it trains on) is parsed, not
compiled again. The evaluation command is parsed by the evaluation command's parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]  # estimates.py; safedpo_jax from a checkout

from estimates import ARCHITECTURES_FILE, CONFIG_DIR, Pod  # noqa: E402

STAGES = ("sft", "train", "evaluate")
FAKE_DEVICES = 8
DRY_RUN_STEPS = 2
DRY_RUN_LENGTH = 64
# config.json keys of the family switches that a tiny stand-in keeps as they are.
SWITCH_KEYS = (
    "model_type",
    "architectures",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "use_sliding_window",
    "max_position_embeddings",
)


# The command each kind of stage runs. A run of ``runs`` is a trainer run unless it names
# another ``stage``: "merge" (P-SACPO's weight merge of two earlier runs' exports) or "ppo"
# (SafeRLHF's PPO-Lagrangian, which takes its own flags, not ``common``).
MODULES = {
    "sft": "safedpo_jax.train",
    "train": "safedpo_jax.train",
    "merge": "safedpo_jax.models.merge",
    "ppo": "safedpo_jax.train.ppo",
    "evaluate": "safedpo_jax.evaluate",
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a config: a trainer, merge or evaluation command and where it writes."""

    name: str
    kind: str  # "sft", "train", "merge", "ppo" or "evaluate"
    argv: tuple[str, ...]  # arguments after ``python -m MODULE``
    output_dir: Path

    @property
    def module(self) -> str:
        return MODULES[self.kind]

    @property
    def done(self) -> bool:
        if self.kind == "evaluate":
            return False
        return (self.output_dir / "hf" / "config.json").exists()

    def command(self, python: str = "python") -> str:
        return shlex.join([python, "-m", self.module, *self.argv])


# ----------------------------------------------------------------------------- configs
def load_config(name_or_path: str) -> dict[str, Any]:
    """A config by name (``configs/NAME.json``) or path, with ``name`` set."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("*.json")))
        raise SystemExit(f"no config {name_or_path!r}; known: {known}")
    config = json.loads(path.read_text())
    config["name"] = path.stem
    return config


def flag_value(value: Any) -> str:
    """A field value as the trainer's command line spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"{value!r} has no command-line spelling; give a file path instead")


def field_flags(fields: Mapping[str, Any]) -> list[str]:
    """``{"max_length": 512}`` -> ``["--max-length", "512"]``."""
    out: list[str] = []
    for key, value in fields.items():
        out += ["--" + key.replace("_", "-"), flag_value(value)]
    return out


def _substitute(fields: Mapping[str, Any], group_dir: Path) -> dict[str, Any]:
    return {
        k: v.format(group_dir=group_dir) if isinstance(v, str) else v for k, v in fields.items()
    }


def stage_fields(config: Mapping[str, Any], group_dir: Path) -> dict[str, dict[str, Any]]:
    """TrainConfig fields of every training stage, in order (``sft`` first)."""
    out: dict[str, dict[str, Any]] = {}
    if config.get("sft"):
        out["sft"] = {**config["common"], **config["sft"]}
    for name, run in config["runs"].items():
        out[name] = (
            dict(run) if run.get("stage", "train") != "train" else {**config["common"], **run}
        )
    return {
        name: {**_substitute(fields, group_dir), "output_dir": str(group_dir / name)}
        for name, fields in out.items()
    }


def plan(
    config: Mapping[str, Any],
    runs_dir: str | Path,
    *,
    stages: Sequence[str] = STAGES,
    only: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> list[Stage]:
    """The stages of ``config`` to run, in order, with their command lines."""
    group_dir = Path(runs_dir) / config["group"]
    out = []
    for name, fields in stage_fields(config, group_dir).items():
        kind = "sft" if name == "sft" else fields.pop("stage", "train")
        selected = "sft" if kind == "sft" else "train"  # --stages train selects every run
        if selected not in stages or (only and name not in only and kind != "sft"):
            continue
        output_dir = Path(fields["output_dir"])
        if kind == "merge":
            argv = (fields["a"], fields["b"], "--q", str(fields["q"]), "--output")
            argv += (str(output_dir / "hf"),)
        elif kind == "ppo":
            argv = ("--preset", "ppo-lag", *field_flags(fields), *extra)
        else:
            argv = ("--preset", "paper", *field_flags(fields), *extra)
        out.append(Stage(name, kind, argv, output_dir))
    evaluate = config.get("evaluate")
    if "evaluate" in stages and evaluate:
        names = list(evaluate["runs"])
        models = [
            evaluate["reference"].format(group_dir=group_dir)
            if name == "reference"
            else str(group_dir / name / "hf")
            for name in names
        ]
        eval_dir = group_dir / f"eval_{config['name']}"
        argv = ("--model", *models, "--name", *names, "--output-dir", str(eval_dir))
        argv += tuple(field_flags(evaluate.get("args", {})))
        out.append(Stage("evaluate", "evaluate", argv, eval_dir))
    return out


def header(config: Mapping[str, Any]) -> str:
    """The config's description and expected pods, time and memory."""
    lines = [f"{config['name']}: {config['about']}", ""]
    expect = config.get("expect", {})
    if expect:
        lines.append(f"expected; {expect['basis']}:")
        for pod in config["pods"]:
            e = expect[pod]
            lines.append(
                f"  {pod:8s} {e['chips']:3d} chips / {e['hosts']} host(s): peak "
                f"{e['peak_memory_gib_per_chip']} GiB per chip of {e['hbm_gib_per_chip']}, "
                f"training {e['train_hours']} h, evaluation {e['evaluate_hours']} h"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dry run
def tiny_architecture(hf: Mapping[str, Any], max_length: int = DRY_RUN_LENGTH) -> dict[str, Any]:
    """A 1-layer stand-in of ``hf`` with the same family switches and GQA ratio.

    Vocabulary and special tokens are left out (the dry run's tokenizer gives them).

    >>> t = tiny_architecture(json.loads(ARCHITECTURES_FILE.read_text())["Qwen/Qwen2.5-7B"])
    >>> t["num_attention_heads"] // t["num_key_value_heads"], t["hidden_size"]
    (7, 224)
    """
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    group = heads // kv
    kv_tiny = 2 if group > 1 else 4
    heads_tiny = kv_tiny * group
    head_dim = 16
    out = {k: hf[k] for k in SWITCH_KEYS if k in hf}
    out.update(
        hidden_size=heads_tiny * head_dim,
        intermediate_size=2 * heads_tiny * head_dim,
        num_hidden_layers=1,
        num_attention_heads=heads_tiny,
        num_key_value_heads=kv_tiny,
        head_dim=head_dim,
    )
    if hf.get("sliding_window") is not None:
        # Small enough to act on the dry run's sequences, so the windowed mask compiles.
        out["sliding_window"] = min(hf["sliding_window"], max_length // 2)
    return out


def scaled_mesh(
    fields: Mapping[str, Any], chips: int, devices: int = FAKE_DEVICES
) -> tuple[int, int, int]:
    """The config's (data, fsdp, tensor) mesh on ``chips``, halved onto <= ``devices``.

    >>> scaled_mesh({"mesh_data": 2, "mesh_fsdp": -1, "mesh_tensor": 1}, 32)
    (2, 4, 1)
    """
    sizes = [fields.get("mesh_data", 1), fields.get("mesh_fsdp", -1), fields.get("mesh_tensor", 1)]
    known = math.prod(s for s in sizes if s != -1)
    sizes = [chips // known if s == -1 else s for s in sizes]
    while math.prod(sizes) > devices:
        i = max(range(3), key=lambda j: sizes[j])
        sizes[i] //= 2 if sizes[i] % 2 == 0 else sizes[i]
    return tuple(sizes)  # type: ignore[return-value]


def dry_run_overrides(
    config: Mapping[str, Any], stage: Stage, fields: Mapping[str, Any], work_dir: Path
) -> list[str]:
    """Trainer flags that shrink one stage of ``config`` to a CPU-sized dry run."""
    data, fsdp, tensor = scaled_mesh(fields, Pod.parse(config["pods"][0]).chips)
    micro = fields.get("micro_batches", 1)
    overrides: dict[str, Any] = {
        "dataset": "sample",
        "dataset_config": None,
        "tokenizer": None,
        "split": "train",
        "eval_split": "test",
        "max_length": DRY_RUN_LENGTH,
        "batch_size": data * fsdp * micro,
        "max_steps": DRY_RUN_STEPS,
        "log_every": 1,
        "save_every": 1000,
        "eval_batches": 1,
        "export": stage.kind == "sft" or _read_by_later_stage(config, stage, work_dir),
        "distributed": False,
        "mesh_data": data,
        "mesh_fsdp": fsdp,
        "mesh_tensor": tensor,
        "ref_cache_dir": str(work_dir / "reference_cache"),
    }
    model = fields.get("model")
    if model is None or not Path(model).exists():  # a Hub id: a tiny random stand-in
        hf = json.loads(ARCHITECTURES_FILE.read_text())[config["architecture"]]
        path = work_dir / "tiny_architecture.json"
        path.write_text(json.dumps(tiny_architecture(hf), indent=2))
        overrides.update(model=None, ref_model=None, model_config=str(path))
    return field_flags(overrides)


def _read_by_later_stage(config: Mapping[str, Any], stage: Stage, work_dir: Path) -> bool:
    """Whether a later stage loads this stage's export (SACPO's stage 2, a merge, PPO)."""
    export = str(work_dir / config["group"] / stage.name / "hf")
    later = plan(config, work_dir)
    names = [s.name for s in later]
    after = later[names.index(stage.name) + 1 :] if stage.name in names else []
    return any(export in arg for s in after if s.kind != "evaluate" for arg in s.argv)


def dry_run(config: Mapping[str, Any], work_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Runs every stage of ``config`` at tiny scale in this process; one summary per stage."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flag = f"--xla_force_host_platform_device_count={FAKE_DEVICES}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    from safedpo_jax.train.config import parse_args
    from safedpo_jax.train.loop import train

    work_dir = Path(work_dir or tempfile.mkdtemp(prefix=f"dry_run_{config['name']}_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    fields_of = stage_fields(config, work_dir / config["group"])
    results: list[dict[str, Any]] = []
    for stage in plan(config, work_dir):
        if stage.kind == "evaluate":
            results.append({"stage": stage.name, "parsed": _parse_evaluate(stage.argv)})
            continue
        if stage.kind == "merge":
            from safedpo_jax.models.merge import main as merge_main

            if merge_main(list(stage.argv)) != 0:
                raise RuntimeError(f"dry run {config['name']}/{stage.name}: the merge failed")
            results.append({"stage": stage.name, "merged": str(stage.output_dir / "hf")})
            print(f"dry run {config['name']}/{stage.name}: merged", flush=True)
            continue
        if stage.kind == "ppo":
            results.append(_dry_run_ppo(config, stage, work_dir))
            continue
        flags = dry_run_overrides(config, stage, fields_of[stage.name], work_dir)
        train_config, _ = parse_args([*stage.argv, *flags])
        summary = {"stage": stage.name, "config": train_config}
        key = program_key(train_config)
        if key in COMPILED and not train_config.export:  # a later stage reads an export
            summary["same_program_as"] = COMPILED[key]
            results.append(summary)
            print(f"dry run {config['name']}/{stage.name}: parsed; the same model program "
                  f"as {COMPILED[key]}, already compiled", flush=True)  # fmt: skip
            continue
        COMPILED[key] = f"{config['name']}/{stage.name}"
        result = train(train_config)
        summary.update(step=result.step, loss=result.metrics["loss"])
        results.append(summary)
        print(f"dry run {config['name']}/{stage.name}: {result.step} steps, "
              f"loss {result.metrics['loss']:.4f}", flush=True)  # fmt: skip
    return results


def _dry_run_ppo(config: Mapping[str, Any], stage: Stage, work_dir: Path) -> dict[str, Any]:
    """The PPO stage at tiny scale: a random actor of the config's family, the sample's
    prompts, the dry run's own reward and cost models (exported by their stages), 2 steps."""
    from safedpo_jax.train.ppo import config_from_args, train_ppo

    ppo = config_from_args(list(stage.argv))
    data, fsdp, tensor = scaled_mesh(
        {"mesh_data": ppo.mesh_data, "mesh_fsdp": ppo.mesh_fsdp, "mesh_tensor": ppo.mesh_tensor},
        Pod.parse(config["pods"][0]).chips,
    )
    overrides: dict[str, Any] = {
        "dataset": "sample",
        "split": "train",
        "tokenizer": None,
        "max_length": DRY_RUN_LENGTH,
        "max_new_tokens": 8,
        "prompt_batch_size": data * fsdp,
        "max_steps": DRY_RUN_STEPS,
        "save_every": 1000,
        "export": False,
        "mesh_data": data,
        "mesh_fsdp": fsdp,
        "mesh_tensor": tensor,
    }
    if ppo.actor is None or not Path(ppo.actor).exists():  # a Hub id: a tiny random stand-in
        hf = json.loads(ARCHITECTURES_FILE.read_text())[config["architecture"]]
        overrides.update(actor=None, model_config=tiny_architecture(hf))
    result = train_ppo(dataclasses.replace(ppo, **overrides))
    print(f"dry run {config['name']}/{stage.name}: {result.step} PPO-Lagrangian steps", flush=True)
    return {"stage": stage.name, "step": result.step}


# Fields that leave the dry run's model program as it is: constants of the step (delta,
# learning rate, ...), paths, and ``pairs``, which picks the pairs and the loss kernel's
# safe or plain branch (both branches are compiled by the trainer's own tests).
VALUE_FIELDS = frozenset(
    {
        "beta", "delta", "label_smoothing", "learning_rate", "warmup_ratio", "weight_decay",
        "adam_b1", "adam_b2", "adam_eps", "max_grad_norm", "epochs", "seed", "pairs",
        "output_dir", "ref_cache_dir",
    }
)  # fmt: skip
# Model programs compiled by dry runs in this process: key -> "config/stage".
COMPILED: dict[tuple, str] = {}


def program_key(config: Any) -> tuple:
    """What decides a dry run's compiled model program: every field but `VALUE_FIELDS`
    (the tiny architecture by content, the SFT export by path)."""
    fields = dataclasses.asdict(config)
    return tuple(sorted((k, repr(v)) for k, v in fields.items() if k not in VALUE_FIELDS))


def _parse_evaluate(argv: Sequence[str]) -> bool:
    """Parses the evaluation command with its own parser (False: the module is missing)."""
    try:
        from safedpo_jax.evaluate.cli import parser
    except ImportError:
        print("dry run: safedpo_jax.evaluate is not installed; evaluation command not checked")
        return False
    parser().parse_args(list(argv))
    return True


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a name under experiments/paper/configs/ or a JSON path")
    parser.add_argument("--runs-dir", default="runs/paper", help="where the groups live")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}"
    )
    parser.add_argument("--only", nargs="+", metavar="RUN", help="only these preference runs")
    parser.add_argument(
        "--distributed", action="store_true", help="multi-host: add --distributed true"
    )
    parser.add_argument("--plan", action="store_true", help="print the commands; run nothing")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU run of every stage")
    parser.add_argument("--dry-run-dir", help="work directory of --dry-run (default: a temp dir)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to launch")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    print(header(config), flush=True)
    if args.dry_run:
        dry_run(config, args.dry_run_dir)
        return 0

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if args.distributed:
        extra = ["--distributed", "true", *extra]
    multi_host = args.distributed or "--coordinator-address" in extra
    steps = plan(config, args.runs_dir, stages=stages, only=args.only, extra=extra)
    deferred = [s for s in steps if s.kind == "evaluate" and multi_host]
    steps = [s for s in steps if s not in deferred]
    # The trainer imports safedpo_jax from this checkout when the package is not installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    for stage in steps:
        command = stage.command(args.python)
        if stage.done:
            print(f"\n[{stage.name}] done ({stage.output_dir}/hf exists); skipped", flush=True)
            continue
        print(f"\n[{stage.name}] {command}", flush=True)
        if not args.plan:
            subprocess.run([args.python, "-m", stage.module, *stage.argv], check=True, env=env)
    if deferred:
        print(
            "\n[evaluate] runs on one host; after training, on one worker:\n"
            f"  python experiments/paper/run.py {config['name']} --stages evaluate "
            f"--runs-dir {args.runs_dir}\n  which runs: {deferred[0].command('python')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
