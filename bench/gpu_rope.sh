#!/usr/bin/env bash
# Fused RoPE's cost on both kernel backends (issue: "fused RoPE at no-RoPE speed"), one H100/H200, about
# 10 minutes:
#   1. build the CUDA extension for this GPU's arch;
#   2. timings first: CUDA and Triton without encoding and with fused RoPE (auto and each K strategy:
#      in_kernel / prepass, one rule for both backends: triton_kernels/pe_strategy.py prepass_chosen),
#      against RoPE as a separate kernel + SDPA, fwd and fwd+bwd, bf16, head_dim 128 and 64, seqlen
#      1k/4k/16k (16k tokens a batch), non-causal;
#   3. then the CUDA RoPE paths' tests on the GPU (pre-encoded and in-kernel, forward and backward) and
#      the CUDA softcap / ALiBi cases (csrc/score_mods.h) of the suite.
# Writes into ${OUT:-bench/results/<gpu>-<date>}: build.txt, bench-rope-d*.txt/json, tests-rope.txt.
# Run from the repository root: bash bench/gpu_rope.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_common.sh  # PY, gpu, arch, step, build_cuda
out=${OUT:-bench/results/${gpu}-$(date -u +%F)}
mkdir -p "$out"
machine_header "$out/gpu-rope.txt" "bash bench/gpu_rope.sh"
build_cuda "$out"
for d in 128 64; do
  step "RoPE timings, head_dim $d"
  PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-200}" $PY -m flashattn_py.tools.bench --head-dim $d --dtype bf16 \
    --seqlens 1024 4096 16384 --hidden 2048 --tokens 16384 --causal no --modes fwd fwd+bwd \
    --encoding none rope \
    --peers triton 'triton[in_kernel]' 'triton[prepass]' cuda 'cuda[in_kernel]' 'cuda[prepass]' \
            rope_kernel+sdpa sdpa_flash \
    --out "$out" --name "rope-bf16-d$d" > "$out/bench-rope-d$d.txt" 2> "$out/bench-rope-d$d.log"
  tail -30 "$out/bench-rope-d$d.txt"
done
step "tests: the CUDA backend with RoPE / sinusoidal, softcap and ALiBi"
PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" -p no:cacheprovider \
  tests/test_positional.py tests/test_cuda_backend.py tests/test_attention.py tests/test_score_mods.py -k "cuda" \
  > "$out/tests-rope.txt" 2>&1
tail -3 "$out/tests-rope.txt"
