// The mask rule of the CUDA kernels, written once: which keys a query may see. This is its one home
// for both passes, the forward (attention_fwd.cuh) and the backward (attention_bwd_dq.cuh,
// attention_bwd_dkdv.cuh), and it implements the same rule as the Python masks module
// (flashattn_py/semantics/masks.py: visible_keys, key_range, query_range), which every backend follows
// and the tests check against.
//
// Query i sits at key position aligned = i + offset, the diagonal offset of its sequence
// (SequenceView::diag, sequence.h): seqlen_k - seqlen_q aligns the causal diagonal bottom-right
// (FlashAttention), 0 top-left (SDPA). With window (left, right), -1 unbounded (causal is (left, 0)),
// it sees key j iff 0 <= j < seqlen_k and
//   aligned - left <= j <= aligned + right.
// The forward also bounds the keys below by the sequence's first visible key (leftpad_k: the rows
// before it are padding).
//
// Two readings of the one rule, not merged: each pass keeps the arithmetic it was tuned with, so
// moving the rule here changed no kernel's registers or spills (ptxas' report).
//  - The forward's (row_key_range, key_range, tile_needs_mask) reads the window from the params and
//    the rest from the sequence at each use, per query row or query tile.
//  - The backward's (MaskRule) copies them once and answers for ranges of queries or keys and per
//    element.
#pragma once

#include <cstdint>

#include "params.h"
#include "sequence.h"

namespace flashattn {

// ---- Forward -------------------------------------------------------------------------------------

// Sequence-row window [lo, hi) of keys that query `row` of sequence `seq` sees: masks.key_range of
// the one row, bounded below by the first visible key (seq.k_first) too. lo is clamped to <= seqlen_k
// and hi to >= 0; a row that sees no key may get lo > hi.
__device__ __forceinline__ void row_key_range(int64_t row, const AttentionParams& p, const SequenceView& seq,
                                              int& lo, int& hi) {
  const int64_t aligned = row + seq.diag;
  int64_t l = seq.k_first, h = seq.seqlen_k;
  if (p.window_left >= 0) l = max(l, aligned - p.window_left);
  if (p.window_right >= 0) h = min(h, aligned + p.window_right + 1);
  lo = int(min(l, int64_t(seq.seqlen_k)));
  hi = int(max(h, int64_t(0)));
}

// Keys [lo, hi) that query rows [q_start, q_end) of sequence `seq` can see (masks.key_range, q_start <
// q_end): the first row's first key to the last row's last, as both window edges move right with the
// row. hi <= lo when every row is fully masked.
__device__ __forceinline__ void key_range(int q_start, int q_end, const AttentionParams& p, const SequenceView& seq,
                                          int& lo, int& hi) {
  int hi_first, lo_last;
  row_key_range(q_start, p, seq, lo, hi_first);
  row_key_range(q_end - 1, p, seq, lo_last, hi);
}

// True when some key of the block [n_start, n_start + cols) is hidden from some query row of
// [m_start, m_start + rows): the block crosses the sequence end, the first visible key, the
// causal/right diagonal or the left window edge. Only such blocks pay for the per-element test. Rows
// past seqlen_q count too (conservative: they are never stored). Dense batches (kLayout false) have
// no first visible key to test.
template <bool kLayout>
__device__ __forceinline__ bool tile_needs_mask(const AttentionParams& p, const SequenceView& seq, int m_start,
                                                int rows, int n_start, int cols) {
  return n_start + cols > seq.seqlen_k || (kLayout && n_start < seq.k_first) ||
         (p.window_right >= 0 && n_start + cols - 1 > m_start + seq.diag + p.window_right) ||
         (p.window_left >= 0 && n_start < int64_t(m_start) + rows - 1 + seq.diag - p.window_left);
}

// ---- Backward ------------------------------------------------------------------------------------

struct Range {
  int64_t lo, hi;  // half-open; empty when lo == hi
};

// key_range / query_range are masks.key_range / masks.query_range line for line, in int64 because a
// window may be as large as INT_MAX and the sums below would overflow int.
struct MaskRule {
  int seqlen_q, seqlen_k;
  int left, right;  // < 0: unbounded on that side
  int offset;       // key position of query 0 (SequenceView::diag: bottom-right or top-left)

  // The one place where the backward reads the mask: the window from the params, lengths and
  // diagonal from the sequence (sequence.h).
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

  // Per element (masks.visible_keys); i < seqlen_q + tile rows and j < seqlen_k + tile cols, so int
  // is enough here: j - i - offset lies in (-seqlen_q - tile, seqlen_k + tile).
  __device__ __forceinline__ bool visible(int i, int j) const {
    const int d = j - i - offset;
    return i < seqlen_q && j < seqlen_k && (right < 0 || d <= right) && (left < 0 || d >= -left);
  }
};

}  // namespace flashattn
