// Which (query, key) pairs the backward kernels visit: the bottom-right aligned causal/window rule of
// flashattn_py/masks.py, as block ranges (whole tiles skipped) and as a per-element test.
//
// Query i sits at key position i + (seqlen_k - seqlen_q); with window (left, right), -1 unbounded
// (causal is (left, 0)), it sees key j iff 0 <= j < seqlen_k and
//   aligned - left <= j <= aligned + right.
// key_range / query_range are masks.key_range / masks.query_range line for line, in int64 because a
// window may be as large as INT_MAX and the sums below would overflow int.
#pragma once

#include <cstdint>

#include "params.h"
#include "sequence.h"

namespace flashattn {
namespace bwd {

struct Range {
  int64_t lo, hi;  // half-open; empty when lo == hi
};

struct MaskRule {
  int seqlen_q, seqlen_k;
  int left, right;  // < 0: unbounded on that side
  int offset;       // key position of query 0 (params.h diagonal_offset: bottom-right or top-left)

  // The one place that reads the mask: the window from the params, lengths and diagonal from the
  // sequence (sequence.h).
  __device__ __forceinline__ static MaskRule from(const AttentionParams& p, const SequenceView& seq) {
    return {seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right, int(seq.diag)};
  }

  // Keys that queries [q_start, q_end) can see (masks.key_range).
  __device__ __forceinline__ Range key_range(int64_t q_start, int64_t q_end) const {
    int64_t lo = 0, hi = seqlen_k;
    if (left >= 0) lo = max(int64_t(0), q_start + int64_t(offset) - left);
    if (right >= 0) hi = min(int64_t(seqlen_k), q_end - 1 + int64_t(offset) + right + 1);
    return {lo, max(lo, hi)};
  }

  // Queries that can see some key in [k_start, k_end) (masks.query_range).
  __device__ __forceinline__ Range query_range(int64_t k_start, int64_t k_end) const {
    int64_t lo = 0, hi = seqlen_q;
    if (right >= 0) lo = max(int64_t(0), k_start - int64_t(offset) - right);
    if (left >= 0) hi = min(int64_t(seqlen_q), k_end - 1 - int64_t(offset) + left + 1);
    return {lo, max(lo, hi)};
  }

  // True when some pair of the tile (queries [m0, m0 + rows) x keys [n0, n0 + cols)) is hidden or
  // out of bounds; tiles strictly inside the visible band skip the per-element test.
  __device__ __forceinline__ bool tile_needs_mask(int64_t m0, int rows, int64_t n0, int cols) const {
    bool needs = m0 + rows > seqlen_q || n0 + cols > seqlen_k;
    // (key - query - offset) ranges over [n0 - (m0 + rows - 1), n0 + cols - 1 - m0] - offset.
    if (right >= 0) needs |= (n0 + cols - 1) - m0 - int64_t(offset) > right;
    if (left >= 0) needs |= n0 - (m0 + rows - 1) - int64_t(offset) < -int64_t(left);
    return needs;
  }

  // Per element; i < seqlen_q + tile rows and j < seqlen_k + tile cols, so int is enough here:
  // j - i - offset lies in (-seqlen_q - tile, seqlen_k + tile).
  __device__ __forceinline__ bool visible(int i, int j) const {
    const int d = j - i - offset;
    return i < seqlen_q && j < seqlen_k && (right < 0 || d <= right) && (left < 0 || d >= -left);
  }
};

}  // namespace bwd
}  // namespace flashattn
