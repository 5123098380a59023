// Positional encodings (RoPE, sinusoidal) applied to q/k tiles in SHARED memory right after they land,
// so the attention kernels see encoded rows without a separate pass over global memory. The forward
// encodes Q and K tiles; the backward encodes recomputed tiles and maps fp32 gradient tiles back
// (inverse = true). Semantics are flashattn_py/semantics/positional.py `encode`: the angle of pair i at
// position p is the exact p * inv_freq (inv_freq = base^(-2i/dim) in fp32; the float64 reference uses
// exact angles too), its cos/sin and the encoding computed in fp32, rounded once to the tile's type.
#pragma once

#include <cstdint>

#include "params.h"
#include "primitives.cuh"
#include "rotary_angles.h"

namespace flashattn {

// Per-pair inverse frequency base^(-2i/dim), in fp32 as the reference computes it.
__device__ __forceinline__ float pe_inv_freq(int i, const PositionalParams& pe) {
  return exp2f(-(float(2 * i) / float(pe.dim)) * pe.log2_base);
}

// x -> f(x1, x2, p) on channels (c1, c2) of rows r0, r0 + step, ... < rows of a smem tile, p the row's
// position (pos[(first_row + r) * pos_stride_s], or first_row + r when pos is nullptr). f updates x1, x2.
// Tile accessors: element (r, c) of a shared-memory tile. Row-major with a row pitch (the mma.sync
// kernels' padded tiles); the Hopper kernels' 128B-swizzled panels are hopper::Sw128Tile.
template <typename T>
struct RowMajorTile {
  using Elem = T;
  T* base;
  int ld;
  __device__ __forceinline__ T& at(int r, int c) const { return base[r * ld + c]; }
};

template <typename Tile, typename F>
__device__ __forceinline__ void for_pair_rows(const Tile& tile, int r0, int step, int rows, int first_row,
                                              const int64_t* pos, int64_t pos_stride_s, int c1, int c2, F f) {
  using T = typename Tile::Elem;
#pragma unroll 2  // loads of the next row in flight; 4 (as before the walks) spilled in two sm_90 instances
  for (int r = r0; r < rows; r += step) {
    const int row = first_row + r;
    const int64_t p = pos != nullptr ? pos[int64_t(row) * pos_stride_s] : int64_t(row);
    T& x1r = tile.at(r, c1);
    T& x2r = tile.at(r, c2);
    float x1 = to_float(x1r);
    float x2 = to_float(x2r);
    f(x1, x2, p);
    x1r = from_float<T>(x1);
    x2r = from_float<T>(x2);
  }
}

// (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
__device__ __forceinline__ void rotate_pair(float& x1, float& x2, float c, float s) {
  const float y1 = x1 * c - x2 * s;
  x2 = x2 * c + x1 * s;
  x1 = y1;
}

// Encode (or, inverse = true, decode a gradient of) rows [first_row, first_row + kRows) held in a
// smem tile reached through `tile.at(r, c)` (RowMajorTile; the Hopper kernels' swizzled tiles): row r is
// sequence row first_row + r, whose position is pos[(first_row + r) * pos_stride_s] (pos already offset
// to this batch; nullptr means position = row index). Rows >= seqlen are left untouched. Elements:
// __half, __nv_bfloat16 or float. Threads tid = 0 .. kThreads - 1 call it (the whole block for
// encode_rows_in_smem, one warpgroup in the Hopper forward); the caller synchronizes them before and after.
//  - rotary: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), pairs (i, i + dim/2) or, interleaved,
//    (2i, 2i+1); channels >= dim untouched; inverse rotates by -angle. cos/sin from pe.cos/pe.sin
//    [p * table_stride + i] when given, else computed (AngleWalk, below).
//  - sinusoidal: x * scale + PE(p), PE[2i] = sin(angle_i), PE[2i+1] = cos(angle_i), on channels
//    < dim (= the user's head_dim; padded channels stay 0); inverse: x * scale.
// Work split: thread tid owns pair column i = tid % cols (cols = min(dim/2, kThreads)) of the rows
// tid / cols, + groups, ..., so inv_freq and the column are computed once per thread, not per pair;
// threads past cols * groups idle (at most cols - 1 of them). Each thread owns whole pairs (reads
// both, writes both), so encoding in place is race-free.
// Computed cos/sin: a thread's consecutive rows are `groups` positions apart whenever positions are
// row indices or contiguous ids, so an AngleWalk (rotary_angles.h) rotates the previous row's (cos, sin)
// by the step angle's, 4 fmaf per row, and computes a row's afresh (pe_sincos, accurate at any
// position < 2^24) only at the first row, every AngleWalk::kRun + 1 rows and where positions jump. A
// sin/cos per element (range reduction + 2 MUFU) was the encoding's dominant cost.
template <int kRows, int kThreads, typename Tile>
__device__ void encode_tile_rows(const Tile& tile, int tid, int first_row, int seqlen, const int64_t* pos,
                                 int64_t pos_stride_s, const PositionalParams& pe, bool inverse) {
  if (pe.kind == int(PEKind::kNone)) return;
  const int half = pe.dim / 2;  // pairs per row (rotary and sinusoidal alike)
  const int rows = min(kRows, seqlen - first_row);
  if (rows <= 0 || half <= 0) return;
  const int cols = min(half, kThreads);
  const int groups = kThreads / cols;
  if (tid >= cols * groups) return;
  const int r0 = tid / cols;
  const bool rotary = pe.kind == int(PEKind::kRotary);
  for (int i = tid % cols; i < half; i += cols) {
    const int c1 = !rotary || pe.interleaved ? 2 * i : i;  // the pair's channels
    const int c2 = !rotary || pe.interleaved ? 2 * i + 1 : i + half;
    const auto rows_of_pair = [&](auto f) {
      for_pair_rows(tile, r0, groups, rows, first_row, pos, pos_stride_s, c1, c2, f);
    };
    if (rotary && pe.cos != nullptr) {  // user tables
      const float sign = inverse ? -1.f : 1.f;
      rows_of_pair([&](float& x1, float& x2, int64_t p) {
        rotate_pair(x1, x2, pe.cos[p * pe.table_stride + i], sign * pe.sin[p * pe.table_stride + i]);
      });
    } else if (rotary) {
      const float sign = inverse ? -1.f : 1.f;
      AngleWalk walk(pe_inv_freq(i, pe), groups);
      rows_of_pair([&](float& x1, float& x2, int64_t p) {
        walk.advance(p);
        rotate_pair(x1, x2, walk.cos(), sign * walk.sin());
      });
    } else if (inverse) {  // sinusoidal gradient: times scale
      rows_of_pair([&](float& x1, float& x2, int64_t) {
        x1 *= pe.scale;
        x2 *= pe.scale;
      });
    } else {  // sinusoidal: x * scale + (sin, cos)
      AngleWalk walk(pe_inv_freq(i, pe), groups);
      rows_of_pair([&](float& x1, float& x2, int64_t p) {
        walk.advance(p);
        x1 = fmaf(x1, pe.scale, walk.sin());
        x2 = fmaf(x2, pe.scale, walk.cos());
      });
    }
  }
}

// The mma.sync kernels' form: a row-major tile with pitch ld, every thread of the (1-D) block.
template <typename T, int kRows, int kHeadDim, int kThreads>
__device__ __forceinline__ void encode_rows_in_smem(T* tile, int ld, int first_row, int seqlen, const int64_t* pos,
                                                    int64_t pos_stride_s, const PositionalParams& pe, bool inverse) {
  encode_tile_rows<kRows, kThreads>(RowMajorTile<T>{tile, ld}, int(threadIdx.x), first_row, seqlen, pos, pos_stride_s,
                                    pe, inverse);
}

}  // namespace flashattn
