// Warp-level building blocks shared by the forward and backward attention kernels (sm_80+):
// tensor-core MMA, ldmatrix, cp.async, quad/warp reductions, exp2, packing and conversions.
//
// Everything is inline PTX or a thin intrinsic wrapper; no CUTLASS/CuTe. The fragment layouts below
// are those of the PTX ISA ("Matrix Fragments for mma.m16n8k16", "ldmatrix"); every kernel that
// feeds an accumulator back into an operand relies on them, so they are written out once here.
//
// Notation: lane = threadIdx.x % 32, g = lane / 4 ("groupID", 0..7), t = lane % 4 ("threadID in
// group", 0..3). A "quad" is the 4 lanes 4g..4g+3; they share the row g of every fragment.
//
// mma.sync.m16n8k16.row.col, D(16x8, f32) += A(16x16, f16|bf16) * B(16x8, f16|bf16):
//   A, 4 x .b32 registers, 2 elements each (lower column in the low 16 bits):
//     a[0] = A[g    ][2t, 2t+1]      a[2] = A[g    ][2t+8, 2t+9]
//     a[1] = A[g + 8][2t, 2t+1]      a[3] = A[g + 8][2t+8, 2t+9]
//   B, 2 x .b32 registers (element (k, n); lower k in the low 16 bits):
//     b[0] = B[2t, 2t+1][g]          b[1] = B[2t+8, 2t+9][g]
//   C/D, 4 x f32:
//     d[0], d[1] = D[g    ][2t, 2t+1]
//     d[2], d[3] = D[g + 8][2t, 2t+1]
//   Consequence used by attention: the accumulators of two adjacent n8 tiles (columns 16c..16c+7 and
//   16c+8..16c+15), packed pairwise to 16 bits, are exactly an A fragment for k-slice c:
//     a = {pack(d0[0], d0[1]), pack(d0[2], d0[3]), pack(d1[0], d1[1]), pack(d1[2], d1[3])}
//   (see accum_to_a_frag), so P = softmax(S) never leaves registers on its way to P @ V.
//
// ldmatrix.m8n8.x4(.trans).b16: lanes 8i..8i+7 give the shared addresses of the 8 rows (16 bytes
// each) of matrix i; register r[i] of every lane receives, from matrix i,
//     non-trans: M_i[g][2t, 2t+1]        .trans: M_i[2t, 2t+1][g]   (i.e. rows 2t, 2t+1 of column g)
//   Row-major smem tiles therefore give (addresses: see the *_frag_offset helpers below):
//     A fragment (16x16 at (m0, k0) of a [m][k] tile):  lane -> row m0 + lane % 16, col k0 + (lane / 16) * 8
//     B fragments of two n8 tiles from a [n][k] tile (K for S = Q K^T), non-trans:
//        lane -> row n0 + lane % 8 + (lane / 16) * 8, col k0 + ((lane / 8) % 2) * 8
//        r[0], r[1] = b[0], b[1] of n-tile n0..n0+7; r[2], r[3] = b[0], b[1] of n-tile n0+8..n0+15
//     B fragments of two n8 tiles from a [k][n] tile (V for O = P V), .trans:
//        lane -> row k0 + lane % 16, col n0 + (lane / 16) * 8
//        r[0], r[1] = b[0], b[1] of n-tile n0..n0+7; r[2], r[3] = b[0], b[1] of n-tile n0+8..n0+15
//   ldmatrix needs 16-byte aligned row addresses; rows padded to (cols + 8) elements keep the 8 rows
//   of each matrix on distinct bank groups (conflict-free) for every head dim used here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashattn {

// ---- element types ---------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }

// Round-to-nearest-even conversion of an fp32 value to T.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }

// Two floats -> one .b32 register holding (lo, hi) as T x 2, lo in the low 16 bits (MMA operand order).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// ---- tensor cores ----------------------------------------------------------------------------------

// d += a * b, m16n8k16, fp32 accumulate; T is __half or __nv_bfloat16 (layouts in the header comment).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Accumulators of n8 tiles 2c and 2c+1 (fp32) -> A fragment of k-slice c, rounded to T.
template <typename T>
__device__ __forceinline__ void accum_to_a_frag(uint32_t (&a)[4], const float (&d0)[4], const float (&d1)[4]) {
  a[0] = pack2<T>(d0[0], d0[1]);
  a[1] = pack2<T>(d0[2], d0[3]);
  a[2] = pack2<T>(d1[0], d1[1]);
  a[3] = pack2<T>(d1[2], d1[3]);
}

// ---- shared memory: ldmatrix -----------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; this lane passes the address of its row (see the header comment).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}

// Element offsets (row * ld + col) of this lane's ldmatrix row address, per operand kind.
// A 16x16 at (m0, k0) of a row-major [m][k] tile (ldmatrix_x4).
__device__ __forceinline__ int a_frag_offset(int lane, int m0, int k0, int ld) {
  return (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8;
}
// B of n-tiles n0 and n0+8, k-slice k0..k0+15, from a row-major [n][k] tile (ldmatrix_x4).
__device__ __forceinline__ int b_frag_offset_nk(int lane, int n0, int k0, int ld) {
  return (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8;
}
// B of n-tiles n0 and n0+8, k-slice k0..k0+15, from a row-major [k][n] tile (ldmatrix_x4_trans).
__device__ __forceinline__ int b_frag_offset_kn(int lane, int k0, int n0, int ld) {
  return (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8;
}

// ---- global -> shared: cp.async ----------------------------------------------------------------------

// 16-byte asynchronous copy (L2 only, .cg). valid == false writes 16 zero bytes and reads nothing
// (src-size 0); src must still be a valid-looking pointer, so callers pass the tensor base then.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N committed groups of this thread are still in flight. Other threads' copies
// become visible only after a following __syncthreads().
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Issue (not commit) the copy of rows [first_row, first_row + kRows) of a global matrix into a
// row-major smem tile with `ld` elements per row; row r of the matrix starts at gmem + row_offset(r)
// (kCols contiguous elements). Rows >= seqlen are zero-filled, so padded rows are harmless in MMAs
// (and 0 * V never meets garbage); their copies point at gmem, which must be mapped. All kThreads
// threads call.
template <typename T, int kRows, int kCols, int kThreads, typename RowOffset>
__device__ __forceinline__ void cp_async_rows(T* smem, int ld, const T* gmem, RowOffset row_offset, int first_row,
                                              int seqlen) {
  constexpr int kChunksPerRow = kCols * int(sizeof(T)) / 16;
  constexpr int kElemsPerChunk = 16 / int(sizeof(T));
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kCols * sizeof(T) % 16 == 0, "rows must be whole 16-byte chunks");
#pragma unroll
  for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
    const int c = i * kThreads + int(threadIdx.x);
    if (kChunks % kThreads != 0 && c >= kChunks) break;
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * kElemsPerChunk;
    const int row = first_row + r;
    const bool valid = row < seqlen;
    const T* src = valid ? gmem + row_offset(row) + col : gmem;
    cp_async_16(smem + r * ld + col, src, valid);
  }
}

// cp_async_rows of a matrix with a constant row stride (`gmem_row_stride` elements); gmem points at
// row 0 of this (batch, head).
template <typename T, int kRows, int kCols, int kThreads>
__device__ __forceinline__ void cp_async_tile(T* smem, int ld, const T* gmem, int64_t gmem_row_stride,
                                              int first_row, int seqlen) {
  cp_async_rows<T, kRows, kCols, kThreads>(
      smem, ld, gmem, [=](int row) { return int64_t(row) * gmem_row_stride; }, first_row, seqlen);
}

// ---- reductions --------------------------------------------------------------------------------------

// Over the 4 lanes of a quad (lanes sharing g, i.e. one row of an MMA fragment).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
// Over the whole warp (every lane gets the result).
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, m));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// ---- math ----------------------------------------------------------------------------------------------

// 2^x with one MUFU instruction (rel. error ~2^-22, flushes denormal results to 0; exp2(-inf) = 0).
// Used for softmax weights, where that error is far below fp16/bf16 rounding. Explicit, so kernels
// get it whether or not they are compiled with --use_fast_math.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace flashattn
