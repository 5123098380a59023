// Host probe of csrc/sequence.h, for tests/test_cuda_sequence.py: the per-sequence rules every CUDA
// kernel uses (lengths, first visible key, first rows, diagonal, lse rows, paged row offsets, split-K
// shares), compiled with the host compiler and checked against the Python rules without a GPU.
//
// stdin, whitespace-separated integers:
//   batch seqlen_q seqlen_k nheads_q top_left packed has_seqused page_size table_stride num_splits has_leftpad
//   [cu_seqlens_q: batch + 1] [cu_seqlens_k: batch + 1]     when packed
//   [seqused_k: batch]                                       when has_seqused
//   [leftpad_k: batch]                                       when has_leftpad
//   [block_table: batch * table_stride]                      when page_size > 0
// stdout:
//   layout has_sequence_layout k_first(dense instance, batch 0)
// then per sequence b:
//   seq b q_row0 k_row0 seqlen_q seqlen_k k_first k_rows diag stats_row0(head 1) q_offset k_offset qpos_offset
//   (offsets with strides batch 1000000, seq 100, head 7 and positions stride_b 1000, stride_s 3)
//   [kv b off(row 0) ... off(row seqlen_k - 1)]  (page stride 100000, row stride 100)  when paged
//   [split b s first last]  for each split s of the key blocks [1, 1 + seqlen_k)        when num_splits > 1
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../sequence.h"

using namespace flashattn;

static std::vector<int32_t> read_ints(int n) {
  std::vector<int32_t> v(n);
  for (auto& x : v) {
    if (std::scanf("%d", &x) != 1) std::exit(2);
  }
  return v;
}

int main() {
  const std::vector<int32_t> head = read_ints(11);
  AttentionParams p;
  p.batch = head[0];
  p.seqlen_q = head[1];
  p.seqlen_k = head[2];
  p.nheads_q = head[3];
  p.top_left = head[4];
  const bool packed = head[5] != 0, has_seqused = head[6] != 0;
  p.page_size = head[7];
  p.block_table_stride = head[8];
  p.num_splits = head[9];
  const bool has_leftpad = head[10] != 0;
  std::vector<int32_t> cu_q, cu_k, used, leftpad, table;
  if (packed) {
    cu_q = read_ints(p.batch + 1);
    cu_k = read_ints(p.batch + 1);
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
    p.total_q = cu_q[p.batch];
  }
  if (has_seqused) {
    used = read_ints(p.batch);
    p.seqused_k = used.data();
  }
  if (has_leftpad) {
    leftpad = read_ints(p.batch);
    p.leftpad_k = leftpad.data();
  }
  if (p.page_size > 0) {
    table = read_ints(p.batch * int(p.block_table_stride));
    p.block_table = table.data();
  }
  const Strides strides{1000000, 100, 7};
  std::vector<int64_t> positions(1 << 20);  // a q position tensor with strides (1000, 3)
  p.pe.q_pos = positions.data();
  p.pe.q_pos_stride_b = 1000;
  p.pe.q_pos_stride_s = 3;
  std::printf("layout %d %d\n", int(has_sequence_layout(p)), sequence_view<false>(p, 0).k_first);
  for (int b = 0; b < p.batch; ++b) {
    const SequenceView s = sequence_view(p, b);
    std::printf("seq %d %lld %lld %d %d %d %d %lld %lld %lld %lld %lld\n", b, (long long)s.q_row0,
                (long long)s.k_row0, s.seqlen_q, s.seqlen_k, s.k_first, s.k_rows, (long long)s.diag,
                (long long)stats_row0(p, s, b, 1), (long long)row0_offset(s, strides, b, 1, false),
                (long long)row0_offset(s, strides, b, 1, true),
                (long long)(sequence_positions(p.pe, s, b, false) - positions.data()));
    if (p.page_size > 0) {
      std::printf("kv %d", b);
      for (int row = 0; row < s.seqlen_k; ++row) {
        std::printf(" %lld", (long long)kv_row_offset(block_table_row(p, b), p.page_size, row, 100000, 100));
      }
      std::printf("\n");
    }
    if (p.num_splits > 1) {
      for (int split = 0; split < p.num_splits; ++split) {
        const BlockRange r = split_blocks(1, 1 + s.seqlen_k, split, p.num_splits);
        std::printf("split %d %d %d %d\n", b, split, r.first, r.last);
      }
    }
  }
  return 0;
}
