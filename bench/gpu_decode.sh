#!/usr/bin/env bash
# The short GPU run for variable lengths and decoding (about 6 minutes; the full run is
# bench/gpu_validate.sh): build the CUDA extension for this GPU, run the decoding benchmark (tokens/s
# and KV GB/s vs SDPA on the same cache, against the copy bandwidth measured in the same run), then
# the packed / seqused_k / KV-cache / dense split-K suites and the top-left alignment cases on both kernel backends
# (the CUDA per-sequence layouts' first run on a GPU).
# Writes into ${OUT:-bench/results/decode-<gpu>-<date>}; where $OUT is set (a device machine that
# returns only what is written there) everything lands there directly. Commit what it writes.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_common.sh  # PY, gpu, arch, step, build_cuda
out=${OUT:-bench/results/decode-${gpu}-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
machine_header "$out/gpu.txt" "bash bench/gpu_decode.sh"

build_cuda "$out"

# The benchmark first: it checks every implementation against the float64 reference before timing
# it, and it is what a run cut short by the device's time limit must not lose.
step "decoding benchmark"
timeout "${DECODE_TIMEOUT:-200}" $PY -m flashattn_py.tools.bench decode --out "$out" > "$out/decode.txt" 2>&1
tail -30 "$out/decode.txt"

step "variable-length, KV-cache and alignment tests"
timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" -p no:cacheprovider -rs \
  tests/test_varlen.py tests/test_decoding.py tests/test_split_k.py tests/test_attention.py::test_top_left_alignment \
  > "$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"
echo "results in $out"
