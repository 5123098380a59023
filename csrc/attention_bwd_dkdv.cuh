// Backward step 2: dK and dV. One CTA owns a block of kBlockN keys of one kv head; its K and V stay
// in shared memory while the query tiles that can see it stream past, for every query head of the
// GQA group in turn, so the group's contributions are summed in registers (deterministic, no atomics).
// With kStages = 2 the copies of the next query tile (cp.async) run while this one is computed.
//
// Transposed formulation: each warp computes S^T = K Q^T and dP^T = V dO^T for its 16 keys, so the
// probabilities P^T and dS^T come out as accumulators whose rows are keys, which is exactly the A
// operand of dV += P^T dO and dK += dS^T Q (see attention_bwd_warp_gemm.cuh). No transpose is staged
// through shared memory.
//
// Warps: kWarpsN strips of 16 keys x kWarpsD column slices of head_dim. With kWarpsD = 2 (head_dim
// 256) both warps of a strip recompute the same S^T/dP^T (full head_dim contraction) but each keeps
// dK/dV only for its half of the columns: the two 16 x 256 fp32 accumulators would not fit in one
// thread's registers otherwise, and splitting inside the CTA keeps whole dK rows together for the
// inverse positional encoding in the epilogue.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attention_bwd_tiles.cuh"
#include "attention_bwd_warp_gemm.cuh"
#include "masks.cuh"
#include "params.h"
#include "positional.cuh"
#include "primitives.cuh"
#include "score_mods.h"
#include "sequence.h"

namespace flashattn {
namespace bwd {

template <int kHeadDim_, int kWarpsN_, int kWarpsD_, int kBlockM_, int kStages_>
struct DkdvConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarpsN = kWarpsN_;
  static constexpr int kWarpsD = kWarpsD_;
  static constexpr int kBlockN = 16 * kWarpsN;  // keys per CTA
  static constexpr int kBlockM = kBlockM_;      // queries per streamed tile
  static constexpr int kThreads = 32 * kWarpsN * kWarpsD;
  // Q/dO/lse/delta buffers: 2 = the next tile's loads are in flight while this one is used.
  static constexpr int kStages = kStages_;
  static constexpr int kCols = kHeadDim / kWarpsD;  // dK/dV columns per warp
  static constexpr int kLd = kHeadDim + kSmemPad;
  // K, V tiles, kStages x (Q, dO) tiles (T), then kStages x (lse (base 2), delta) rows (fp32).
  static constexpr int kTileBytes = (2 * kBlockN + kStages * 2 * kBlockM) * kLd * 2;
  static constexpr int kMainBytes = kTileBytes + kStages * 2 * kBlockM * 4;
  // Epilogue: one fp32 kBlockN x head_dim tile (dK, then dV) reusing the same memory.
  static constexpr int kEpilogueBytes = kBlockN * (kHeadDim + kAccPad) * 4;
  static constexpr int kSmemBytes = kMainBytes > kEpilogueBytes ? kMainBytes : kEpilogueBytes;
  static_assert(kCols % 16 == 0 && kBlockM % 16 == 0, "two 8-column mma tiles per ldmatrix");
  static_assert(kStages == 1 || kStages == 2, "single or double buffered Q/dO");
  static_assert(kSmemBytes <= 99 * 1024, "the most shared memory an sm_86/sm_89 block may have");
};

// Grid (ceil(seqlen_k / kBlockN), nheads_kv, batch); kThreads threads; Cfg::kSmemBytes dynamic smem.
// kLayout: compiled for variable lengths (sequence.h) or (false) for plain dense batches only.
// kMods: compiled for score modifications (softcap, ALiBi: score_mods.h) or (false) for plain scores.
template <typename T, typename Cfg, bool kLayout, bool kMods>
__global__ void __launch_bounds__(Cfg::kThreads, 1) attention_bwd_dkdv_kernel(const AttentionParams p) {
  constexpr int D = Cfg::kHeadDim, BM = Cfg::kBlockM, BN = Cfg::kBlockN, kLd = Cfg::kLd;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BN * kLd;
  T* sQdO = sV + BN * kLd;  // stage s: Q at sQdO + 2 s BM kLd, dO right after it
  float* sStats = reinterpret_cast<float*>(sQdO + Cfg::kStages * 2 * BM * kLd);  // stage s: lse2, delta
  float* sAcc = reinterpret_cast<float*>(smem);  // epilogue only

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int strip = warp % Cfg::kWarpsN;             // this warp's 16 keys: rows 16*strip.. of the block
  const int col0 = (warp / Cfg::kWarpsN) * Cfg::kCols;  // first dK/dV column this warp accumulates
  const int g = lane / 4, t = lane % 4;

  const int64_t batch = blockIdx.z, kv_head = blockIdx.y;
  const int n0 = static_cast<int>(blockIdx.x) * BN;
  const int group = p.nheads_q / p.nheads_kv;
  const SequenceView seq = sequence_view<kLayout>(p, batch);
  if (n0 >= seq.k_rows) return;  // the grid covers the longest sequence of the batch
  const MaskRule mask = MaskRule::from(p, seq);
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2 e)
  const bool encode = p.pe.kind != static_cast<int>(PEKind::kNone);
  const int64_t* q_pos = sequence_positions(p.pe, seq, batch, false);
  const int64_t* k_pos = sequence_positions(p.pe, seq, batch, true);

  // K and V of this block, once; K encoded at the key positions (the product uses encoded k).
  {
    const T* k = static_cast<const T*>(p.k) + row0_offset(seq, p.k_strides, batch, kv_head, true);
    const T* v = static_cast<const T*>(p.v) + row0_offset(seq, p.v_strides, batch, kv_head, true);
    load_rows<T, BN, D, Cfg::kThreads>(sK, k, p.k_strides.seq, n0, seq.seqlen_k,
                                       rows_are_16b_aligned(p.k, p.k_strides));
    load_rows<T, BN, D, Cfg::kThreads>(sV, v, p.v_strides.seq, n0, seq.seqlen_k,
                                       rows_are_16b_aligned(p.v, p.v_strides));
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (encode) {
      encode_rows_in_smem<T, BN, D, Cfg::kThreads>(sK, kLd, n0, seq.seqlen_k, k_pos,
                                                   p.pe.k_pos_stride_s, p.pe, false);
      __syncthreads();
    }
  }

  float dk[Cfg::kCols / 8][4], dv[Cfg::kCols / 8][4];
  zero<Cfg::kCols>(dk);
  zero<Cfg::kCols>(dv);

  // Keys past seqused_k (n0 >= seq.seqlen_k) see no query: their dK = dV = 0 are still written below.
  const Range queries = n0 < seq.seqlen_k ? mask.query_range(n0, min(n0 + BN, seq.seqlen_k)) : Range{0, 0};
  // Tiles aligned to BM (both bounds are <= seqlen_q, so int); the mask trims the edges. Tile t of
  // the flattened loop is query tile t % m_tiles of GQA member t / m_tiles.
  const int m_begin = static_cast<int>(queries.lo) / BM * BM;
  const int m_tiles = queries.lo < queries.hi ? (static_cast<int>(queries.hi) - m_begin + BM - 1) / BM : 0;
  const int num_tiles = m_tiles * group;
  const T* sK_strip = sK + 16 * strip * kLd;
  const T* sV_strip = sV + 16 * strip * kLd;

  // Start the copies of tile t (Q, dO, lse, delta) into its stage. The alignment tests are
  // recomputed from the (constant-bank) params at each call rather than kept as loop invariants:
  // predicates cannot live across the calls in the encoding's slow paths and were spilled (sm_80
  // without --use_fast_math).
  auto issue = [&](int tile) {
    const int member = tile / m_tiles;
    const int m0 = m_begin + (tile - member * m_tiles) * BM;
    const int64_t head = kv_head * group + member;
    // Re-read rather than kept live across the loop: with variable lengths the sequence's first row
    // was one value too many at d = 128 on sm_90 (a 4-byte spill).
    const SequenceView seq = sequence_view<kLayout>(p, batch);
    T* stage = sQdO + (tile % Cfg::kStages) * 2 * BM * kLd;
    load_rows<T, BM, D, Cfg::kThreads>(
        stage, static_cast<const T*>(p.q) + row0_offset(seq, p.q_strides, batch, head, false),
        p.q_strides.seq, m0, seq.seqlen_q, rows_are_16b_aligned(p.q, p.q_strides));
    load_rows<T, BM, D, Cfg::kThreads>(
        stage + BM * kLd,
        static_cast<const T*>(p.dout) + row0_offset(seq, p.dout_strides, batch, head, false),
        p.dout_strides.seq, m0, seq.seqlen_q, rows_are_16b_aligned(p.dout, p.dout_strides));
    cp_async_commit();
    float* stats = sStats + (tile % Cfg::kStages) * 2 * BM;
    const int64_t stats0 = stats_row0(p, seq, batch, head);  // this head's row 0
    for (int i = threadIdx.x; i < BM; i += Cfg::kThreads) {
      const int row = m0 + i;
      const float lse = row < seq.seqlen_q ? p.lse[stats0 + row] : -INFINITY;
      // A row that saw no key (lse -inf) and padding rows get +inf: exp2(s - inf) = 0 exactly, so
      // they add nothing to dK/dV (and no inf - inf NaN appears).
      stats[i] = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
      stats[BM + i] = row < seq.seqlen_q ? p.delta[stats0 + row] : 0.f;
    }
  };
  if (Cfg::kStages == 2 && num_tiles > 0) issue(0);

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int m0 = m_begin + (tile % m_tiles) * BM;
    T* sQ = sQdO + (tile % Cfg::kStages) * 2 * BM * kLd;
    const T* sdO = sQ + BM * kLd;
    const float* sLse2 = sStats + (tile % Cfg::kStages) * 2 * BM;
    const float* sDelta = sLse2 + BM;
    if (Cfg::kStages == 1) {
      __syncthreads();  // every warp is done reading the previous tile
      issue(tile);
    }
    cp_async_wait<0>();
    // This tile has landed (and its lse/delta are stored) for every thread, and every warp is done
    // with the previous tile, whose stage the next copies overwrite.
    __syncthreads();
    if (Cfg::kStages == 2 && tile + 1 < num_tiles) issue(tile + 1);
    if (encode) {
      encode_rows_in_smem<T, BM, D, Cfg::kThreads>(sQ, kLd, m0, mask.seqlen_q, q_pos,
                                                   p.pe.q_pos_stride_s, p.pe, false);
      __syncthreads();
    }

    // P^T (16 keys x BM queries of this warp's strip), masked before exp2: a hidden score may
    // exceed lse and exp2 of it would overflow.
    float pt[BM / 8][4];
    zero<BM>(pt);
    gemm_nt<T, D, BM>(pt, sK_strip, kLd, sQ, kLd);
    const bool needs_mask = mask.tile_needs_mask(m0, BM, n0, BN);
    const int key_lo = n0 + 16 * strip + g;  // key of acc[.][0..1]; +8 for [2..3]
    if constexpr (kMods) {
      // dS^T = P^T * (dP^T - delta) * dcap needs the raw score (for dcap) and dP^T together: dP^T
      // first, then P^T and dS^T in one pass, so dcap never needs a register array of its own.
      const ScoreMod mod = ScoreMod::of(p, batch, kv_head * group + tile / m_tiles);  // this tile's head
      float dst[BM / 8][4];
      zero<BM>(dst);
      gemm_nt<T, D, BM>(dst, sV_strip, kLd, sdO, kLd);
#pragma unroll
      for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * j + 2 * t + (e % 2);
          const int key = key_lo + 8 * (e / 2);
          const bool keep = !needs_mask || mask.visible(m0 + col, key);
          float dcap;
          const float s2 = mod.apply(pt[j][e], m0 + col + mask.offset - key, &dcap);
          pt[j][e] = keep ? fast_exp2(s2 - sLse2[col]) : 0.f;
          dst[j][e] = pt[j][e] * (dst[j][e] - sDelta[col]) * dcap;
        }
      }
      gemm_rs<T, BM, Cfg::kCols>(dv, pt, sdO + col0, kLd);
      gemm_rs<T, BM, Cfg::kCols>(dk, dst, sQ + col0, kLd);
    } else {
#pragma unroll
      for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * j + 2 * t + (e % 2);
          const int key = key_lo + 8 * (e / 2);
          const bool keep = !needs_mask || mask.visible(m0 + col, key);
          pt[j][e] = keep ? fast_exp2(fmaf(pt[j][e], scale_log2, -sLse2[col])) : 0.f;
        }
      }
      gemm_rs<T, BM, Cfg::kCols>(dv, pt, sdO + col0, kLd);

      // dS^T = P^T * (dP^T - delta), dP^T = V dO^T.
      float dst[BM / 8][4];
      zero<BM>(dst);
      gemm_nt<T, D, BM>(dst, sV_strip, kLd, sdO, kLd);
#pragma unroll
      for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[j][e] = pt[j][e] * (dst[j][e] - sDelta[8 * j + 2 * t + (e % 2)]);
      }
      gemm_rs<T, BM, Cfg::kCols>(dk, dst, sQ + col0, kLd);
    }
  }

  // Epilogue through an fp32 tile: dK = scale * dS^T Q is the gradient w.r.t. the encoded k, so the
  // inverse encoding (rotation by -angle / times scale) maps it to the user's k before rounding once.
  __syncthreads();  // the main loop's tiles are dead; sAcc overlays them
  constexpr int kAccLd = D + kAccPad;
  float* sAcc_warp = sAcc + 16 * strip * kAccLd + col0;
  store_acc<Cfg::kCols>(sAcc_warp, kAccLd, dk, p.softmax_scale);
  __syncthreads();
  if (encode) {
    encode_rows_in_smem<float, BN, D, Cfg::kThreads>(sAcc, kAccLd, n0, seq.k_rows, k_pos,
                                                     p.pe.k_pos_stride_s, p.pe, true);
    __syncthreads();
  }
  T* dk_out = static_cast<T*>(p.dk) + row0_offset(seq, p.dk_strides, batch, kv_head, true);
  store_rows<T, BN, D, Cfg::kThreads>(dk_out, p.dk_strides.seq, n0, seq.k_rows, sAcc,
                                      rows_are_16b_aligned(p.dk, p.dk_strides));
  __syncthreads();
  store_acc<Cfg::kCols>(sAcc_warp, kAccLd, dv, 1.f);
  __syncthreads();
  T* dv_out = static_cast<T*>(p.dv) + row0_offset(seq, p.dv_strides, batch, kv_head, true);
  store_rows<T, BN, D, Cfg::kThreads>(dv_out, p.dv_strides.seq, n0, seq.k_rows, sAcc,
                                      rows_are_16b_aligned(p.dv, p.dv_strides));
}

}  // namespace bwd
}  // namespace flashattn
