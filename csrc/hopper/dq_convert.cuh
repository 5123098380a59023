// The last step of the Hopper backward (attention_bwd_sm90.cuh): dq = round_T(inverse_encoding(softmax_scale *
// dq_accum)). The backward's CTAs add their dQ shares into the fp32 accumulator with TMA reduce-adds (one per
// key block); once all of them are done this kernel scales it, maps it back through the positional
// encoding's inverse when q arrived encoded (pe.q_encoded: the gradient is w.r.t. the encoded q), and rounds
// it once into the user-visible dq.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../params.h"
#include "../positional.cuh"
#include "../primitives.cuh"
#include "../sequence.h"

namespace flashattn {
namespace hopper {

constexpr int kDqConvertThreads = 128, kDqConvertRows = 32;

// Grid (ceil(seqlen_q / kDqConvertRows), nheads_q, batch). The block's rows go through an fp32 shared tile (the
// encoding's inverse pairs channels across the row); dq_accum (fp32, params.dq_accum_strides) is read and dq
// (T, params.dq_strides) written 4 channels at a time, which the route's 8-element stride rule keeps aligned.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kDqConvertThreads) attention_bwd_dq_convert_kernel(const AttentionParams p) {
  constexpr int kQuads = kHeadDim / 4, kLd = kHeadDim + 4;
  __shared__ __align__(16) float tile[kDqConvertRows * kLd];
  const int head = blockIdx.y, batch = blockIdx.z;
  const SequenceView seq = sequence_view<true>(p, batch);
  const int row0 = int(blockIdx.x) * kDqConvertRows;
  if (row0 >= seq.seqlen_q) return;
  const float* acc = p.dq_accum + row0_offset(seq, p.dq_accum_strides, batch, head, false);
  T* dq = static_cast<T*>(p.dq) + row0_offset(seq, p.dq_strides, batch, head, false);
  const int rows = min(kDqConvertRows, seq.seqlen_q - row0);
  for (int i = int(threadIdx.x); i < rows * kQuads; i += kDqConvertThreads) {
    const int r = i / kQuads, c = (i % kQuads) * 4;
    const float4 x = *reinterpret_cast<const float4*>(acc + int64_t(row0 + r) * p.dq_accum_strides.seq + c);
    *reinterpret_cast<float4*>(tile + r * kLd + c) =
        make_float4(x.x * p.softmax_scale, x.y * p.softmax_scale, x.z * p.softmax_scale, x.w * p.softmax_scale);
  }
  if (p.pe.kind != int(PEKind::kNone)) {
    __syncthreads();
    encode_tile_rows<kDqConvertRows, kDqConvertThreads>(RowMajorTile<float>{tile, kLd}, int(threadIdx.x), row0,
                                                        seq.seqlen_q, sequence_positions(p.pe, seq, batch, false),
                                                        p.pe.q_pos_stride_s, p.pe, true);
  }
  __syncthreads();
  for (int i = int(threadIdx.x); i < rows * kQuads; i += kDqConvertThreads) {
    const int r = i / kQuads, c = (i % kQuads) * 4;
    const float4 x = *reinterpret_cast<const float4*>(tile + r * kLd + c);
    *reinterpret_cast<uint2*>(dq + int64_t(row0 + r) * p.dq_strides.seq + c) =
        make_uint2(pack2<T>(x.x, x.y), pack2<T>(x.z, x.w));
  }
}

}  // namespace hopper
}  // namespace flashattn
