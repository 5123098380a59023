// The two warp-level products the backward is made of, on mma.sync m16n8k16 (fp32 accumulate).
//
// A warp owns a 16-row strip of the result. Its accumulator `acc[kN / 8][4]` is the mma C/D
// fragment of each 16x8 column tile: with g = lane / 4 and t = lane % 4, acc[j][0..1] hold
// (row g, cols 8j + 2t, 8j + 2t + 1) and acc[j][2..3] the same columns of row g + 8 (PTX ISA,
// "Matrix Fragments for mma.m16n8k16", C/D layout).
//
// - gemm_nt: acc += A B^T with A (16 x kK) and B (kN x kK) both row-major in shared memory with the
//   contracted dim contiguous (Q K^T, dO V^T, and the transposed K Q^T, V dO^T). Both operands come
//   from ldmatrix without .trans: a row-major A is exactly the "row" A operand, and B stored as
//   (n, k) rows is the "col" B operand.
// - gemm_rs: acc += A B with A an fp32 accumulator tile in registers (P^T, dS^T, dS), rounded to T,
//   and B (kK x kN) row-major in shared memory with n contiguous (dO, Q, K). Why no staging of A
//   through shared memory: the C fragment of two adjacent 16x8 tiles j, j+1 holds the same
//   (row, column) pairs as the A fragment of one 16x16 k-slice (a0 = row g cols 2t..2t+1, a1 = row
//   g + 8, a2/a3 = the same 8 columns further), so packing pairs of accumulators is the A operand.
//   B is k-major in memory, so it is read with ldmatrix.trans.
#pragma once

#include <cstdint>

#include "primitives.cuh"

namespace flashattn {
namespace bwd {

// gemm_nt's contraction loop is unrolled by 2, not fully: fully unrolled, ptxas hoists the ldmatrix
// loads of every k-slice ahead of the MMAs and the dK/dV kernel at head_dim 256 spills on sm_80
// (its two accumulators already take 128 registers per thread).
constexpr int kNtUnroll = 2;

// acc (16 x kN) += A (16 x kK) * B (kN x kK)^T.
// a: the warp's first A row; b: B row 0; lda/ldb in elements (multiples of 8).
template <typename T, int kK, int kN>
__device__ __forceinline__ void gemm_nt(float (&acc)[kN / 8][4], const T* a, int lda, const T* b, int ldb) {
  static_assert(kK % 16 == 0 && kN % 16 == 0, "m16n8k16 tiles, B read two 8-column tiles at a time");
  const int lane = threadIdx.x % 32;
  // ldmatrix.x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i, which lands in register i.
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
  //    = a0, a1, a2, a3.
  const T* a_lane = a + a_frag_offset(lane, 0, 0, lda);
  // B (stored as n rows): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
  //    = b0, b1 of column tile 0, then b0, b1 of column tile 1.
  const T* b_lane = b + b_frag_offset_nk(lane, 0, 0, ldb);
#pragma unroll kNtUnroll
  for (int k = 0; k < kK; k += 16) {
    uint32_t af[4];
    ldmatrix_x4(af, a_lane + k);
#pragma unroll
    for (int n = 0; n < kN; n += 16) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b_lane + n * ldb + k);
      const uint32_t b_lo[2] = {bf[0], bf[1]}, b_hi[2] = {bf[2], bf[3]};
      mma_m16n8k16<T>(acc[n / 8], af, b_lo);
      mma_m16n8k16<T>(acc[n / 8 + 1], af, b_hi);
    }
  }
}

// acc (16 x kN) += A (16 x kK) * B (kK x kN), A from registers (accumulator layout, fp32, rounded to
// T here), B row-major in shared memory starting at its column 0 of this product.
template <typename T, int kK, int kN>
__device__ __forceinline__ void gemm_rs(float (&acc)[kN / 8][4], const float (&a)[kK / 8][4], const T* b,
                                        int ldb) {
  static_assert(kK % 16 == 0 && kN % 16 == 0, "m16n8k16 tiles, B read two 8-column tiles at a time");
  const int lane = threadIdx.x % 32;
  // All of A packed first (kK / 4 registers), so a caller's fp32 tile can die before the B loads.
  uint32_t af[kK / 16][4];
#pragma unroll
  for (int k = 0; k < kK / 16; ++k) accum_to_a_frag<T>(af[k], a[2 * k], a[2 * k + 1]);
  // ldmatrix.x4.trans on the stored (k, n) tile: matrices (k 0-7, n 0-7), (k 8-15, n 0-7),
  // (k 0-7, n 8-15), (k 8-15, n 8-15); .trans hands lane (g, t) the elements (k 2t, 2t+1; n g) of
  // each, i.e. b0, b1 of column tile 0, then b0, b1 of column tile 1.
  const T* b_lane = b + b_frag_offset_kn(lane, 0, 0, ldb);
#pragma unroll
  for (int n = 0; n < kN; n += 16) {
#pragma unroll
    for (int k = 0; k < kK; k += 16) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b_lane + k * ldb + n);
      const uint32_t b_lo[2] = {bf[0], bf[1]}, b_hi[2] = {bf[2], bf[3]};
      mma_m16n8k16<T>(acc[n / 8], af[k / 16], b_lo);
      mma_m16n8k16<T>(acc[n / 8 + 1], af[k / 16], b_hi);
    }
  }
}

// Write a warp's accumulator strip (16 x kN, times `scale`) into an fp32 shared tile at `dst`
// (the strip's row 0, column 0), pitch ld floats.
template <int kN>
__device__ __forceinline__ void store_acc(float* dst, int ld, const float (&acc)[kN / 8][4], float scale) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
    *reinterpret_cast<float2*>(dst + g * ld + 8 * j + 2 * t) =
        make_float2(acc[j][0] * scale, acc[j][1] * scale);
    *reinterpret_cast<float2*>(dst + (g + 8) * ld + 8 * j + 2 * t) =
        make_float2(acc[j][2] * scale, acc[j][3] * scale);
  }
}

template <int kN>
__device__ __forceinline__ void zero(float (&acc)[kN / 8][4]) {
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
  }
}

}  // namespace bwd
}  // namespace flashattn
