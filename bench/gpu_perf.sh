#!/usr/bin/env bash
# The Triton backward's and forward's speed claims on one H100/H200, in at most 8 minutes:
#   1. timings first (what the issues claim): forward, backward alone and fwd+bwd, bf16, head_dim 64
#      and 128, seqlen 1k/4k/16k (16k tokens a batch), causal and not, our Triton kernels (the fused
#      default backward and deterministic=True) against SDPA's FlashAttention-2 and cuDNN backends in
#      the same run;
#      then the forward with fused RoPE against RoPE + SDPA; then one decoding step against a KV cache
#      (bench decode: contiguous and paged, split-K automatic and off, against SDPA);
#   2. then the backward's tests on the GPU (both schedules, the TMA dQ reduce, every feature).
# Decoding has its own script (bench/gpu_decode.sh).
# Writes into ${OUT:-bench/results/<gpu>-<date>}: gpu.txt (GPU, driver, torch, triton), bench-*.txt/json,
# tests.txt. Run from the repository root: bash bench/gpu_perf.sh
set -uo pipefail
cd "$(dirname "$0")/.."
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_')
out=${OUT:-bench/results/${gpu:-gpu}-$(date -u +%F)}
mkdir -p "$out"
[ -e flashattn_py/triton_kernels ] || ln -s ../triton_kernels flashattn_py/triton_kernels  # no install needed
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u; echo "command: bash bench/gpu_perf.sh"; } > "$out/gpu.txt" 2>&1
for d in 128 64; do
  timeout "${BENCH_TIMEOUT:-120}" python3 -m flashattn_py.tools.bench --head-dim $d --dtype bf16 \
    --seqlens 1024 4096 16384 --hidden 2048 --tokens 16384 --causal both --modes fwd bwd fwd+bwd \
    --peers triton 'triton[deterministic]' sdpa_flash sdpa_cudnn --out "$out" --name "attention-bf16-d$d" \
    > "$out/bench-d$d.txt" 2> "$out/bench-d$d.log"
  tail -40 "$out/bench-d$d.txt"
done
# The forward with RoPE fused (in the kernel / the pre-pass) against RoPE as a separate kernel or eager
# ops + SDPA (the issue's fused-RoPE targets), causal, head_dim 128.
timeout "${ROPE_TIMEOUT:-60}" python3 -m flashattn_py.tools.bench --head-dim 128 --dtype bf16 --seqlens 1024 4096 16384 \
  --hidden 2048 --tokens 16384 --causal yes --modes fwd --encoding rope \
  --peers triton 'triton[in_kernel]' 'triton[prepass]' rope_kernel+sdpa torch_rope+sdpa \
  --out "$out" --name attention-bf16-d128-rope > "$out/bench-rope.txt" 2> "$out/bench-rope.log"
tail -15 "$out/bench-rope.txt"
timeout "${DECODE_TIMEOUT:-60}" python3 -m flashattn_py.tools.bench decode --batch 8 64 --cache-lens 8192 \
  --page-sizes 0 16 --out "$out" > "$out/bench-decode.txt" 2> "$out/bench-decode.log"
tail -12 "$out/bench-decode.txt"
timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -q -n 16 -p no:cacheprovider tests/test_backward_schedules.py \
  tests/test_attention.py tests/test_sinks_and_bias_grad.py tests/test_score_mods.py -k "triton or schedules" \
  > "$out/tests.txt" 2>&1
tail -5 "$out/tests.txt"
