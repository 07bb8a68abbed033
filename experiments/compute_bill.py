"""The compute bill: SafeDPO's pipeline against SafeRLHF's and SACPO's, stage by stage.

    scripts/run experiments/compute_bill.py [--full] [--repeats 3] \
        [--output-dir runs/compute_bill] [--results-dir experiments/results]

The world, models and budgets are `synthetic_safety`'s (quick budget by default, ``--full``
for the full one). One SFT reference is trained first (shared by every pipeline, so not
billed); then, from it, each repeat runs every stage of every pipeline in a fresh Python
process of its own, in order:

- SafeDPO: the reference pass (the cached reference log-probs a ``reference="cached"`` run
  computes first), then training (which reads that cache).
- SafeRLHF: the reward model, the cost model, PPO-Lagrangian (rollout generation with the
  KV cache, scoring by the reward and cost models, experience passes and updates).
- SACPO: stage 1 = DPO-HELPFUL (its reference pass, its training), stage 2 = DPO on the
  harmlessness order from stage 1 at beta 0.01 (its reference pass, its training).
- P-SACPO: SACPO, then the weight merge (q = 0.5).

Each stage reports its wall time (the stage's work in its process, after the imports:
set-up, data, compiling, running, export), the FLOPs XLA counts for every compiled call
it made (`safedpo_jax.costs`: generation counts its prefill and every decode step that
ran), XLA's memory estimate of its largest program, and the process's peak resident
memory (``ru_maxrss``; the imports alone, the ``baseline``, are reported too). Pipelines
add their stages (time, FLOPs; memory is the largest stage's) and are given as ratios to
SafeDPO's. Wall times are mean ± standard error over the repeats. PPO's phases come from
its own timers and share one process (one peak memory).

Beside the measurement: the paper-scale estimates of `experiments/paper/estimates.py`
(the 7B configs on 8xH100, from FLOPs and an assumed utilisation, not measured) and the
paper's reported training times (about 1,400 s for SafeDPO, 35,000 s for SafeRLHF).

Writes ``compute_bill.json``, ``compute_bill.md`` and ``compute_bill.png`` (stacked bars of
time and FLOPs per pipeline by stage) to the results directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synthetic_safety as ss  # noqa: E402

from safedpo_jax.train.config import TrainConfig  # noqa: E402

# The paper's reported training times for the 7B runs (third-party reading of its appendix;
# /work/shared/docs/safedpo.md section 6), seconds.
PAPER_SECONDS = {"SafeDPO": 1_400.0, "SafeRLHF": 35_000.0}
PAPER_POD = "8xH100"
SACPO_BETA = ss.SACPO_BETA

# (pipeline, stage label, kind, run name, fields). Kinds: "prepare" (a run's set-up and
# reference pass), "train", "ppo", "merge". A stage's model is the SFT reference unless
# fields name "model_run" (a run of an earlier stage).
STAGES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("SafeDPO", "reference pass", "prepare", "safedpo", {"pairs": "safedpo"}),
    ("SafeDPO", "training", "train", "safedpo", {"pairs": "safedpo"}),
    ("SafeRLHF", "reward model", "train", "saferlhf_reward", {"objective": "reward"}),
    ("SafeRLHF", "cost model", "train", "saferlhf_cost", {"objective": "cost"}),
    ("SafeRLHF", "PPO-Lagrangian", "ppo", "saferlhf", {}),
    ("SACPO", "stage 1 reference pass", "prepare", "helpful", {"pairs": "helpful"}),
    ("SACPO", "stage 1 training", "train", "helpful", {"pairs": "helpful"}),
    (
        "SACPO",
        "stage 2 reference pass",
        "prepare",
        "sacpo",
        {"pairs": "harmless", "beta": SACPO_BETA, "model_run": "helpful"},
    ),
    (
        "SACPO",
        "stage 2 training",
        "train",
        "sacpo",
        {"pairs": "harmless", "beta": SACPO_BETA, "model_run": "helpful"},
    ),
    ("P-SACPO", "merge (q=0.5)", "merge", "p-sacpo", {"q": 0.5, "a": "helpful", "b": "sacpo"}),
)
PIPELINES = {
    "SafeDPO": ("SafeDPO",),
    "SafeRLHF": ("SafeRLHF",),
    "SACPO": ("SACPO",),
    "P-SACPO": ("SACPO", "P-SACPO"),
}
# PPO's phases: its own timers (time/<phase>_s per step) and the functions counted in each.
PPO_PHASES = {
    "generation": ("generate",),
    "scoring": ("score_reward", "score_cost"),
    "update": ("experience", "push_costs", "update"),
}
PPO_PHASE_LABELS = {
    "generation": "PPO: rollout generation",
    "scoring": "PPO: reward + cost scoring",
    "update": "PPO: experience passes + updates",
    "other": "PPO: set-up, compiling, export",
}


# ------------------------------------------------------------------------------ a stage
def _config(spec: dict[str, Any]) -> Any:
    """The `TrainConfig` (or `PPOConfig`) of one stage, as `synthetic_safety` builds it,
    with no loop XLA would count once (`safedpo_jax.costs`): the decoder's layers unrolled
    (the same parameters and numbers, counted layer by layer), full logits instead of the
    chunked log-prob path's scan over chunks, one microbatch (the step scans its
    microbatches)."""
    config = _stage_config(spec)
    if isinstance(config, TrainConfig):  # full logits: the chunked path scans its chunks
        config = dataclasses.replace(config, logprob_chunk_size=0, micro_batches=1)
    return dataclasses.replace(config, scan_layers=False)


def _stage_config(spec: dict[str, Any]) -> Any:
    setup = ss.WorldSetup(**spec["setup"])
    out, reference = Path(spec["dir"]), Path(spec["reference"])
    fields = dict(spec["fields"])
    runs = out / "runs"
    model = runs / fields.pop("model_run") / "hf" if "model_run" in fields else reference
    ctx = ss.MethodContext(setup, out, reference, {})
    if spec["kind"] == "ppo":
        config = ss.saferlhf_ppo_config(
            ctx,
            spec["run"],
            runs / f"{spec['run']}_reward" / "hf",
            runs / f"{spec['run']}_cost" / "hf",
        )
        if spec.get("ppo_epochs"):
            config = dataclasses.replace(config, epochs=spec["ppo_epochs"])
        return config
    if "pairs" in fields and model == reference and "beta" not in fields:
        config = ss.method_config(setup, out, reference, fields["pairs"], name=spec["run"])
    else:
        config = ctx.config(spec["run"], model=model, **fields)
    if spec["kind"] == "prepare":  # its own directory; the cache is the one training reads
        config = dataclasses.replace(config, output_dir=f"{config.output_dir}_reference_pass")
    return config


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one stage in this process; returns its wall time, compute and memory."""
    from safedpo_jax import costs
    from safedpo_jax.train import loop

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kind = spec["kind"]
    start = time.perf_counter()
    if kind == "sft":
        sft = ss.reference_config(ss.WorldSetup(**spec["setup"]), Path(spec["dir"]))
        result = loop.train(dataclasses.replace(sft, scan_layers=False))
        compute = result.compute
    elif kind == "prepare":
        ledger = costs.Ledger()
        config = _config(spec)
        with costs.recording(ledger):
            run = loop.prepare(config)
        compute = loop.compute_summary(
            ledger, {"prepare": time.perf_counter() - start, **run.seconds}
        )
    elif kind == "train":
        compute = loop.train(_config(spec)).compute
    elif kind == "ppo":
        from safedpo_jax.train.ppo import train_ppo

        compute = train_ppo(_config(spec)).compute
    elif kind == "merge":
        from safedpo_jax.models.merge import merge_checkpoints

        runs = Path(spec["dir"]) / "runs"
        f = spec["fields"]
        out = runs / spec["run"] / "hf"
        merge_checkpoints(runs / f["a"] / "hf", runs / f["b"] / "hf", q=f["q"], output=out)
        compute = {"seconds": {}, "flops": 0.0, "functions": {}}  # numpy arithmetic, no XLA
    else:
        raise ValueError(f"unknown stage kind {kind!r}")
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "compute": compute,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss_bytes": baseline,
    }


def spawn(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runs `run_stage` in a fresh Python process; adds the process's own wall time."""
    name = f"{spec['pipeline']}_{spec['label']}".replace(" ", "_").replace("/", "_")
    spec_file = workdir / f"stage_{name}.json"
    result_file = workdir / f"result_{name}.json"
    spec_file.write_text(json.dumps({**spec, "result": str(result_file)}, indent=2))
    log = workdir / f"log_{name}.txt"
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--stage-spec", str(spec_file)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"stage {spec['pipeline']} / {spec['label']} failed ({log}):\n{tail}")
    out = json.loads(result_file.read_text())
    out["process_s"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------------------ the bill
def mean_se(values: list[float]) -> dict[str, Any]:
    return ss.mean_se([float(v) for v in values])


def stage_rows(
    repeats: list[dict[str, dict[str, Any]]], pipelines: list[str]
) -> list[dict[str, Any]]:
    """One row per stage (PPO also per phase): wall time, FLOPs, memory over the repeats."""
    rows = []
    for pipeline, label, kind, _, _ in STAGES:
        key = f"{pipeline}/{label}"
        if key not in repeats[0]:
            continue
        results = [r[key] for r in repeats]
        flops = [r["compute"]["flops"] for r in results]
        xla_peak = [
            max((f["memory"] or {}).get("peak", 0) for f in r["compute"]["functions"].values())
            if r["compute"]["functions"]
            else 0
            for r in results
        ]
        row = {
            "pipeline": pipeline,
            "stage": label,
            "kind": kind,
            "wall_s": mean_se([r["wall_s"] for r in results]),
            "process_s": mean_se([r["process_s"] for r in results]),
            "flops": mean_se(flops),
            "peak_rss_mib": mean_se([r["peak_rss_bytes"] / 2**20 for r in results]),
            "baseline_rss_mib": mean_se([r["baseline_rss_bytes"] / 2**20 for r in results]),
            "xla_program_peak_mib": max(xla_peak) / 2**20,
            "functions": {
                name: {"calls": f["calls"], "flops": f["flops"], "variants": f["variants"]}
                for name, f in results[0]["compute"]["functions"].items()
            },
        }
        functions = results[0]["compute"]["functions"]
        row["steps"] = (
            results[0]["compute"]["steps_run"]
            if kind == "ppo"
            else functions.get("train_step", {}).get("calls")
        )
        if kind == "ppo":
            row["phases"] = ppo_phases(results)
            row["generated_tokens"] = results[0]["compute"]["generated_tokens"]
            row["decode_steps"] = (
                results[0]["compute"]["functions"]["generate"]["loop_trips"]
                + (results[0]["compute"]["functions"]["generate"]["calls"])
            )
        rows.append(row)
    return rows


def ppo_phases(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """PPO's phases: seconds from its timers (the rest of the stage is "other") and FLOPs of
    the functions each phase calls."""
    out = {}
    for phase, names in PPO_PHASES.items():
        secs = [r["compute"]["seconds"][phase] for r in results]
        flops = [
            sum(r["compute"]["functions"].get(n, {}).get("flops", 0.0) for n in names)
            for r in results
        ]
        out[phase] = {"wall_s": mean_se(secs), "flops": mean_se(flops)}
    other = [r["wall_s"] - sum(r["compute"]["seconds"][p] for p in PPO_PHASES) for r in results]
    out["other"] = {"wall_s": mean_se(other), "flops": mean_se([0.0] * len(results))}
    return out


def pipeline_totals(
    repeats: list[dict[str, dict[str, Any]]], pipelines: list[str]
) -> dict[str, dict[str, Any]]:
    """Per pipeline: wall time and FLOPs summed over its stages (per repeat, then mean ± SE),
    peak RSS the largest stage's, and each as a ratio to SafeDPO's (ratio of the means)."""
    totals = {}
    for name, parts in PIPELINES.items():
        if name not in pipelines:
            continue
        keys = [f"{p}/{label}" for p, label, *_ in STAGES if p in parts]
        wall = [sum(r[k]["wall_s"] for k in keys) for r in repeats]
        flops = [sum(r[k]["compute"]["flops"] for k in keys) for r in repeats]
        rss = [max(r[k]["peak_rss_bytes"] for k in keys) / 2**20 for r in repeats]
        totals[name] = {
            "stages": keys,
            "wall_s": mean_se(wall),
            "flops": mean_se(flops),
            "peak_rss_mib": mean_se(rss),
        }
    base = totals["SafeDPO"]
    for t in totals.values():
        t["ratio_to_safedpo"] = {
            k: t[k]["mean"] / base[k]["mean"] for k in ("wall_s", "flops", "peak_rss_mib")
        }
        # the spread of the time ratio over repeats (paired by repeat)
        per_repeat = [
            sum(r[k]["wall_s"] for k in t["stages"]) / sum(r[k]["wall_s"] for k in base["stages"])
            for r in repeats
        ]
        t["time_ratio_per_repeat"] = mean_se(per_repeat)
    return totals


def paper_estimates() -> dict[str, Any]:
    """The paper-scale estimates (`experiments/paper/estimates.py`, the 7B configs on
    ``PAPER_POD``): hours per stage and per pipeline, and ratios to SafeDPO's."""
    sys.path.insert(0, str(HERE / "paper"))
    try:
        import estimates
    finally:
        sys.path.remove(str(HERE / "paper"))
    configs = {
        name: json.loads((estimates.CONFIG_DIR / f"{name}.json").read_text())
        for name in ("alpaca7b_methods", "alpaca7b_baselines")
    }
    hours = {
        name: estimates.config_estimates(config)[PAPER_POD]["stage_hours"]
        for name, config in configs.items()
    }
    m, b = hours["alpaca7b_methods"], hours["alpaca7b_baselines"]
    stages = {
        "SafeDPO": {"training": m["safedpo_delta10"]},
        "SafeRLHF": {
            "reward model": b["reward_model"],
            "cost model": b["cost_model"],
            "PPO-Lagrangian": b["saferlhf_ppo"],
        },
        "SACPO": {"stage 1 (DPO-HELPFUL)": b["sacpo_helpful"], "stage 2": b["sacpo_dpo_b0.01"]},
    }
    stages["P-SACPO"] = {**stages["SACPO"], "merge": 0.0}
    totals = {k: sum(v.values()) for k, v in stages.items()}
    return {
        "source": "experiments/paper/estimates.py (config_estimates), configs "
        "alpaca7b_methods.json and alpaca7b_baselines.json",
        "pod": PAPER_POD,
        "basis": estimates.BASIS,
        "stage_hours": stages,
        "pipeline_hours": totals,
        "ratio_to_safedpo": {k: v / totals["SafeDPO"] for k, v in totals.items()},
        "note": "SafeDPO's reference pass is not in the estimate's stages (the 7B config "
        "computes the reference in the step); P-SACPO's merge is I/O, not estimated.",
    }


# ------------------------------------------------------------------------------ output
def _fmt_s(stats: dict[str, Any]) -> str:
    se = stats["se"]
    return f"{stats['mean']:.1f}" + ("" if se is None else f" ± {se:.1f}")


def _fmt_flops(value: float) -> str:
    return f"{value / 1e12:.3f}" if value >= 1e9 else f"{value / 1e12:.5f}"


def render(payload: dict[str, Any]) -> str:
    """The whole ``.md``: what was run, where, under what load, then `bill_markdown`."""
    setup, m, load = payload["setup"], payload["machine"], payload["load_average"]
    return (
        f"Compute bill, {payload['budget']} budget (`synthetic_safety` world `{setup['world']}`,"
        f" {setup['steps']} steps of {setup['batch_size']} pairs; PPO "
        + (
            f"{payload['ppo_epochs']} epoch(s) over the training prompts, "
            if payload.get("ppo_epochs")
            else f"{setup['steps']} rollout steps, "
        )
        + f"{setup['batch_size']} prompts a step, {setup['max_new_tokens']} new tokens); "
        f"{m['cpu']}, {m['cpus']} CPUs; load average {load['before'][0]:.1f} before, "
        f"{', '.join(f'{x[0]:.1f}' for x in load['after_each_repeat'])} after each repeat; "
        f"{payload['seconds']:.0f} s.\n\n" + bill_markdown(payload)
    )


def _uncounted_note(payload: dict[str, Any]) -> str:
    """The loops whose later trips XLA leaves out of the counts, by the function that holds
    them and the JAX operation that made them (`safedpo_jax.costs.uncounted_loops`)."""
    found: dict[str, int] = {}
    for stage in payload["per_repeat"][0].values():
        for name, entry in stage["compute"].get("functions", {}).items():
            for op, trips in (entry.get("uncounted_loops") or {}).items():
                parts = op.split("/")
                what = next((q for q in parts if "threefry" in q), op)
                key = f"`{name}`: {what}"
                found[key] = max(found.get(key, 0), trips)
    if not found:
        return "no loop trips are left out of the counts."
    listed = "; ".join(f"{k} ({v} trips)" for k, v in sorted(found.items()))
    return (
        f"loops whose later trips XLA leaves out of the counts: {listed} (threefry rounds "
        "of random draws and key splits, and in PPO's `experience` GAE's reverse scans over the "
        "response tokens: integer or elementwise work on a few values per token, no matmul)."
    )


def bill_markdown(payload: dict[str, Any]) -> str:
    """The bill as Markdown: per stage, per pipeline (ratios), then the paper's figures."""
    rows, totals, n = payload["stages"], payload["pipelines"], payload["repeats"]
    lines = [
        f"Mean ± standard error over {n} repeats; FLOPs are XLA's counts of the calls that ran "
        "(TFLOP); peak RSS is the stage's own process (imports alone: "
        f"{payload['baseline_rss_mib']:.0f} MiB); XLA peak is the estimate for the stage's "
        "largest compiled program. Ratios are to SafeDPO's: of the means, and (time) the "
        "mean ± SE of the ratios paired by repeat. The decoder's layers run unrolled, so "
        "XLA counts every layer; " + _uncounted_note(payload),
        "",
        "| pipeline | stage | steps | wall time (s) | TFLOP | peak RSS (MiB) | XLA peak (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        steps = "" if row.get("steps") is None else row["steps"]
        lines.append(
            f"| {row['pipeline']} | {row['stage']} | {steps} | {_fmt_s(row['wall_s'])} "
            f"| {_fmt_flops(row['flops']['mean'])} | {row['peak_rss_mib']['mean']:.0f} "
            f"| {row['xla_program_peak_mib']:.1f} |"
        )
        for phase, stats in row.get("phases", {}).items():
            lines.append(
                f"| {row['pipeline']} | &nbsp;&nbsp;{PPO_PHASE_LABELS[phase]} | "
                f"| {_fmt_s(stats['wall_s'])} | {_fmt_flops(stats['flops']['mean'])} | | |"
            )
    lines += [
        "",
        "| pipeline | stages | wall time (s) | time ratio | time ratio per repeat | TFLOP "
        "| FLOP ratio | peak RSS (MiB) | RSS ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in totals.items():
        r = t["ratio_to_safedpo"]
        per = t["time_ratio_per_repeat"]
        spread = "" if per["se"] is None else f" ± {per['se']:.2f}"
        lines.append(
            f"| {name} | {len(t['stages'])} | {_fmt_s(t['wall_s'])} | {r['wall_s']:.2f} "
            f"| {per['mean']:.2f}{spread} | {_fmt_flops(t['flops']['mean'])} | {r['flops']:.2f} "
            f"| {t['peak_rss_mib']['mean']:.0f} | {r['peak_rss_mib']:.2f} |"
        )
    est = payload["paper_estimates"]
    lines += [
        "",
        f"Paper scale, **estimated** (`experiments/paper/estimates.py`, 7B configs on "
        f"{est['pod']}; from FLOPs and an assumed utilisation, nothing measured):",
        "",
        "| pipeline | estimated hours | ratio to SafeDPO |",
        "|---|---:|---:|",
    ]
    for name, hours in est["pipeline_hours"].items():
        lines.append(f"| {name} | {hours:.2f} | {est['ratio_to_safedpo'][name]:.2f} |")
    paper = payload["paper_reported"]
    lines += [
        "",
        f"The **paper's reported** training times (7B; third-party reading of its appendix): "
        f"SafeDPO about {paper['SafeDPO']:,.0f} s, SafeRLHF about {paper['SafeRLHF']:,.0f} s "
        f"(ratio {paper['SafeRLHF'] / paper['SafeDPO']:.0f}).",
    ]
    return "\n".join(lines) + "\n"


STAGE_COLORS = {
    "reference pass": "#9ecae1",
    "training": "#3182bd",
    "reward model": "#fdae6b",
    "cost model": "#e6550d",
    "generation": "#a1d99b",
    "scoring": "#31a354",
    "update": "#006d2c",
    "other": "#c7e9c0",
    "stage 1 reference pass": "#e7d4e8",
    "stage 1 training": "#c2a5cf",
    "stage 2 reference pass": "#9970ab",
    "stage 2 training": "#542788",
    "merge (q=0.5)": "#636363",
}


def bill_segments(payload: dict[str, Any]) -> dict[str, list[tuple[str, float, float]]]:
    """Per pipeline: (stage label, seconds, FLOPs) in order, PPO split into its phases."""
    by_key = {f"{r['pipeline']}/{r['stage']}": r for r in payload["stages"]}
    out = {}
    for name, t in payload["pipelines"].items():
        segs = []
        for key in t["stages"]:
            row = by_key[key]
            if "phases" in row:
                for phase, stats in row["phases"].items():
                    segs.append((phase, stats["wall_s"]["mean"], stats["flops"]["mean"]))
            else:
                segs.append((row["stage"], row["wall_s"]["mean"], row["flops"]["mean"]))
        out[name] = segs
    return out


def bill_figure(payload: dict[str, Any]) -> Any:
    """Stacked bars per pipeline by stage: wall time (left) and counted FLOPs (right), each
    bar labelled with its ratio to SafeDPO."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    segments = bill_segments(payload)
    names = list(segments)
    fig = Figure(figsize=(12.5, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, index, title, scale, unit in (
        (axes[0], 1, "wall time", 1.0, "seconds (this CPU)"),
        (axes[1], 2, "counted FLOPs", 1e12, "TFLOP (XLA's count)"),
    ):
        totals = []
        for x, name in enumerate(names):
            bottom = 0.0
            for seg in segments[name]:
                height = seg[index] / scale
                ax.bar(x, height, bottom=bottom, width=0.6, color=STAGE_COLORS[seg[0]],
                       edgecolor="white", linewidth=0.6)  # fmt: skip
                bottom += height
            totals.append(bottom)
        for x, total in enumerate(totals):
            ratio = total / totals[0] if totals[0] else float("nan")
            ax.text(x, total * 1.01, f"{ratio:.1f}×", ha="center", va="bottom", fontsize=10)
        ax.set_xticks(range(len(names)), names, fontsize=10)
        ax.set_ylim(0, max(totals) * 1.12)
        ax.set_ylabel(unit, fontsize=10)
        ax.set_title(f"{title} per pipeline (× SafeDPO's)", fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
    used = {s[0] for segs in segments.values() for s in segs}
    labels = {**{k: k for k in STAGE_COLORS}, **{k: v for k, v in PPO_PHASE_LABELS.items()}}
    handles = [Patch(color=c, label=labels[k]) for k, c in STAGE_COLORS.items() if k in used]
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    n = payload["repeats"]
    fig.suptitle(f"The compute bill on this machine (mean of {n} repeats)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.77, 0.95))
    return fig


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()}


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/compute_bill"))
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--full", action="store_true", help="the full budget (default: quick)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every stage (>= 1)")
    parser.add_argument("--steps", type=int, help="override the training/PPO steps (tests)")
    parser.add_argument("--sft-steps", type=int, help="override the SFT steps (tests)")
    parser.add_argument("--max-new-tokens", type=int, help="override PPO's new tokens (tests)")
    parser.add_argument(
        "--pipelines",
        nargs="+",
        choices=list(PIPELINES),
        default=list(PIPELINES),
        help="bill only these pipelines (SafeDPO's always runs: the ratios' base)",
    )
    parser.add_argument(
        "--ppo-epochs",
        type=int,
        help="PPO's passes over the training prompts (default: as the comparison runs it, "
        "enough passes for the preference methods' number of steps)",
    )
    parser.add_argument(
        "--name", default="compute_bill", help="the results files' stem (default compute_bill)"
    )
    parser.add_argument(
        "--render", type=Path, help="rewrite the .md and .png of a recorded bill's JSON and stop"
    )
    parser.add_argument("--stage-spec", type=Path, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.render is not None:  # tables and figure again from a recorded JSON
        payload = json.loads(args.render.read_text())
        wanted = list(payload["pipelines"])  # the derived rows again, from the raw repeats
        payload["stages"] = stage_rows(payload["per_repeat"], wanted)
        payload["pipelines"] = pipeline_totals(payload["per_repeat"], wanted)
        args.render.write_text(json.dumps(payload, indent=2))
        args.render.with_suffix(".md").write_text(render(payload))
        bill_figure(payload).savefig(args.render.with_suffix(".png"), format="png")
        return 0
    if args.stage_spec is not None:
        spec = json.loads(args.stage_spec.read_text())
        Path(spec["result"]).write_text(json.dumps(run_stage(spec), indent=2))
        return 0
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    wanted = ["SafeDPO", *(p for p in args.pipelines if p != "SafeDPO")]
    setup = ss.WorldSetup() if args.full else ss.WorldSetup.quick()
    overrides = {
        "steps": args.steps,
        "sft_steps": args.sft_steps,
        "max_new_tokens": args.max_new_tokens,
    }
    setup = dataclasses.replace(setup, **{k: v for k, v in overrides.items() if v is not None})
    out: Path = args.output_dir
    if out.exists():
        shutil.rmtree(out)  # every stage computes afresh (no reused caches or checkpoints)
    out.mkdir(parents=True)
    asdict = dataclasses.asdict(setup)
    load_before = os.getloadavg()
    started = time.perf_counter()

    print("SFT reference (shared by every pipeline, not billed) ...", flush=True)
    sft_dir = out / "sft"
    sft_dir.mkdir()
    sft = spawn({"pipeline": "shared", "label": "sft", "kind": "sft", "setup": asdict,
                 "dir": str(sft_dir)}, sft_dir)  # fmt: skip
    reference = sft_dir / "runs" / "sft" / "hf"

    repeats: list[dict[str, dict[str, Any]]] = []
    loads = []
    for k in range(args.repeats):
        rep = out / f"repeat{k}"
        rep.mkdir()
        results = {}
        for pipeline, label, kind, run, fields in STAGES:
            if not any(pipeline in PIPELINES[p] for p in wanted):
                continue
            spec = {"pipeline": pipeline, "label": label, "kind": kind, "run": run,
                    "fields": fields, "setup": asdict, "dir": str(rep),
                    "reference": str(reference), "ppo_epochs": args.ppo_epochs}  # fmt: skip
            results[f"{pipeline}/{label}"] = result = spawn(spec, rep)
            print(
                f"repeat {k}: {pipeline} / {label}: {result['wall_s']:.1f} s, "
                f"{result['compute']['flops'] / 1e12:.4f} TFLOP, "
                f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
        repeats.append(results)
        loads.append(os.getloadavg())
    elapsed = time.perf_counter() - started

    baseline = [r["baseline_rss_bytes"] for rep in repeats for r in rep.values()]
    payload = {
        "setup": asdict,
        "budget": "full" if args.full else "quick",
        "ppo_epochs": args.ppo_epochs,  # None: the comparison's (`saferlhf_ppo_config`)
        "repeats": args.repeats,
        "machine": machine(),
        "load_average": {"before": load_before, "after_each_repeat": loads},
        "seconds": elapsed,
        "baseline_rss_mib": sum(baseline) / len(baseline) / 2**20,
        "sft": {
            "wall_s": sft["wall_s"],
            "flops": sft["compute"]["flops"],
            "peak_rss_mib": sft["peak_rss_bytes"] / 2**20,
        },  # fmt: skip
        "stages": stage_rows(repeats, wanted),
        "pipelines": pipeline_totals(repeats, wanted),
        "paper_estimates": paper_estimates(),
        "paper_reported": PAPER_SECONDS,
        "per_repeat": repeats,
    }
    text = render(payload)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / args.name
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    bill_figure(payload).savefig(stem.with_suffix(".png"), format="png")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
