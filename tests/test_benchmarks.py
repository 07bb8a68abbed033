"""Every benchmark's ``--smoke`` mode runs end to end, so that the scripts cannot rot.

Benchmarks are not tests: their figures come from full runs recorded in
experiments/benchmarks/RESULTS.md. These only check that each script runs on tiny sizes
and ends with its JSON line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "experiments" / "benchmarks"


def run_smoke(script: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device, as the scripts run by hand
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_logprob_memory_smoke():
    result = run_smoke("logprob_memory.py")
    (row,) = result["results"].values()
    assert row["max_value_rel_diff"] < 1e-5
    assert row["chunk64_temp_ratio"] > 1


def test_mfu_smoke():
    result = run_smoke("mfu.py")
    assert result["mfu"] > 0 and result["peak_gflops"] > 0


def test_reference_cache_smoke():
    result = run_smoke("reference_cache.py")
    assert result["results"]["tiny"]["flop_ratio"] == pytest.approx(0.75, abs=0.05)


@pytest.mark.slow
def test_gpu_mfu_smoke():
    result = run_smoke("gpu_mfu.py")
    assert result["mfu"] > 0
    assert result["checks"]["logits"]["right_padded"]["pass"]
    assert result["checks"]["train_step"]["pass"]


@pytest.mark.slow
def test_vs_trl_smoke():
    result = run_smoke("vs_trl.py")
    for key in ("ours_tokens_per_s", "trl_tokens_per_s", "speedup"):
        assert result[key] > 0
    assert result["ours_first_loss"] == pytest.approx(result["trl_first_loss"], rel=1e-4)


def test_dense_layout_smoke():
    result = run_smoke("dense_layout.py")
    assert result["grads_equal"]


def test_generation_vs_hf_smoke():
    result = run_smoke("generation_vs_hf.py")
    greedy = result["results"]["greedy"]
    # float32: our cached decoding and Hugging Face's take the same greedy path
    assert greedy["first_token_agreement"] == 1.0
    assert greedy["mean_common_prefix"] == result["new_tokens"]
    assert result["results"]["top_p"]["ours_tokens_per_s"] > 0


@pytest.mark.slow
def test_lora_memory_smoke():
    result = run_smoke("lora_memory.py")
    (round_,) = result["rounds"]
    assert round_["lora"]["trainable_params"] < round_["full"]["trainable_params"] / 10
    row = result["estimates"]["7B on 1x H100 80GB"]
    assert not row["full"]["fits"] and row["lora16_bf16_base"]["fits"]


@pytest.mark.slow
def test_warm_start_smoke():
    result = run_smoke("warm_start.py")
    assert result["ours_warm"]["cpu_s"] < result["ours_cold"]["cpu_s"]


@pytest.mark.slow
def test_memory_phases_smoke():
    result = run_smoke("memory_phases.py")
    ours = result["results"]["1000"]["ours"]
    assert set(ours["phases"]) == {"imports", "load", "setup", "compile", "step1", "steps"}
    assert ours["phases"]["compile"]["xla_mib"]["temp"] >= 0


@pytest.mark.slow
def test_compile_depth_smoke():
    result = run_smoke("compile_depth.py")
    row = result["compile"]["tiny:1"]
    assert row["scan"]["total_cpu_s"] > 0 and row["unrolled"]["hlo_chars"] > 0
    assert result["step"]["unrolled_over_scanned"] > 0


@pytest.mark.slow
def test_packing_smoke():
    result = run_smoke("packing.py")
    assert result["max_loss_abs_diff"] < 1e-4
    assert abs(result["grad_norm_packed"] / result["grad_norm_padded"] - 1) < 1e-5
    assert result["packed_fill"] > result["padded_fill"]
    assert result["tokens_metric"]["packed"] == result["tokens_metric"]["padded"]


@pytest.mark.slow
def test_float32_error_smoke():
    result = run_smoke("float32_error.py")
    remat = result["remat"]
    # the tolerance of tests/models/test_models_numerics.py's remat tests rests on this
    assert remat["scan/remat=True vs scan/remat=False"] < remat["scan/remat=False vs float64"]
