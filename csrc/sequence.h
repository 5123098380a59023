// Where one sequence of a batch lives, as every CUDA kernel sees it: the one reading of the
// variable-length fields of AttentionParams (cu_seqlens_q/k, seqused_k, leftpad_k) and of the paged K/V layout.
// The same rules as triton_kernels/common.py (sequence_bounds, kv_row_offsets) and
// flashattn_py/semantics/masks.py (the causal diagonal sits bottom-right of each sequence's own lengths).
//
// Plain C++ with no CUDA header: the functions are __host__ __device__, so tests/test_cuda_sequence.py
// compiles this file with the host compiler and checks it against the Python rules without a GPU.
#pragma once

#include <cstdint>

#include "params.h"

namespace flashattn {

struct SequenceView {
  int64_t q_row0 = 0, k_row0 = 0;  // first row of the sequence in the (packed) tensors; 0 when dense
  int seqlen_q = 0;                // its queries
  int seqlen_k = 0;                // the keys it attends to (seqused_k when given)
  int k_first = 0;                 // its first visible key (leftpad_k when given); rows before are padding
  int k_rows = 0;                  // key rows it owns in k/v/dk/dv (>= seqlen_k; the rest get 0 gradients)
  int64_t diag = 0;                // key position of its query 0 (bottom-right, or top-left when asked)
  bool packed = false;             // rows of one packed tensor (cu_seqlens): batch strides unused
};

// True when the call uses any per-sequence layout field; kernels are compiled twice, and the
// instance for plain dense batches reads its lengths from the (constant-bank) params, which costs no
// registers: the per-sequence values spilled registers in the tightest kernels (ptxas).
FLASHATTN_HOST_DEVICE inline bool has_sequence_layout(const AttentionParams& p) {
  return p.cu_seqlens_q != nullptr || p.seqused_k != nullptr || p.leftpad_k != nullptr || p.block_table != nullptr ||
         p.num_splits > 1;
}

// kLayout false: the dense view of every batch (the params' own lengths), whatever the fields say.
template <bool kLayout = true>
FLASHATTN_HOST_DEVICE inline SequenceView sequence_view(const AttentionParams& p, int64_t batch) {
  if (!kLayout) {
    SequenceView s;
    s.seqlen_q = p.seqlen_q;
    s.seqlen_k = s.k_rows = p.seqlen_k;
    s.diag = p.top_left ? 0 : int64_t(p.seqlen_k) - p.seqlen_q;
    return s;
  }
  SequenceView s;
  s.seqlen_q = p.seqlen_q;
  s.seqlen_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    s.packed = true;
    s.q_row0 = p.cu_seqlens_q[batch];
    s.k_row0 = p.cu_seqlens_k[batch];
    s.seqlen_q = int(p.cu_seqlens_q[batch + 1] - s.q_row0);
    s.seqlen_k = int(p.cu_seqlens_k[batch + 1] - s.k_row0);
  }
  s.k_rows = s.seqlen_k;
  if (p.seqused_k != nullptr) s.seqlen_k = p.seqused_k[batch];
  if (p.leftpad_k != nullptr) s.k_first = p.leftpad_k[batch];  // a bound on visible keys, not a shift
  // Variable lengths always align bottom-right per sequence (flashattn_py/validation/attention.py refuses top-left).
  const bool per_sequence = p.cu_seqlens_q != nullptr || p.seqused_k != nullptr;
  s.diag = (p.top_left && !per_sequence) ? 0 : int64_t(s.seqlen_k) - s.seqlen_q;
  return s;
}

// Element offset of (row 0 of the sequence, head) in a bshd tensor with strides st: packed batches
// start at their first row, dense ones at their batch.
FLASHATTN_HOST_DEVICE inline int64_t row0_offset(const SequenceView& s, const Strides& st, int64_t batch, int64_t head,
                                                 bool key_side) {
  const int64_t first = s.packed ? (key_side ? s.k_row0 : s.q_row0) * st.seq : batch * st.batch;
  return first + head * st.head;
}

// Offset of row 0 of the sequence in a position tensor (element [b, s] at b * stride_b + s * stride_s):
// packed batches index their (1, total) positions by packed row.
FLASHATTN_HOST_DEVICE inline int64_t position_offset(const SequenceView& s, int64_t stride_b, int64_t stride_s,
                                                     int64_t batch, bool key_side) {
  return s.packed ? (key_side ? s.k_row0 : s.q_row0) * stride_s : batch * stride_b;
}

// The position of row 0 of the sequence in pe's q (key_side false) or k position tensor; nullptr
// when the encoding has none (positions = row indices).
FLASHATTN_HOST_DEVICE inline const int64_t* sequence_positions(const PositionalParams& pe, const SequenceView& s,
                                                              int64_t batch, bool key_side) {
  const int64_t* pos = key_side ? pe.k_pos : pe.q_pos;
  if (pos == nullptr) return nullptr;
  return pos + (key_side ? position_offset(s, pe.k_pos_stride_b, pe.k_pos_stride_s, batch, true)
                         : position_offset(s, pe.q_pos_stride_b, pe.q_pos_stride_s, batch, false));
}

// Index of (row 0 of the sequence, head) in lse / delta: (batch, nheads_q, seqlen_q) when dense,
// (nheads_q, total_q) when packed (FlashAttention's varlen layout).
FLASHATTN_HOST_DEVICE inline int64_t stats_row0(const AttentionParams& p, const SequenceView& s, int64_t batch,
                                                int64_t head) {
  if (s.packed) return head * int64_t(p.total_q) + s.q_row0;
  return (batch * p.nheads_q + head) * int64_t(p.seqlen_q);
}

// The block-table row of sequence `batch` (its pages in order), or nullptr when K/V are not paged.
FLASHATTN_HOST_DEVICE inline const int32_t* block_table_row(const AttentionParams& p, int64_t batch) {
  return p.block_table == nullptr ? nullptr : p.block_table + batch * p.block_table_stride;
}

// Element offset of key/value row `row` of a sequence: through its block-table row `pages` (row j is
// row j % page_size of page pages[j / page_size], pages stride_page apart) when paged, else
// row * stride_s from the sequence's first row.
FLASHATTN_HOST_DEVICE inline int64_t kv_row_offset(const int32_t* pages, int page_size, int row, int64_t stride_page,
                                                   int64_t stride_s) {
  if (pages == nullptr) return int64_t(row) * stride_s;
  return int64_t(pages[row / page_size]) * stride_page + int64_t(row % page_size) * stride_s;
}

// Key blocks [first, last) that split `split` of num_splits handles out of a query tile's visible
// blocks [first, last): consecutive equal shares of whole blocks, the last one shorter (split-K, as
// triton_kernels/attention_fwd.py splits). Empty (first == last) for splits past the work.
struct BlockRange {
  int first, last;
};
FLASHATTN_HOST_DEVICE inline BlockRange split_blocks(int first, int last, int split, int num_splits) {
  if (num_splits <= 1 || last <= first) return {first, last};
  const int per_split = (last - first + num_splits - 1) / num_splits;
  const int start = first + split * per_split;
  const int end = start + per_split < last ? start + per_split : last;
  return start < end ? BlockRange{start, end} : BlockRange{last, last};
}

}  // namespace flashattn
