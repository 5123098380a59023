#!/usr/bin/env bash
# The one command to run on a GPU machine: the full test suite on the GPU, then the benchmark
# (attention vs SDPA, and fused RoPE vs unfused peers), all written under bench/results/<gpu>-<date>/.
# Commit that folder: GPU numbers that are not committed are lost.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
out="bench/results/${gpu}-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
python -m pytest -q -x tests 2>&1 | tee "$out/tests.txt"
python -m flashattn_py.static_report --json "$out/static_report.json" > "$out/static_report.txt" 2>&1 || true
for d in 64 128; do
  python -m flashattn_py.bench --dtype bf16 --head-dim "$d" --seqlens 512 1024 2048 4096 8192 16384 --batch 2 --heads 16 \
    --out "$out" | tee "$out/attention-bf16-d$d.txt"
done
python -m flashattn_py.bench --rotary --dtype bf16 --head-dim 128 --seqlens 1024 4096 16384 --batch 2 --heads 16 \
  --out "$out" | tee "$out/rope-bf16-d128.txt"
echo "results in $out"
