// Forward attention kernel (FlashAttention-2 schedule) on mma.sync tensor cores, sm_80+.
//
// One CTA = one tile of kBlockM query rows of one (batch, head); warp w owns kMSlabs slabs of 16
// query rows (rows 16 * (w * kMSlabs + mi) .. +15 of the tile, mi < kMSlabs) and keeps, for them,
// the output accumulator O (fp32), the running row max m and the running (per-thread partial) row
// sum l, all in registers. Two slabs per warp reuse every K/V fragment read from shared memory for
// two MMAs: with one slab every m16n8k16 needs 256 B of ldmatrix traffic, and the kernel was 14%
// (d = 128) to 24% (d = 64) slower on an H200. The CTA walks only the key blocks the mask lets its
// rows see (causal / window block skipping).
//
// Fragment ownership (primitives.cuh has the full m16n8k16 layout), lane = 4g + t, slab mi:
//   S = Q K^T:  s_acc[mi][j][0..1] = S[row g    ][key 8j + 2t, 8j + 2t + 1]
//               s_acc[mi][j][2..3] = S[row g + 8][key 8j + 2t, 8j + 2t + 1]     (rows of slab mi)
//   O:          o_acc[mi][j][0..1] = O[row g][dim 8j + 2t, +1], o_acc[mi][j][2..3] = O[row g + 8][...]
//   m_row[mi][h], l_row[mi][h]: row g + 8h of slab mi. The 4 lanes of a quad share a row: maxima are
//   quad-reduced every block (all lanes must rescale alike); sums stay per-lane partials until the
//   epilogue. P = exp2(S - m) goes from s_acc to A fragments of P V without leaving registers
//   (accum_to_a_frag: n8 tiles 2c, 2c+1 = k-slice c).
//
// Shared memory: Q [kBlockM][kHeadDim + 8], then two buffers each of K and V [kBlockN][kHeadDim + 8];
// the +8 padding makes every ldmatrix conflict-free. Pipeline per key block j (K_j, V_j landed, K_j
// encoded): issue K_{j+1}, V_{j+1} into the other buffers | S = Q K_j^T, mask, online softmax |
// O += P V_j | wait, sync | encode K_{j+1} (if PE), sync. One barrier per block (two with PE), and the
// loads have a whole block of math to land. (A single-buffered FA2-style pipeline, V_j under QK^T and
// K_{j+1} under PV, was 4% slower at d = 128 on an H200.)
//
// Softmax in base 2: scores are multiplied by softmax_scale * log2(e) once, then p = 2^(s - m)
// (one MUFU ex2 each). A row that has seen no visible key yet has m = -inf; it subtracts 0 instead,
// so p = 2^-inf = 0 and no (-inf) - (-inf) NaN appears. At the end such a row has l = 0: out 0, lse -inf.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "masks.cuh"
#include "params.h"
#include "positional.cuh"
#include "primitives.cuh"
#include "score_mods.h"
#include "sequence.h"

namespace flashattn {

// Tile shapes per head dim (kBlockM = 16 * kMSlabs * kWarps). Registers per thread: O is
// kMSlabs * kHeadDim / 2 fp32, S is kMSlabs * kBlockN / 2, Q fragments (when held) kMSlabs * kHeadDim / 4.
//  - d <= 96: 128 x 64 tiles, 4 warps x 2 slabs (Q fragments held in registers at d = 32 only).
//  - d 128: 128 x 32, 4 warps x 2 slabs, Q re-read from smem per k-slice: O (128) + S (32) registers
//    leave no room for 64 more of Q fragments; 128 x 64 spills on sm_80 and needs 102 KB of smem
//    (it was 5% faster on an H200).
//  - d 256: 64 x 32, 4 warps x 1 slab: O alone is 128 registers; Q + 2 x (K + V) = (64 + 4 * 32) * 264
//    * 2 B = 99 KB, the sm_86/sm_89 per-block limit. (128 x 32 with 8 warps and single K/V buffers was
//    12% slower on an H200.)
template <int kHeadDim>
struct FwdTileShape {
  static constexpr int kBlockM = 128, kBlockN = 32, kWarps = 4, kMSlabs = 2;
  static constexpr bool kQInRegs = false;
};
template <>
struct FwdTileShape<32> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMSlabs = 2;
  static constexpr bool kQInRegs = true;
};
template <>
struct FwdTileShape<64> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMSlabs = 2;
  static constexpr bool kQInRegs = false;
};
template <>
struct FwdTileShape<96> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kMSlabs = 2;
  static constexpr bool kQInRegs = false;
};
template <>
struct FwdTileShape<256> {
  static constexpr int kBlockM = 64, kBlockN = 32, kWarps = 4, kMSlabs = 1;
  static constexpr bool kQInRegs = false;
};

// kLayout (the per-sequence layout instance: variable lengths, paged K/V, split-K) takes one slab per
// warp: 64-row query tiles waste less on decoding (1 query) and short packed sequences, and leave
// registers for the per-sequence values (with two slabs the d = 96 / 128 instances spilled 20-52
// bytes on sm_80). At d = 256 it streams 16-key blocks (32 spilled 12 bytes on sm_80).
// kMods (softcap / ALiBi, score_mods.h): the dense d = 96 tile already takes 255 registers on sm_80
// without them, and with them spilled 24 bytes (sm_80) / 4 (sm_90); it streams 32-key blocks (S halves).
template <int kHeadDim, bool kLayout = false, bool kMods = false>
struct FwdConfig {
  using Shape = FwdTileShape<kHeadDim>;
  static constexpr int kMSlabs = kLayout ? 1 : Shape::kMSlabs;  // 16-row slabs per warp
  static constexpr int kBlockM = kLayout ? 16 * Shape::kWarps : Shape::kBlockM;
  static constexpr int kBlockN = kLayout && kHeadDim == 256 ? 16
                                 : !kLayout && kMods && kHeadDim == 96 ? 32
                                                                       : Shape::kBlockN;
  static constexpr int kWarps = Shape::kWarps;
  static constexpr bool kQInRegs = Shape::kQInRegs;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kLd = kHeadDim + 8;  // smem row pitch (elements), see primitives.cuh
  static constexpr int kSmemElems = (kBlockM + 4 * kBlockN) * kLd;  // Q, 2 x K, 2 x V
  static_assert(kBlockM == 16 * kMSlabs * kWarps, "kMSlabs 16-row slabs per warp");
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "whole m16n8k16 k-slices");
};

// kLayout: compiled for the per-sequence layouts (variable lengths, paged K/V, split-K; sequence.h),
// or (false) for plain dense batches only. kMods: compiled for score modifications (softcap, ALiBi:
// score_mods.h), or (false) for plain scores, whose instance is what it was before they existed.
template <typename T, int kHeadDim, bool kLayout, bool kMods>
__global__ void __launch_bounds__(FwdConfig<kHeadDim, kLayout, kMods>::kThreads, 1)
    attention_fwd_kernel(const __grid_constant__ AttentionParams params) {
  using Cfg = FwdConfig<kHeadDim, kLayout, kMods>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads, kLd = Cfg::kLd;
  constexpr int kSlicesQK = kHeadDim / 16;  // k-slices of S = Q K^T
  constexpr int kTilesS = kBlockN / 8;      // n8 tiles of S
  constexpr int kSlicesPV = kBlockN / 16;   // k-slices of O = P V
  constexpr int kTilesO = kHeadDim / 8;     // n8 tiles of O

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* k_s = q_s + kBlockM * kLd;  // two K buffers, then two V buffers
  T* v_s = k_s + 2 * kBlockN * kLd;

  const AttentionParams& p = params;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  // Heaviest query tiles first: under a causal mask the last tiles see the most keys; starting them
  // early keeps them out of the final, partly idle wave of CTAs (a small effect at 4k, < 1%).
  // Split-K: the num_splits CTAs of one query tile are neighbours on grid axis 0.
  const int num_splits = kLayout ? p.num_splits : 1;
  const int m_tiles = gridDim.x / num_splits;
  const int m_start = (m_tiles - 1 - int(blockIdx.x) / num_splits) * kBlockM;
  const int split = int(blockIdx.x) % num_splits;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head / (p.nheads_q / p.nheads_kv);
  const SequenceView seq = sequence_view<kLayout>(p, batch);
  if (kLayout && m_start >= seq.seqlen_q) return;  // the grid covers the longest sequence of the batch

  const T* q = static_cast<const T*>(p.q) + row0_offset(seq, p.q_strides, batch, head, false);
  // Paged K/V: k and v point at page 0 of this head; kv_row_offset finds each row's page.
  const int32_t* pages = kLayout ? block_table_row(p, batch) : nullptr;
  const T* k = static_cast<const T*>(p.k) +
               (pages ? kv_head * p.k_strides.head : row0_offset(seq, p.k_strides, batch, kv_head, true));
  const T* v = static_cast<const T*>(p.v) +
               (pages ? kv_head * p.v_strides.head : row0_offset(seq, p.v_strides, batch, kv_head, true));
  const auto k_row = [&](int row) { return kv_row_offset(pages, p.page_size, row, p.k_strides.batch, p.k_strides.seq); };
  const auto v_row = [&](int row) { return kv_row_offset(pages, p.page_size, row, p.v_strides.batch, p.v_strides.seq); };
  const bool encode = p.pe.kind != int(PEKind::kNone);
  const int64_t* q_pos = sequence_positions(p.pe, seq, batch, false);
  const int64_t* k_pos = sequence_positions(p.pe, seq, batch, true);

  // Key blocks this query tile can see (masks.cuh key_range), from the block of the first visible key;
  // empty when every row is fully masked. Under split-K this CTA takes its share of them (sequence.h
  // split_blocks).
  int n_block_min = 0, n_block_max = 0;
  {
    int lo, hi;
    key_range(m_start, min(m_start + kBlockM, seq.seqlen_q), p, seq, lo, hi);
    if (hi > lo) {
      const BlockRange share = split_blocks(lo / kBlockN, (hi + kBlockN - 1) / kBlockN, split, num_splits);
      n_block_min = share.first;
      n_block_max = share.last;
    }
  }

  // Prologue: the Q tile and the first K and V tiles, encoded before anyone reads them. Only this
  // first block can start before the first visible key (seq.k_first): its padding rows are loaded as
  // copies of row k_first, so padding is never read. It may hold anything, and a NaN in V would
  // survive P = 0 in P V; the copies are masked like the padding (-inf scores).
  cp_async_tile<T, kBlockM, kHeadDim, kThreads>(q_s, kLd, q, p.q_strides.seq, m_start, seq.seqlen_q);
  cp_async_commit();
  if (n_block_min < n_block_max) {
    const auto k_row0 = [&](int row) { return k_row(kLayout ? max(row, seq.k_first) : row); };
    const auto v_row0 = [&](int row) { return v_row(kLayout ? max(row, seq.k_first) : row); };
    cp_async_rows<T, kBlockN, kHeadDim, kThreads>(k_s, kLd, k, k_row0, n_block_min * kBlockN, seq.seqlen_k);
    cp_async_rows<T, kBlockN, kHeadDim, kThreads>(v_s, kLd, v, v_row0, n_block_min * kBlockN, seq.seqlen_k);
    cp_async_commit();
  }
  cp_async_wait<0>();
  __syncthreads();
  if (encode) {
    encode_rows_in_smem<T, kBlockM, kHeadDim, kThreads>(q_s, kLd, m_start, seq.seqlen_q, q_pos,
                                                        p.pe.q_pos_stride_s, p.pe, false);
    if (n_block_min < n_block_max) {
      encode_rows_in_smem<T, kBlockN, kHeadDim, kThreads>(k_s, kLd, n_block_min * kBlockN, seq.seqlen_k, k_pos,
                                                          p.pe.k_pos_stride_s, p.pe, false);
    }
    __syncthreads();
  }

  constexpr int kMSlabs = Cfg::kMSlabs;
  constexpr int kWarpRows = 16 * kMSlabs;
  const T* q_warp = q_s + warp * kWarpRows * kLd;  // this warp's rows; slab mi starts 16 * mi later
  uint32_t q_frag[Cfg::kQInRegs ? kMSlabs : 1][Cfg::kQInRegs ? kSlicesQK : 1][4];
  if constexpr (Cfg::kQInRegs) {
#pragma unroll
    for (int mi = 0; mi < kMSlabs; ++mi)
#pragma unroll
      for (int ks = 0; ks < kSlicesQK; ++ks)
        ldmatrix_x4(q_frag[mi][ks], q_warp + a_frag_offset(lane, 16 * mi, ks * 16, kLd));
  }

  float o_acc[kMSlabs][kTilesO][4];
  float m_row[kMSlabs][2], l_row[kMSlabs][2];
#pragma unroll
  for (int mi = 0; mi < kMSlabs; ++mi) {
#pragma unroll
    for (int j = 0; j < kTilesO; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mi][j][e] = 0.f;
    m_row[mi][0] = m_row[mi][1] = -INFINITY;
    l_row[mi][0] = l_row[mi][1] = 0.f;
  }
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;  // scores in log2 units
  const int row0 = m_start + warp * kWarpRows + g;                   // rows row0 + 16 mi + 8 h
  const ScoreMod mod = kMods ? ScoreMod::of(p, batch, head) : ScoreMod{};

  for (int n_block = n_block_min; n_block < n_block_max; ++n_block) {
    const int n_start = n_block * kBlockN;
    const bool has_next = n_block + 1 < n_block_max;
    const int stage = (n_block - n_block_min) & 1;
    const T* k_cur = k_s + stage * kBlockN * kLd;
    const T* v_cur = v_s + stage * kBlockN * kLd;
    T* k_next = k_s + (stage ^ 1) * kBlockN * kLd;
    if (has_next) {  // K_{j+1}, V_{j+1} stream in under all of block j's math
      const int next_start = n_start + kBlockN;
      cp_async_rows<T, kBlockN, kHeadDim, kThreads>(k_next, kLd, k, k_row, next_start, seq.seqlen_k);
      cp_async_rows<T, kBlockN, kHeadDim, kThreads>(v_s + (stage ^ 1) * kBlockN * kLd, kLd, v, v_row, next_start,
                                                    seq.seqlen_k);
      cp_async_commit();
    }

    // S = Q K^T for this warp's rows x kBlockN keys; each K fragment feeds kMSlabs MMAs.
    float s_acc[kMSlabs][kTilesS][4];
#pragma unroll
    for (int mi = 0; mi < kMSlabs; ++mi)
#pragma unroll
      for (int j = 0; j < kTilesS; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s_acc[mi][j][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kSlicesQK; ++ks) {
      uint32_t a[kMSlabs][4];
#pragma unroll
      for (int mi = 0; mi < kMSlabs; ++mi) {
        if constexpr (Cfg::kQInRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mi][r] = q_frag[mi][ks][r];
        } else {
          ldmatrix_x4(a[mi], q_warp + a_frag_offset(lane, 16 * mi, ks * 16, kLd));
        }
      }
#pragma unroll
      for (int j = 0; j < kTilesS; j += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, k_cur + b_frag_offset_nk(lane, j * 8, ks * 16, kLd));
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int mi = 0; mi < kMSlabs; ++mi) {
          mma_m16n8k16<T>(s_acc[mi][j], a[mi], b0);
          mma_m16n8k16<T>(s_acc[mi][j + 1], a[mi], b1);
        }
      }
    }

    // Masks cost only on blocks that some row does not see whole (masks.cuh).
    const bool need_mask = tile_needs_mask<kLayout>(p, seq, m_start, kBlockM, n_start, kBlockN);

    // Online softmax, per row: slab mi, half h (row0 + 16 mi + 8 h).
    float rescale[kMSlabs][2];
#pragma unroll
    for (int mi = 0; mi < kMSlabs; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int lo = 0, hi = kBlockN;  // visible columns of this row, relative to n_start
        if (need_mask) {
          row_key_range(row0 + 16 * mi + 8 * h, p, seq, lo, hi);
          lo -= n_start;
          hi -= n_start;
        }
        float mx = m_row[mi][h];
        // ALiBi's offset i + diag - j of this row's first column; column col is `col` less.
        const int offset0 = kMods ? int(row0 + 16 * mi + 8 * h + seq.diag - n_start) : 0;
#pragma unroll
        for (int j = 0; j < kTilesS; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = j * 8 + 2 * t + e;
            float sv;
            if constexpr (kMods) {
              float dcap;  // the backward's factor; unused here
              sv = mod.apply(s_acc[mi][j][2 * h + e], offset0 - col, &dcap);
            } else {
              sv = s_acc[mi][j][2 * h + e] * scale_log2;
            }
            if (need_mask && (col < lo || col >= hi)) sv = -INFINITY;
            s_acc[mi][j][2 * h + e] = sv;
            mx = fmaxf(mx, sv);
          }
        }
        mx = quad_max(mx);
        const float m_sub = mx == -INFINITY ? 0.f : mx;  // nothing visible yet: avoid -inf - -inf
        rescale[mi][h] = mx == m_row[mi][h] ? 1.f : fast_exp2(m_row[mi][h] - m_sub);  // exactly 1 if unmoved
        m_row[mi][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kTilesS; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pr = fast_exp2(s_acc[mi][j][2 * h + e] - m_sub);
            s_acc[mi][j][2 * h + e] = pr;
            sum += pr;
          }
        }
        l_row[mi][h] = l_row[mi][h] * rescale[mi][h] + sum;
      }
    }
    // Rescale O only when some row max of this warp moved: after the first blocks the max rarely
    // changes, and kMSlabs * kHeadDim / 2 multiplies per block cost about as many issue slots as the
    // MMAs at kBlockN = 32 (+7% at d = 128, +11% at d = 256 on an H200). At d <= 64, O is small and
    // the branch only splits the schedule (-2%), so it always rescales. The vote keeps the branch
    // warp-uniform; skipping a factor of exactly 1 changes nothing.
    bool moved = false;
#pragma unroll
    for (int mi = 0; mi < kMSlabs; ++mi) moved |= rescale[mi][0] != 1.f || rescale[mi][1] != 1.f;
    if (kHeadDim <= 64 || __any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int mi = 0; mi < kMSlabs; ++mi)
#pragma unroll
        for (int j = 0; j < kTilesO; ++j) {
          o_acc[mi][j][0] *= rescale[mi][0];
          o_acc[mi][j][1] *= rescale[mi][0];
          o_acc[mi][j][2] *= rescale[mi][1];
          o_acc[mi][j][3] *= rescale[mi][1];
        }
    }

    // O += P V: P rounded to T straight from the S accumulators; each V fragment feeds kMSlabs MMAs.
#pragma unroll
    for (int kk = 0; kk < kSlicesPV; ++kk) {
      uint32_t a[kMSlabs][4];
#pragma unroll
      for (int mi = 0; mi < kMSlabs; ++mi) accum_to_a_frag<T>(a[mi], s_acc[mi][2 * kk], s_acc[mi][2 * kk + 1]);
#pragma unroll
      for (int j = 0; j < kTilesO; j += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_cur + b_frag_offset_kn(lane, kk * 16, j * 8, kLd));
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int mi = 0; mi < kMSlabs; ++mi) {
          mma_m16n8k16<T>(o_acc[mi][j], a[mi], b0);
          mma_m16n8k16<T>(o_acc[mi][j + 1], a[mi], b1);
        }
      }
    }

    cp_async_wait<0>();  // K_{j+1}, V_{j+1} landed (this thread's copies) ...
    __syncthreads();     // ... everyone's; and every warp is done reading buffer `stage`, which the next
                         // iteration refills with block j+2
    if (encode && has_next) {
      encode_rows_in_smem<T, kBlockN, kHeadDim, kThreads>(k_next, kLd, n_start + kBlockN, seq.seqlen_k, k_pos,
                                                          p.pe.k_pos_stride_s, p.pe, false);
      __syncthreads();
    }
  }

  // Epilogue: normalize, lse (natural log), stage this warp's rows in its own Q smem rows (only this
  // warp ever reads them, so __syncwarp suffices), then 16-byte coalesced stores of the valid rows.
  // Split-K instead stores this CTA's partial result in fp32 (normalized over its own keys) straight
  // from the accumulators, for the merge kernel (attention_split_merge.cuh).
  const int64_t stats0 = stats_row0(p, seq, batch, head);
  const bool partial = num_splits > 1;
  const int64_t partial_row0 = partial ? split * (int64_t(p.batch) * p.nheads_q * p.seqlen_q) + stats0 : 0;
  T* o_stage = q_s + warp * kWarpRows * kLd;
#pragma unroll
  for (int mi = 0; mi < kMSlabs; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(l_row[mi][h]);
      const float inv_l = l > 0.f ? 1.f / l : 0.f;  // l = 0: the row saw no key, out = 0
      const int row = row0 + 16 * mi + 8 * h;
      const auto lse = [&] { return l > 0.f ? (m_row[mi][h] + log2f(l)) * 0.6931471805599453f : -INFINITY; };
      if (partial) {
        if (row < seq.seqlen_q) {
          if (t == 0) p.lse_accum[partial_row0 + row] = lse();
          float* o = p.out_accum + (partial_row0 + row) * kHeadDim + 2 * t;
#pragma unroll
          for (int j = 0; j < kTilesO; ++j) {
            *reinterpret_cast<float2*>(o + j * 8) = make_float2(o_acc[mi][j][2 * h] * inv_l,
                                                                o_acc[mi][j][2 * h + 1] * inv_l);
          }
        }
        continue;
      }
      if (t == 0 && row < seq.seqlen_q) p.lse[stats0 + row] = lse();
#pragma unroll
      for (int j = 0; j < kTilesO; ++j) {
        *reinterpret_cast<uint32_t*>(o_stage + (16 * mi + g + 8 * h) * kLd + j * 8 + 2 * t) =
            pack2<T>(o_acc[mi][j][2 * h] * inv_l, o_acc[mi][j][2 * h + 1] * inv_l);
      }
    }
  }
  if (partial) return;
  __syncwarp();
  T* out = static_cast<T*>(p.out) + row0_offset(seq, p.out_strides, batch, head, false);
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
#pragma unroll
  for (int i = 0; i < kWarpRows * kChunksPerRow / 32; ++i) {
    const int c = i * 32 + lane;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int row = m_start + warp * kWarpRows + r;
    if (row < seq.seqlen_q) {
      *reinterpret_cast<uint4*>(out + row * p.out_strides.seq + col) =
          *reinterpret_cast<const uint4*>(o_stage + r * kLd + col);
    }
  }
}

}  // namespace flashattn
