// Split-K merge (flash-decoding): combines the num_splits partial results of the forward kernel
// (params.h out_accum / lse_accum, each normalized over its own slice of keys) into out and lse:
//   lse = log(sum_s exp(lse_s)),   out = sum_s exp(lse_s - lse) * out_s.
// The same formula as triton_kernels/split_merge.py. A split that saw no key has lse_s = -inf and
// weight 0; a row no split saw keeps out 0 and lse -inf.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "primitives.cuh"

namespace flashattn {

constexpr int kMergeWarps = 4;  // one warp per (batch, head, query) row

// Grid ceil(batch * nheads_q * seqlen_q / kMergeWarps); dense batches only (params.h).
template <typename T>
__global__ void __launch_bounds__(kMergeWarps * 32) attention_split_merge_kernel(const AttentionParams p) {
  const int64_t rows = int64_t(p.batch) * p.nheads_q * p.seqlen_q;
  const int64_t r = int64_t(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps leave together: no shuffle below misses a lane
  float m = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.lse_accum[s * rows + r]);
  const float m_sub = m == -INFINITY ? 0.f : m;  // no split saw a key: every weight is exp(-inf) = 0
  float sum = 0.f;
  for (int s = 0; s < p.num_splits; ++s) sum += __expf(p.lse_accum[s * rows + r] - m_sub);
  const float lse = sum > 0.f ? m_sub + __logf(sum) : -INFINITY;
  const float inv = sum > 0.f ? 1.f / sum : 0.f;

  const int64_t row = r % p.seqlen_q, head = r / p.seqlen_q % p.nheads_q, batch = r / (int64_t(p.seqlen_q) * p.nheads_q);
  T* out = static_cast<T*>(p.out) + batch * p.out_strides.batch + head * p.out_strides.head + row * p.out_strides.seq;
  for (int d = lane; d < p.head_dim; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
      const float w = __expf(p.lse_accum[s * rows + r] - m_sub) * inv;
      acc += w * p.out_accum[(s * rows + r) * p.head_dim + d];
    }
    out[d] = from_float<T>(acc);
  }
  if (lane == 0) p.lse[r] = lse;
}

}  // namespace flashattn
