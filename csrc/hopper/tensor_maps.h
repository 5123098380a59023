// The tensor maps of the Hopper kernels' operands, from the params' pointers and element strides: one
// rule for the forward (attention_fwd_sm90.cu) and the backward (attention_bwd_sm90.cu). Needs nvcc (or
// the CUDA include path) for the driver call (tma.h encode_tensor_map).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../params.h"
#include "tma.h"

namespace flashattn {
namespace hopper {

// The stride (elements) TMA is given for a dimension of extent n: the tensor's own, except that torch
// leaves arbitrary strides on size-1 dimensions, which are never stepped over: those get the packed
// value `dense` (a multiple of 8 elements, as the driver's 16-byte rule needs).
inline int64_t tma_stride(int64_t stride, int64_t n, int64_t dense) { return n <= 1 ? dense : stride; }

template <typename T>
constexpr TmaDataType tma_data_type() {
  return std::is_same<T, float>::value    ? TmaDataType::kFloat32
         : std::is_same<T, __half>::value ? TmaDataType::kFloat16
                                          : TmaDataType::kBFloat16;
}

// The tensor map of a bshd tensor of T (or of a packed (rows, heads, head_dim) one, seen as batch 1) whose
// boxes are `box_rows` rows x `box_cols` channels (128 bytes: 64 bf16/fp16 or 32 fp32), 128B-swizzled.
template <typename T>
CUtensorMap bshd_tensor_map(const void* ptr, const Strides& st, int64_t batch, int64_t rows, int64_t heads,
                            int head_dim, uint32_t box_rows, uint32_t box_cols = 64) {
  const int64_t s_seq = tma_stride(st.seq, rows, ((head_dim + 7) / 8) * 8);
  const int64_t s_head = tma_stride(st.head, heads, s_seq * rows);
  const int64_t s_batch = tma_stride(st.batch, batch, s_head * heads);
  const TmaTileArgs args =
      bshd_tile_args(tma_data_type<T>(), batch, rows, heads, head_dim, s_batch, s_seq, s_head, box_rows, box_cols);
  return encode_tensor_map(args, ptr);
}

}  // namespace hopper
}  // namespace flashattn
