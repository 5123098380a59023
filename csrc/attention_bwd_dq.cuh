// Backward step 3: dQ. One CTA owns kBlockM queries of one query head (16 per warp); Q, dO, lse and
// delta are read once and the key blocks this tile can see stream past (with kStages = 2 the next
// block's cp.async copies run while this one is computed):
//   S = Q K^T, P = exp2(S * scale * log2 e - lse * log2 e), dP = dO V^T, dS = P * (dP - delta),
//   dQ += dS K (times scale at the end).
// S, P, dP, dS are accumulators with query rows, so dS is directly the A operand of dS K
// (attention_bwd_warp_gemm.cuh); K is the B operand of both products (ldmatrix and ldmatrix.trans).
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

template <int kHeadDim_, int kWarps_, int kBlockN_, int kStages_>
struct DqConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 16 * kWarps_;  // queries per CTA
  static constexpr int kBlockN = kBlockN_;      // keys per streamed tile
  static constexpr int kThreads = 32 * kWarps_;
  // K/V buffers: 2 = the next tile's loads are in flight while this one is used, 1 = load, then use.
  static constexpr int kStages = kStages_;
  static constexpr int kLd = kHeadDim + kSmemPad;
  // Q, dO, kStages x (K, V) tiles (T); lse and delta live in registers (2 rows per thread).
  static constexpr int kMainBytes = (2 * kBlockM + kStages * 2 * kBlockN) * kLd * 2;
  static constexpr int kEpilogueBytes = kBlockM * (kHeadDim + kAccPad) * 4;
  static constexpr int kSmemBytes = kMainBytes > kEpilogueBytes ? kMainBytes : kEpilogueBytes;
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "two 8-column mma tiles per ldmatrix");
  static_assert(kStages == 1 || kStages == 2, "single or double buffered K/V");
  static_assert(kSmemBytes <= 99 * 1024, "the most shared memory an sm_86/sm_89 block may have");
};

// Grid (ceil(seqlen_q / kBlockM), nheads_q, batch); kThreads threads; Cfg::kSmemBytes dynamic smem.
// kLayout: compiled for variable lengths (sequence.h) or (false) for plain dense batches only.
// kMods: compiled for score modifications (softcap, ALiBi: score_mods.h) or (false) for plain scores.
template <typename T, typename Cfg, bool kLayout, bool kMods>
__global__ void __launch_bounds__(Cfg::kThreads, 1) attention_bwd_dq_kernel(const AttentionParams p) {
  constexpr int D = Cfg::kHeadDim, BM = Cfg::kBlockM, BN = Cfg::kBlockN, kLd = Cfg::kLd;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + BM * kLd;
  T* sKV = sdO + BM * kLd;  // stage s: K at sKV + 2 s BN kLd, V right after it
  float* sAcc = reinterpret_cast<float*>(smem);  // epilogue only

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t batch = blockIdx.z, head = blockIdx.y;
  const int64_t kv_head = static_cast<int>(blockIdx.y) / (p.nheads_q / p.nheads_kv);  // 32-bit division
  const int m0 = static_cast<int>(blockIdx.x) * BM;
  const SequenceView seq = sequence_view<kLayout>(p, batch);
  if (m0 >= seq.seqlen_q) return;  // the grid covers the longest sequence of the batch
  const MaskRule mask = MaskRule::from(p, seq);
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2 e)
  const ScoreMod mod = kMods ? ScoreMod::of(p, batch, head) : ScoreMod{};
  const bool encode = p.pe.kind != static_cast<int>(PEKind::kNone);
  const int64_t* q_pos = sequence_positions(p.pe, seq, batch, false);
  const int64_t* k_pos = sequence_positions(p.pe, seq, batch, true);

  // Q (encoded at the query positions) and dO, once.
  {
    const T* q = static_cast<const T*>(p.q) + row0_offset(seq, p.q_strides, batch, head, false);
    const T* dout = static_cast<const T*>(p.dout) + row0_offset(seq, p.dout_strides, batch, head, false);
    load_rows<T, BM, D, Cfg::kThreads>(sQ, q, p.q_strides.seq, m0, seq.seqlen_q,
                                       rows_are_16b_aligned(p.q, p.q_strides));
    load_rows<T, BM, D, Cfg::kThreads>(sdO, dout, p.dout_strides.seq, m0, seq.seqlen_q,
                                       rows_are_16b_aligned(p.dout, p.dout_strides));
    cp_async_commit();
  }
  // lse (base 2) and delta of this thread's two rows (g and g + 8 of its warp's strip). A row that
  // saw no key, and padding rows, get lse +inf: exp2(s - inf) = 0 exactly, so dS = 0 there.
  const int row_lo = m0 + 16 * warp + g;  // query of acc[.][0..1]; +8 for [2..3]
  float lse2[2], delta[2];
  const int64_t stats0 = stats_row0(p, seq, batch, head);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row_lo + 8 * h;
    const float lse = row < seq.seqlen_q ? p.lse[stats0 + row] : -INFINITY;
    lse2[h] = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
    delta[h] = row < seq.seqlen_q ? p.delta[stats0 + row] : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();
  if (encode) {
    encode_rows_in_smem<T, BM, D, Cfg::kThreads>(sQ, kLd, m0, seq.seqlen_q, q_pos,
                                                 p.pe.q_pos_stride_s, p.pe, false);
    __syncthreads();
  }

  float dq[D / 8][4];
  zero<D>(dq);
  const Range keys = mask.key_range(m0, min(m0 + BM, seq.seqlen_q));
  // Tiles aligned to BN (both bounds are <= seqlen_k, so int); the mask trims the edges.
  const int n_begin = static_cast<int>(keys.lo) / BN * BN;
  const int num_tiles = keys.lo < keys.hi ? (static_cast<int>(keys.hi) - n_begin + BN - 1) / BN : 0;
  const T* k = static_cast<const T*>(p.k) + row0_offset(seq, p.k_strides, batch, kv_head, true);
  const T* v = static_cast<const T*>(p.v) + row0_offset(seq, p.v_strides, batch, kv_head, true);
  const T* sQ_strip = sQ + 16 * warp * kLd;
  const T* sdO_strip = sdO + 16 * warp * kLd;
  // Start the copies of K/V tile `tile` into its stage. The alignment tests are recomputed from the
  // (constant-bank) params at each call rather than kept as loop invariants: predicates cannot live
  // across the calls in the encoding's slow paths and were spilled (sm_80 without --use_fast_math).
  auto issue = [&](int tile) {
    T* stage = sKV + (tile % Cfg::kStages) * 2 * BN * kLd;
    const int n0 = n_begin + tile * BN;
    load_rows<T, BN, D, Cfg::kThreads>(stage, k, p.k_strides.seq, n0, seq.seqlen_k,
                                       rows_are_16b_aligned(p.k, p.k_strides));
    load_rows<T, BN, D, Cfg::kThreads>(stage + BN * kLd, v, p.v_strides.seq, n0, seq.seqlen_k,
                                       rows_are_16b_aligned(p.v, p.v_strides));
    cp_async_commit();
  };
  if (Cfg::kStages == 2 && num_tiles > 0) issue(0);

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int n0 = n_begin + tile * BN;
    T* sK = sKV + (tile % Cfg::kStages) * 2 * BN * kLd;
    const T* sV = sK + BN * kLd;
    if (Cfg::kStages == 1) {
      __syncthreads();  // every warp is done reading the previous K/V tile
      issue(tile);
    }
    cp_async_wait<0>();
    // This tile has landed for every thread, and every warp is done with the previous tile, whose
    // stage the next copies overwrite.
    __syncthreads();
    if (Cfg::kStages == 2 && tile + 1 < num_tiles) issue(tile + 1);
    if (encode) {
      encode_rows_in_smem<T, BN, D, Cfg::kThreads>(sK, kLd, n0, seq.seqlen_k, k_pos,
                                                   p.pe.k_pos_stride_s, p.pe, false);
      __syncthreads();
    }

    // P, masked before exp2 (a hidden score may exceed lse; exp2 of it would overflow).
    float s[BN / 8][4];
    zero<BN>(s);
    gemm_nt<T, D, BN>(s, sQ_strip, kLd, sK, kLd);
    const bool needs_mask = mask.tile_needs_mask(m0, BM, n0, BN);
    if constexpr (kMods) {
      // dS = P * (dP - delta) * dcap needs the raw score (for dcap) and dP together: dP first, then
      // P and dS in one pass, so dcap never needs a register array of its own.
      float ds[BN / 8][4];
      zero<BN>(ds);
      gemm_nt<T, D, BN>(ds, sdO_strip, kLd, sV, kLd);
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + 8 * j + 2 * t + (e % 2);
          const int row = row_lo + 8 * (e / 2);
          const bool keep = !needs_mask || mask.visible(row, key);
          float dcap;
          const float s2 = mod.apply(s[j][e], row + mask.offset - key, &dcap);
          const float prob = keep ? fast_exp2(s2 - lse2[e / 2]) : 0.f;
          ds[j][e] = prob * (ds[j][e] - delta[e / 2]) * dcap;
        }
      }
      gemm_rs<T, BN, D>(dq, ds, sK, kLd);
    } else {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + 8 * j + 2 * t + (e % 2);
          const bool keep = !needs_mask || mask.visible(row_lo + 8 * (e / 2), key);
          s[j][e] = keep ? fast_exp2(fmaf(s[j][e], scale_log2, -lse2[e / 2])) : 0.f;
        }
      }
      // dS = P * (dP - delta), dP = dO V^T.
      float ds[BN / 8][4];
      zero<BN>(ds);
      gemm_nt<T, D, BN>(ds, sdO_strip, kLd, sV, kLd);
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[j][e] = s[j][e] * (ds[j][e] - delta[e / 2]);
      }
      gemm_rs<T, BN, D>(dq, ds, sK, kLd);
    }
  }

  // Epilogue through an fp32 tile: scale * dS K is the gradient w.r.t. the encoded q; the inverse
  // encoding maps it to the user's q before rounding once.
  __syncthreads();  // the main loop's tiles are dead; sAcc overlays them
  constexpr int kAccLd = D + kAccPad;
  store_acc<D>(sAcc + 16 * warp * kAccLd, kAccLd, dq, p.softmax_scale);
  __syncthreads();
  if (encode) {
    encode_rows_in_smem<float, BM, D, Cfg::kThreads>(sAcc, kAccLd, m0, seq.seqlen_q, q_pos,
                                                     p.pe.q_pos_stride_s, p.pe, true);
    __syncthreads();
  }
  T* dq_out = static_cast<T*>(p.dq) + row0_offset(seq, p.dq_strides, batch, head, false);
  store_rows<T, BM, D, Cfg::kThreads>(dq_out, p.dq_strides.seq, m0, seq.seqlen_q, sAcc,
                                      rows_are_16b_aligned(p.dq, p.dq_strides));
}

}  // namespace bwd
}  // namespace flashattn
