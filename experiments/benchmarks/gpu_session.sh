#!/usr/bin/env bash
# Every GPU check and the GPU benchmarks in one go, for a lent H100/H200 (about 9 minutes):
#   1. gpu_mfu.py            cuDNN vs XLA attention checks, then the 1B train-step MFU
#   2. gpu_models_check.py   CPU/GPU log-prob drift, bf16 attention paths, cache decoding
#   3. gpu_eval_check.py     generation (cached == full forwards, seeded sampling, speed), the command
#   4. generation_vs_hf.py   our generation against Hugging Face generate (bf16 and float32)
# Logs go to $OUT (or ./gpu_logs). Each part has its own time limit so one hang cannot eat the rest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
out="${OUT:-gpu_logs}"
mkdir -p "$out"
export PYTHONPATH=".:experiments/benchmarks" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
timeout 230 python3 experiments/benchmarks/gpu_mfu.py --budget-s 110 2>&1 | tee "$out/gpu_mfu.log"
timeout 60 python3 experiments/benchmarks/gpu_models_check.py 2>&1 | tee "$out/gpu_models_check.log"
timeout 280 python3 experiments/benchmarks/gpu_eval_check.py 2>&1 | tee "$out/gpu_eval_check.log"
timeout 200 python3 experiments/benchmarks/generation_vs_hf.py 2>&1 | tee "$out/generation_vs_hf_bf16.log"
timeout 150 python3 experiments/benchmarks/generation_vs_hf.py --dtype float32 --new 64 2>&1 | tee "$out/generation_vs_hf_fp32.log"
