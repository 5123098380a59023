#!/usr/bin/env bash
# The one command to run on a GPU machine (at most about 9 minutes, plus up to 16 on sm_90 for the
# Hopper forward's self-test and its sanitizers; each step has a time limit):
#   1. build the CUDA extension for this GPU's arch (editable install, no downloads), run the CUDA
#      kernels' standalone self-tests; on sm_90 both again with --sm90 (the Hopper kernels,
#      attention_{fwd,bwd}_sm90.cu) and under compute-sanitizer memcheck, racecheck and synccheck,
#   2. run the full test suite on the GPU (both backends against the float64 reference),
#   3. the standard benchmark sweep (bf16, head_dim 64/128, seqlen 512..16k, causal on/off,
#      fwd and fwd+bwd, with and without RoPE; every result checked before it is timed),
#   4. decoding against contiguous and paged KV caches vs SDPA (python -m flashattn_py.tools.bench decode),
#      compute-sanitizer memcheck + racecheck on a small fwd+bwd of each backend,
#   5. summary.md (targets met/missed, ours vs the best peer) next to the CSV/JSON/PNGs.
# Everything lands in bench/results/<gpu>-<date>/: commit that folder, GPU numbers not committed are lost.
# Where $OUT is set (a device machine that returns only what is written there), the folder is also
# packed into $OUT/results.tgz.
# Each step has a time limit so a slow step cannot eat the others; a failed step is recorded, not fatal.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_common.sh  # PY, gpu, arch, step, build_cuda
out="bench/results/${gpu}-$(date -u +%Y-%m-%d)"
mkdir -p "$out"

build_cuda "$out"

step "CUDA kernel self-tests (no torch: every head dim x dtype, masks, RoPE, offsets > 2^31)"
mkdir -p build
for pass in fwd bwd; do
  # run_attention_forward / _backward call the Hopper kernels: their host sides are linked too, and on
  # sm_90 the SASS is sm_90a (runs the mma.sync kernels as sm_90 would, and has the Hopper kernels' bodies).
  sources="csrc/attention_$pass.cu csrc/attention_${pass}_sm90.cu" sass=$arch
  if [ "$arch" = 90 ]; then sass=90a; fi
  # 240 s: every kernel has a score-mods instance too (2026-12-07), about twice the compile of before
  timeout 240 nvcc -std=c++17 -O3 --use_fast_math -gencode=arch=compute_$sass,code=sm_$sass -Icsrc \
      $sources csrc/tests/attention_${pass}_selftest.cu -o build/${pass}_selftest \
    && timeout 60 build/${pass}_selftest > "$out/cuda-$pass-selftest.txt" 2>&1
  echo "cuda $pass self-test exit code $?" | tee -a "$out/cuda-$pass-selftest.txt"
done

if [ "$arch" = 90 ]; then  # the Hopper forward and backward (*_sm90_kernel): the same cases, lines tagged [sm90]
  step "CUDA forward self-test with --sm90 (Hopper kernel), then compute-sanitizer on it"
  timeout 60 build/fwd_selftest --sm90 > "$out/cuda-fwd-sm90-selftest.txt" 2>&1
  echo "cuda fwd --sm90 self-test exit code $?" | tee -a "$out/cuda-fwd-sm90-selftest.txt"
  for tool in memcheck racecheck synccheck; do
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 build/fwd_selftest --sm90 --no-timing \
      > "$out/cuda-fwd-sm90-$tool.txt" 2>&1
    echo "cuda fwd --sm90 $tool exit code $?" | tee -a "$out/cuda-fwd-sm90-$tool.txt"
  done
  step "CUDA backward self-test with --sm90 (Hopper kernel), then compute-sanitizer on it"
  timeout 60 build/bwd_selftest --sm90 > "$out/cuda-bwd-sm90-selftest.txt" 2>&1
  echo "cuda bwd --sm90 self-test exit code $?" | tee -a "$out/cuda-bwd-sm90-selftest.txt"
  for tool in memcheck racecheck synccheck; do
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 build/bwd_selftest --sm90 \
      > "$out/cuda-bwd-sm90-$tool.txt" 2>&1
    echo "cuda bwd --sm90 $tool exit code $?" | tee -a "$out/cuda-bwd-sm90-$tool.txt"
  done
fi

if [ "$arch" = 90 ]; then  # Hopper primitives (docs/hopper.md): TMA + wgmma GEMM probe against fp64
  step "Hopper wgmma + TMA probe (csrc/hopper)"
  timeout 120 nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc \
      csrc/hopper/tests/wgmma_tma_probe.cu -o build/wgmma_tma_probe \
    && timeout 60 build/wgmma_tma_probe > "$out/hopper-probe.txt" 2>&1
  echo "hopper probe exit code $?" | tee -a "$out/hopper-probe.txt"
  # The backward's primitives (issue 18): fp32 TMA reduce-add and store against fp64, exact sums.
  timeout 120 nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc \
      csrc/hopper/tests/tma_reduce_probe.cu -o build/tma_reduce_probe \
    && timeout 60 build/tma_reduce_probe > "$out/hopper-reduce-probe.txt" 2>&1
  echo "hopper reduce probe exit code $?" | tee -a "$out/hopper-reduce-probe.txt"
fi

step "tests"
PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" -p no:cacheprovider \
    -rs tests > "$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"

step "standard sweep"
timeout "${SWEEP_TIMEOUT:-150}" $PY -m flashattn_py.tools.bench --preset standard --out "$out" --name standard \
    > "$out/standard.txt" 2>"$out/standard.log"
tail -5 "$out/standard.txt"
timeout "${FLEX_TIMEOUT:-45}" $PY -m flashattn_py.tools.bench --head-dim 128 --dtype bf16 --seqlens 4096 --hidden 2048 \
    --tokens 16384 --peers triton cuda sdpa_flash sdpa_cudnn flex --out "$out" --name flex > "$out/flex.txt" 2>&1

step "decoding against a KV cache (tokens/s, KV bandwidth vs the copy bandwidth)"
timeout "${DECODE_TIMEOUT:-90}" $PY -m flashattn_py.tools.bench decode --batch 1 64 --page-sizes 0 16 --out "$out" \
    > "$out/decode.txt" 2>&1
tail -20 "$out/decode.txt"

step "compute-sanitizer"
backends=$($PY -c "import flashattn_py._cuda" 2>/dev/null && echo "cuda triton" || echo "triton")
for tool in memcheck racecheck; do
  timeout 45 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY bench/sanitizer_case.py $backends \
    >> "$out/sanitizer.txt" 2>&1
  echo "$tool exit code $?" | tee -a "$out/sanitizer.txt"
done

step "summary"
$PY -m flashattn_py.tools.bench.summary "$out"
echo "results in $out"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" "$out" && echo "packed into $OUT/results.tgz"; fi
