#!/usr/bin/env bash
# The Hopper backward (issue 18, csrc/hopper/attention_bwd_sm90.cuh) on one H100 / H200, claim first, about
# 9 minutes:
#   1. build the CUDA extension for sm_90a (the mma.sync kernels plus the Hopper forward and backward);
#   2. timings: fwd+bwd and bwd alone, bf16, head_dim 128 and 64, seqlen 1k/4k/16k (16k tokens a batch),
#      causal and not: cuda[sm90] (backend="cuda" with FLASHATTN_CUDA_SM90=1 for the whole step: the Hopper
#      forward and backward) against cuda (mma.sync), triton, sdpa_flash and sdpa_cudnn, in one run (every
#      result is checked against the float64 reference, gradients too, before it is timed);
#   3. the torch-free backward self-test with --sm90 (cases the Hopper kernel ran are tagged [sm90]), then
#      compute-sanitizer memcheck, racecheck and synccheck on it;
#   4. the suite's CUDA backward cases with the Hopper kernels opted in.
# Writes into ${OUT:-bench/results/<gpu>-<date>}: gpu-hopper-bwd.txt, build.txt, bench-hopper-bwd-d*.txt/json,
# cuda-bwd-sm90-{selftest,memcheck,racecheck,synccheck}.txt, tests-hopper-bwd.txt. Commit that folder.
# Run from the repository root: bash bench/gpu_hopper_bwd.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_common.sh  # PY, gpu, arch, build_arch, step, build_cuda, machine_header
[ "$arch" = 90 ] || { echo "the Hopper backward needs an sm_90 GPU (this one is sm_$arch)"; exit 2; }
out=${OUT:-bench/results/${gpu}-$(date -u +%F)}
mkdir -p "$out"
machine_header "$out/gpu-hopper-bwd.txt" "bash bench/gpu_hopper_bwd.sh"
build_cuda "$out"
for d in 128 64; do
  step "Hopper backward timings, head_dim $d"
  PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-150}" $PY -m flashattn_py.tools.bench --head-dim $d --dtype bf16 \
    --seqlens 1024 4096 16384 --hidden 2048 --tokens 16384 --causal both --modes fwd+bwd bwd --encoding none \
    --peers 'cuda[sm90]' cuda triton sdpa_flash sdpa_cudnn \
    --out "$out" --name "hopper-bwd-bf16-d$d" > "$out/bench-hopper-bwd-d$d.txt" 2> "$out/bench-hopper-bwd-d$d.log"
  tail -30 "$out/bench-hopper-bwd-d$d.txt"
done
step "backward self-test, Hopper kernel (--sm90), then compute-sanitizer"
mkdir -p build
timeout 240 nvcc -std=c++17 -O3 --use_fast_math -gencode=arch=compute_90a,code=sm_90a -Icsrc \
    csrc/attention_bwd.cu csrc/attention_bwd_sm90.cu csrc/tests/attention_bwd_selftest.cu -o build/bwd_selftest \
  && timeout 60 build/bwd_selftest --sm90 > "$out/cuda-bwd-sm90-selftest.txt" 2>&1
echo "cuda bwd --sm90 self-test exit code $?" | tee -a "$out/cuda-bwd-sm90-selftest.txt"
tail -3 "$out/cuda-bwd-sm90-selftest.txt"
for tool in memcheck racecheck synccheck; do
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 build/bwd_selftest --sm90 \
    > "$out/cuda-bwd-sm90-$tool.txt" 2>&1
  echo "cuda bwd --sm90 $tool exit code $?" | tee -a "$out/cuda-bwd-sm90-$tool.txt"
done
step "tests: the suite's CUDA cases with the Hopper kernels opted in"
FLASHATTN_CUDA_SM90=1 PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" \
  -p no:cacheprovider tests/test_attention.py tests/test_varlen.py tests/test_positional.py -k "cuda" \
  > "$out/tests-hopper-bwd.txt" 2>&1
tail -3 "$out/tests-hopper-bwd.txt"
[ -n "${OUT:-}" ] && [ "$out" != "$OUT" ] && cp -r "$out" "$OUT/" 2>/dev/null
exit 0
