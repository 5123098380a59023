#!/usr/bin/env bash
# The Hopper forward (issue 17, csrc/hopper/attention_fwd_sm90.cuh) on one H100 / H200, claim first, about
# 9 minutes:
#   1. build the CUDA extension for sm_90a (the mma.sync kernels plus the Hopper forward);
#   2. timings: forward, bf16, head_dim 128 and 64, seqlen 1k/4k/16k (16k tokens a batch), causal and not,
#      without encoding and with RoPE: cuda[sm90] (backend="cuda" with FLASHATTN_CUDA_SM90=1) against cuda
#      (the mma.sync forward), triton, sdpa_flash and sdpa_cudnn, in one run (every result is checked
#      against the float64 reference before it is timed);
#   3. the torch-free forward self-test with --sm90 (66 of its 95 cases run the Hopper kernel, each tagged),
#      then compute-sanitizer memcheck on it;
#   4. the suite's CUDA forward cases with the Hopper kernel opted in.
# Writes into ${OUT:-bench/results/<gpu>-<date>}: gpu-hopper.txt, build.txt, bench-hopper-d*.txt/json,
# cuda-fwd-sm90-selftest.txt, cuda-fwd-sm90-memcheck.txt, tests-hopper.txt. Commit that folder.
# Run from the repository root: bash bench/gpu_hopper.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_common.sh  # PY, gpu, arch, build_arch, step, build_cuda
[ "$arch" = 90 ] || { echo "the Hopper forward needs an sm_90 GPU (this one is sm_$arch)"; exit 2; }
out=${OUT:-bench/results/${gpu}-$(date -u +%F)}
mkdir -p "$out"
machine_header "$out/gpu-hopper.txt" "bash bench/gpu_hopper.sh"
build_cuda "$out"
for d in 128 64; do
  step "Hopper forward timings, head_dim $d"
  PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-150}" $PY -m flashattn_py.tools.bench --head-dim $d --dtype bf16 \
    --seqlens 1024 4096 16384 --hidden 2048 --tokens 16384 --causal both --modes fwd --encoding none rope \
    --peers 'cuda[sm90]' cuda triton sdpa_flash sdpa_cudnn \
    --out "$out" --name "hopper-bf16-d$d" > "$out/bench-hopper-d$d.txt" 2> "$out/bench-hopper-d$d.log"
  tail -30 "$out/bench-hopper-d$d.txt"
done
step "forward self-test, Hopper kernel (--sm90), then memcheck"
mkdir -p build
timeout 240 nvcc -std=c++17 -O3 --use_fast_math -gencode=arch=compute_90a,code=sm_90a -Icsrc \
    csrc/attention_fwd.cu csrc/attention_fwd_sm90.cu csrc/tests/attention_fwd_selftest.cu -o build/fwd_selftest \
  && timeout 60 build/fwd_selftest --sm90 --no-timing > "$out/cuda-fwd-sm90-selftest.txt" 2>&1
echo "cuda fwd --sm90 self-test exit code $?" | tee -a "$out/cuda-fwd-sm90-selftest.txt"
tail -3 "$out/cuda-fwd-sm90-selftest.txt"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 build/fwd_selftest --sm90 --no-timing \
  > "$out/cuda-fwd-sm90-memcheck.txt" 2>&1
echo "memcheck exit code $?" | tee -a "$out/cuda-fwd-sm90-memcheck.txt"
step "tests: the suite's CUDA forward cases with the Hopper kernel opted in"
FLASHATTN_CUDA_SM90=1 PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" \
  -p no:cacheprovider tests/test_attention.py tests/test_varlen.py tests/test_positional.py -k "cuda" \
  > "$out/tests-hopper.txt" 2>&1
tail -3 "$out/tests-hopper.txt"
[ -n "${OUT:-}" ] && [ "$out" != "$OUT" ] && cp -r "$out" "$OUT/" 2>/dev/null
exit 0
