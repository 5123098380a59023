// Positional encodings (RoPE, sinusoidal) applied to q/k tiles in SHARED memory right after they land,
// so the attention kernels see encoded rows without a separate pass over global memory. The forward
// encodes Q and K tiles; the backward encodes recomputed tiles and maps fp32 gradient tiles back
// (inverse = true). Semantics are flashattn_py/semantics/positional.py `encode`, computed in fp32 and rounded
// once to the tile's type.
#pragma once

#include <cstdint>

#include "params.h"
#include "primitives.cuh"

namespace flashattn {

// sin and cos of an fp32 angle, accurate (< 1e-6 absolute up to |angle| ~1e5, measured 2.4e-7 for
// the reduction) whatever the compile flags. The project builds with --use_fast_math, which silently
// turns sincosf into __sincosf, whose error grows with |angle| (no real range reduction) and is useless
// at positions ~1e5. So: reduce by 2*pi here with a 3-part Cody-Waite split in fmaf (k * kTwoPi1 and
// the first difference are exact for |k| < 2^14; beyond, fmaf's single rounding degrades gently,
// below the fp32 angle's own rounding), then __sincosf on [-pi, pi], where its absolute error is 2^-21.4.
__device__ __forceinline__ void pe_sincos(float angle, float* s, float* c) {
  constexpr float kInvTwoPi = 0.15915494309189535f;
  constexpr float kTwoPi1 = 6.28125f;                    // 8 significant bits
  constexpr float kTwoPi2 = 1.9353071693331003e-3f;      // 2*pi - kTwoPi1, rounded to fp32
  constexpr float kTwoPi3 = 1.0253376273028358e-11f;     // 2*pi - kTwoPi1 - kTwoPi2, rounded
  const float k = rintf(angle * kInvTwoPi);
  float r = fmaf(-k, kTwoPi1, angle);
  r = fmaf(-k, kTwoPi2, r);
  r = fmaf(-k, kTwoPi3, r);
  __sincosf(r, s, c);
}

// Per-pair inverse frequency base^(-2i/dim), in fp32 as the reference computes it (the angle is then
// one fp32 product position * inv_freq).
__device__ __forceinline__ float pe_inv_freq(int i, const PositionalParams& pe) {
  return exp2f(-(float(2 * i) / float(pe.dim)) * pe.log2_base);
}

// Encode (or, inverse = true, decode a gradient of) rows [first_row, first_row + kRows) held in a
// row-major smem tile: row r of `tile` (ld elements apart) is sequence row first_row + r, whose
// position is pos[(first_row + r) * pos_stride_s] (pos already offset to this batch; nullptr means
// position = row index). Rows >= seqlen are left untouched. T: __half, __nv_bfloat16 or float.
// All kThreads threads of the (1-D) block call it; the caller __syncthreads() before and after.
//  - rotary: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), pairs (i, i + dim/2) or, interleaved,
//    (2i, 2i+1); channels >= dim untouched; inverse rotates by -angle. cos/sin from pe.cos/pe.sin
//    [p * table_stride + i] when given, else from the angle (pe_sincos: accurate at positions ~1e5
//    even under --use_fast_math).
//  - sinusoidal: x * scale + PE(p), PE[2i] = sin(angle_i), PE[2i+1] = cos(angle_i), on channels
//    < dim (= the user's head_dim; padded channels stay 0); inverse: x * scale.
// Work split: thread tid owns pair column i = tid % cols (cols = min(dim/2, kThreads)) of the rows
// tid / cols, + groups, ..., so inv_freq and the column are computed once per thread, not per pair;
// threads past cols * groups idle (at most cols - 1 of them). Each thread owns whole pairs (reads
// both, writes both), so encoding in place is race-free.
template <typename T, int kRows, int kHeadDim, int kThreads>
__device__ void encode_rows_in_smem(T* tile, int ld, int first_row, int seqlen, const int64_t* pos,
                                    int64_t pos_stride_s, const PositionalParams& pe, bool inverse) {
  if (pe.kind == int(PEKind::kNone)) return;
  const int half = pe.dim / 2;  // pairs per row (rotary and sinusoidal alike)
  const int rows = min(kRows, seqlen - first_row);
  if (rows <= 0 || half <= 0) return;
  const int cols = min(half, kThreads);
  const int groups = kThreads / cols;
  const int tid = int(threadIdx.x);
  if (tid >= cols * groups) return;
  const bool rotary = pe.kind == int(PEKind::kRotary);
  const bool table = rotary && pe.cos != nullptr;
  for (int i = tid % cols; i < half; i += cols) {
    const float inv_freq = pe_inv_freq(i, pe);
    const int c1 = !rotary || pe.interleaved ? 2 * i : i;  // the pair's channels
    const int c2 = !rotary || pe.interleaved ? 2 * i + 1 : i + half;
#pragma unroll 4  // independent position loads / sin-cos in flight: the caller waits at a barrier
    for (int r = tid / cols; r < rows; r += groups) {
      const int row = first_row + r;
      const int64_t p = pos != nullptr ? pos[int64_t(row) * pos_stride_s] : int64_t(row);
      T* x = tile + r * ld;
      const float x1 = to_float(x[c1]);
      const float x2 = to_float(x[c2]);
      if (rotary) {
        float c, s;
        if (table) {
          c = pe.cos[p * pe.table_stride + i];
          s = pe.sin[p * pe.table_stride + i];
        } else {
          pe_sincos(float(p) * inv_freq, &s, &c);
        }
        if (inverse) s = -s;
        x[c1] = from_float<T>(x1 * c - x2 * s);
        x[c2] = from_float<T>(x2 * c + x1 * s);
      } else if (inverse) {  // sinusoidal gradient: times scale
        x[c1] = from_float<T>(x1 * pe.scale);
        x[c2] = from_float<T>(x2 * pe.scale);
      } else {  // sinusoidal: x * scale + (sin, cos)
        float s, c;
        pe_sincos(float(p) * inv_freq, &s, &c);
        x[c1] = from_float<T>(x1 * pe.scale + s);
        x[c2] = from_float<T>(x2 * pe.scale + c);
      }
    }
  }
}

}  // namespace flashattn
