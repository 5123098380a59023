// The last step of the Hopper backward (attention_bwd_sm90.cuh): dq = round_T(softmax_scale * dq_accum).
// The backward's CTAs add their dQ shares into the fp32 accumulator with TMA reduce-adds (one per key
// block); once all of them are done this kernel scales and rounds it once into the user-visible dq. With
// a positional encoding the gradient is w.r.t. the encoded q, and the backend maps it back afterwards
// (hopper/route.h sm90_backward_takes).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../params.h"
#include "../primitives.cuh"
#include "../sequence.h"

namespace flashattn {
namespace hopper {

constexpr int kDqConvertThreads = 128, kDqConvertRows = 64;

// Grid (ceil(seqlen_q / kDqConvertRows), nheads_q, batch). Thread i takes 4-channel pieces i, i + 128, ...
// of the block's rows; dq_accum (fp32, params.dq_accum_strides) and dq (T, params.dq_strides) are read and
// written with 8-byte (resp. 16-byte) accesses, which the route's 8-element stride rule keeps aligned.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kDqConvertThreads) attention_bwd_dq_convert_kernel(const AttentionParams p) {
  constexpr int kPieces = kHeadDim / 4;
  const int head = blockIdx.y, batch = blockIdx.z;
  const SequenceView seq = sequence_view<true>(p, batch);
  const int row0 = int(blockIdx.x) * kDqConvertRows;
  if (row0 >= seq.seqlen_q) return;
  const float* acc = p.dq_accum + row0_offset(seq, p.dq_accum_strides, batch, head, false);
  T* dq = static_cast<T*>(p.dq) + row0_offset(seq, p.dq_strides, batch, head, false);
  for (int i = int(threadIdx.x); i < kDqConvertRows * kPieces; i += kDqConvertThreads) {
    const int row = row0 + i / kPieces, col = (i % kPieces) * 4;
    if (row >= seq.seqlen_q) break;  // rows grow with i
    const float4 x = *reinterpret_cast<const float4*>(acc + int64_t(row) * p.dq_accum_strides.seq + col);
    uint2 packed;
    packed.x = pack2<T>(x.x * p.softmax_scale, x.y * p.softmax_scale);
    packed.y = pack2<T>(x.z * p.softmax_scale, x.w * p.softmax_scale);
    *reinterpret_cast<uint2*>(dq + int64_t(row) * p.dq_strides.seq + col) = packed;
  }
}

}  // namespace hopper
}  // namespace flashattn
