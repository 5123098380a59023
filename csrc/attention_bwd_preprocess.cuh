// Backward step 1: delta_i = rowsum(dO_i * O_i) in fp32, the softmax-backward correction
// (= rowsum(P * dP)) that the dK/dV and dQ kernels subtract from dP.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attention_bwd_tiles.cuh"
#include "errors.h"
#include "params.h"
#include "sequence.h"

namespace flashattn {
namespace bwd {

constexpr int kPreprocessThreads = 128;

// Threads that share one row: enough for one 8-element piece each, rounded up to a power of two
// so the row's partial sums reduce with xor shuffles inside aligned lane groups.
template <int kHeadDim>
struct PreprocessShape {
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kThreadsPerRow = kChunks <= 4 ? 4 : kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;
  static constexpr int kRowsPerBlock = kPreprocessThreads / kThreadsPerRow;
  static_assert(kChunks <= 32, "head_dim <= 256");
};

template <typename T>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const T* x = reinterpret_cast<const T*>(&a);
  const T* y = reinterpret_cast<const T*>(&b);
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) s += static_cast<float>(x[e]) * static_cast<float>(y[e]);
  return s;
}

// Grid (ceil(seqlen_q / kRowsPerBlock), nheads_q, batch).
template <typename T, int kHeadDim, bool kLayout>
__global__ void __launch_bounds__(kPreprocessThreads)
    attention_bwd_preprocess_kernel(const AttentionParams p) {
  using Shape = PreprocessShape<kHeadDim>;
  const int64_t head = blockIdx.y, batch = blockIdx.z;
  const int64_t row = int64_t(blockIdx.x) * Shape::kRowsPerBlock + threadIdx.x / Shape::kThreadsPerRow;
  const int chunk = threadIdx.x % Shape::kThreadsPerRow;
  const SequenceView seq = sequence_view<kLayout>(p, batch);
  const T* out = static_cast<const T*>(p.out) + row0_offset(seq, p.out_strides, batch, head, false);
  const T* dout = static_cast<const T*>(p.dout) + row0_offset(seq, p.dout_strides, batch, head, false);
  const bool vec16 =
      rows_are_16b_aligned(p.out, p.out_strides) && rows_are_16b_aligned(p.dout, p.dout_strides);

  float sum = 0.f;
  if (row < seq.seqlen_q && chunk < Shape::kChunks) {
    const T* o = out + row * p.out_strides.seq + chunk * 8;
    const T* d = dout + row * p.dout_strides.seq + chunk * 8;
    if (vec16) {
      sum = dot8<T>(*reinterpret_cast<const uint4*>(o), *reinterpret_cast<const uint4*>(d));
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += static_cast<float>(o[e]) * static_cast<float>(d[e]);
    }
  }
  // Every lane takes part in the shuffles (rows past seqlen_q contribute 0 and store nothing).
#pragma unroll
  for (int width = Shape::kThreadsPerRow / 2; width > 0; width /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, width);
  }
  if (row < seq.seqlen_q && chunk == 0) p.delta[stats_row0(p, seq, batch, head) + row] = sum;
}

// The launch for every query row of the call on `stream` (none without queries): both backwards, the
// mma.sync one (attention_bwd.cu) and the Hopper one (attention_bwd_sm90.cu), start with it.
template <typename T, int kHeadDim, bool kLayout>
void launch_attention_bwd_preprocess(const AttentionParams& p, cudaStream_t stream) {
  if (p.seqlen_q <= 0) return;
  using Shape = PreprocessShape<kHeadDim>;
  const dim3 grid(unsigned((p.seqlen_q + Shape::kRowsPerBlock - 1) / Shape::kRowsPerBlock), p.nheads_q, p.batch);
  attention_bwd_preprocess_kernel<T, kHeadDim, kLayout><<<grid, kPreprocessThreads, 0, stream>>>(p);
  check_launch("attention_bwd_preprocess_kernel");
}

}  // namespace bwd
}  // namespace flashattn
