// Moving (rows x head_dim) tiles between a bshd tensor in global memory and shared memory, for the
// backward kernels.
//
// Shared tiles are row-major with kSmemPad extra elements per row. Why the pad: ldmatrix reads
// 8 rows x 16 bytes per 8x8 matrix; with a row pitch of (head_dim + 8) * 2 bytes the 8 rows start
// on 8 different groups of 4 banks for every head_dim we compile (32..256), so it never conflicts.
//
// Global rows are read with 16-byte cp.async when the tensor allows it (base pointer 16-byte
// aligned and batch/seq/head strides multiples of 8 elements); otherwise element by element. The
// strides come from arbitrary views, so the slow path keeps such calls correct instead of
// faulting on a misaligned vector access. Rows past seqlen read as 0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "params.h"
#include "primitives.cuh"

namespace flashattn {
namespace bwd {

constexpr int kSmemPad = 8;  // elements of T added to every row of a T tile in shared memory
constexpr int kAccPad = 4;   // floats added to every row of an fp32 tile (keeps rows 16-byte aligned)

// Whether a tensor's rows can be moved in 16-byte pieces (head_dim is a multiple of 8 here).
__device__ __forceinline__ bool rows_are_16b_aligned(const void* ptr, const Strides& s) {
  return (reinterpret_cast<uintptr_t>(ptr) % 16 == 0) && (s.batch % 8 == 0) && (s.seq % 8 == 0) &&
         (s.head % 8 == 0);
}

// Issue the loads of rows [row0, row0 + kRows) of `src` (row r at src + r * stride_s) into `tile`.
// The caller commits/waits the cp.async group and synchronizes.
template <typename T, int kRows, int kHeadDim, int kThreads>
__device__ __forceinline__ void load_rows(T* tile, const T* src, int64_t stride_s, int row0, int seqlen,
                                          bool vec16) {
  constexpr int kChunks = kHeadDim / 8;  // 16-byte pieces per row
  constexpr int kLd = kHeadDim + kSmemPad;
  constexpr int kTotal = kRows * kChunks;
  // A compile-time trip count keeps every index a constant offset from threadIdx.x.
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int idx = i * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && idx >= kTotal) break;
    const int r = idx / kChunks;
    const int c = (idx % kChunks) * 8;
    const bool valid = row0 + r < seqlen;
    T* dst = tile + r * kLd + c;
    const T* from = src + int64_t(row0 + r) * stride_s + c;
    if (vec16) {
      // A masked row still needs a mapped address for the instruction; src-size 0 reads nothing.
      cp_async_16(dst, valid ? from : src, valid);
    } else {
      const uint16_t* from16 = reinterpret_cast<const uint16_t*>(from);
      uint16_t* dst16 = reinterpret_cast<uint16_t*>(dst);
#pragma unroll
      for (int e = 0; e < 8; ++e) dst16[e] = valid ? from16[e] : uint16_t(0);
    }
  }
}

// Store rows [row0, row0 + kRows) (those < seqlen) of an fp32 shared tile (pitch kHeadDim + kAccPad)
// to `dst` in T, rounding once. Every column of every valid row is written.
template <typename T, int kRows, int kHeadDim, int kThreads>
__device__ __forceinline__ void store_rows(T* dst, int64_t stride_s, int row0, int seqlen, const float* tile,
                                           bool vec16) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kLd = kHeadDim + kAccPad;
  constexpr int kTotal = kRows * kChunks;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int idx = i * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && idx >= kTotal) break;
    const int r = idx / kChunks;
    const int c = (idx % kChunks) * 8;
    if (row0 + r >= seqlen) continue;
    const float4 x0 = *reinterpret_cast<const float4*>(tile + r * kLd + c);
    const float4 x1 = *reinterpret_cast<const float4*>(tile + r * kLd + c + 4);
    uint4 packed;
    packed.x = pack2<T>(x0.x, x0.y);
    packed.y = pack2<T>(x0.z, x0.w);
    packed.z = pack2<T>(x1.x, x1.y);
    packed.w = pack2<T>(x1.z, x1.w);
    T* to = dst + int64_t(row0 + r) * stride_s + c;
    if (vec16) {
      *reinterpret_cast<uint4*>(to) = packed;
    } else {
      const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
      uint16_t* to16 = reinterpret_cast<uint16_t*>(to);
#pragma unroll
      for (int e = 0; e < 8; ++e) to16[e] = static_cast<uint16_t>(words[e / 2] >> (16 * (e % 2)));
    }
  }
}

}  // namespace bwd
}  // namespace flashattn
