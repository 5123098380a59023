#!/usr/bin/env bash
# A short GPU check for a nearly spent device budget (the full run is bench/gpu_validate.sh):
# the Triton kernels' core correctness tests on the GPU, then attention vs SDPA's backends
# (bf16, head_dim 128, 16k tokens, causal on/off, fwd and fwd+bwd). Writes into ${OUT:-bench/results/quick}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/quick}
mkdir -p "$out"
[ -e flashattn_py/triton_kernels ] || ln -s ../triton_kernels flashattn_py/triton_kernels  # no install needed
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$out/gpu.txt" 2>&1
timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -q -n 16 -p no:cacheprovider tests/test_attention.py \
  tests/test_score_mods.py -k "not float32" > "$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"
timeout "${BENCH_TIMEOUT:-110}" python3 -m flashattn_py.tools.bench --head-dim 128 --dtype bf16 --seqlens 1024 4096 16384 \
  --hidden 2048 --tokens 16384 --causal both --modes fwd fwd+bwd \
  --peers triton sdpa_flash sdpa_cudnn sdpa_efficient --out "$out" --name attention-bf16-d128 \
  > "$out/bench.txt" 2> "$out/bench.log"
tail -30 "$out/bench.txt"
