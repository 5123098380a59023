#!/usr/bin/env bash
# The short GPU run for variable lengths and decoding (about 6 minutes; the full run is
# bench/gpu_validate.sh): build the CUDA extension for this GPU, run the packed / seqused_k / KV-cache
# suites and the top-left alignment cases on both kernel backends (the CUDA per-sequence layouts'
# first run on a GPU), then the decoding benchmark (tokens/s and KV GB/s vs SDPA on the same cache,
# against the copy bandwidth measured in the same run).
# Writes into ${OUT:-bench/results/decode-<gpu>-<date>}; where $OUT is set (a device machine that
# returns only what is written there) everything lands there directly. Commit what it writes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')" || exit 1
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
arch=$($PY -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
out=${OUT:-bench/results/decode-${gpu}-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u; git log -1 --format='commit %H'; } > "$out/gpu.txt" 2>&1

echo "== build for sm_$arch ($(date -u +%T))"
{ time FLASHATTN_BUILD_CUDA=1 FLASHATTN_CUDA_ARCHS="$arch" $PY -m pip install --no-deps --no-build-isolation \
    --no-index -e . ; } > "$out/build.txt" 2>&1 || echo "CUDA build failed (see $out/build.txt); continuing with Triton"
tail -3 "$out/build.txt"

echo "== variable-length, KV-cache and alignment tests ($(date -u +%T))"
timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -n "${TEST_WORKERS:-16}" -p no:cacheprovider -rs \
  tests/test_varlen.py tests/test_kvcache.py tests/test_attention.py::test_top_left_alignment \
  > "$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"

echo "== decoding benchmark ($(date -u +%T))"
timeout "${DECODE_TIMEOUT:-200}" $PY -m flashattn_py.bench decode --out "$out" > "$out/decode.txt" 2>&1
tail -30 "$out/decode.txt"
echo "results in $out"
