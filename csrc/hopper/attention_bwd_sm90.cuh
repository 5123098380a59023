// Backward attention on Hopper (sm_90a): warp-specialized, TMA-fed, wgmma tensor cores, dQ added by TMA
// reduce-add (FlashAttention 3's design, written with this package's primitives: sm90_primitives.cuh,
// smem_layout.h, tma.h).
//
// One CTA = one block of kBlockN = 128 keys of one (batch, kv head); its K and V tiles stay in shared
// memory and its dK / dV accumulators in registers while the query tiles that can see the block stream
// past, for every query head of the GQA group in turn (dK / dV summed over the group on chip, each
// written once, by this CTA). 3 warpgroups (384 threads):
//  - warpgroup 0, the producer (setmaxnreg.dec 24): thread 0 issues the TMA loads (K and V once, then Q
//    and dO of each query tile into a ring of kStages slots); warp 1 copies the tile's lse (base 2) and
//    delta rows into the slot (32 plain loads per tile) and arrives on the slot's full barrier beside
//    the TMA bytes.
//  - warpgroups 1 and 2, the consumers (setmaxnreg.inc 240), own keys 0-63 and 64-127 of the block.
//    Per query tile, transposed as in the mma.sync dK/dV kernel (attention_bwd_dkdv.cuh), so that the
//    accumulators' rows are keys:
//      S^T = K Q^T and dP^T = V dO^T       wgmma, both operands from shared memory (K-major)
//      P^T = exp2(S^T scale log2e - lse2)  masked; dS^T = P^T (dP^T - delta), in registers
//      dV += P^T dO,  dK += dS^T Q         wgmma with P^T / dS^T from registers, dO / Q transposed (MN-major)
//      dQ_tile = dS K                      dS^T through shared memory (each consumer writes its 64 keys'
//                                          rows, both read all 128): A transposed, K transposed
//    and each consumer's 64 x 64 share of dQ_tile goes through shared memory (fp32, 128B-swizzled) to a
//    TMA reduce-add into the fp32 dQ accumulator (global), which a small kernel (dq_convert.cuh) scales
//    and rounds into dq once every key block is done.
// Which 64 x 64 share: head dim 128 has 64-row query tiles and the consumers split dQ's 128 channels;
// head dim 64 has 128-row query tiles and they split its rows. Either way each share is one whole
// 128-byte swizzled panel of the operands (no descriptor starts inside a swizzle atom).
//
// Shared memory (1024-aligned 128B-swizzled 64-column panels, smem_layout.h): K, V [kBlockN x D];
// kStages x Q, dO [kBlockM x D]; 2 x dS^T [kBlockN x kBlockM] (double-buffered: a consumer writes tile
// i + 1's while the other may still read tile i's); the dQ staging (2 x 64 x 64 fp32); kStages x
// (lse2, delta) rows; the mbarriers.
//
// Semantics are the mma.sync backward's: masks.cuh MaskRule (causal either alignment, windows, tails),
// sequence.h (packed batches, seqused_k: keys past it get dK = dV = 0), rows that saw no key (lse -inf)
// contribute nothing. The kernel takes q and k as they entered the products: with a positional encoding
// the backend encodes q and k before it and maps dq, dk back through the inverse after it (hopper/route.h
// sm90_backward_takes). dQ's adds are atomic and unordered: deterministic=True runs the mma.sync
// backward instead (route.h).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../masks.cuh"
#include "../params.h"
#include "../positional.cuh"
#include "../primitives.cuh"
#include "../sequence.h"
#include "sm90_primitives.cuh"
#include "smem_layout.h"
#include "sw128_tile.cuh"

namespace flashattn {
namespace hopper {

// Tiles per head dim. Registers per consumer thread: dK + dV = 2 x kAccCols / 2 floats, S^T and dP^T
// kBlockM / 2 floats each, a dQ share 32 floats.
//  - d 64: 128 keys (64 per consumer) x 128-row query tiles; S^T, dP^T 64 + 64, dK + dV 64.
//  - d 128: 128 keys x 64-row query tiles; S^T, dP^T 32 + 32, dK + dV 128.
//  - d 256 (kColumnSplit): 64 keys x 64-row query tiles. dK and dV of 64 keys x 256 would be 256 registers
//    per thread, so both consumers take the same 64 keys and each keeps dK / dV for half of the channels
//    (64 + 64 registers); S^T and dP^T (2 of the 5 GEMMs) are computed by both, and one stores dS^T. One
//    Q / dO slot: two would pass 227 KB (each slot is 64 KB); the slot is released before the dQ GEMMs.
// Every dQ tile splits into 64 x 64 shares, kDqPasses per consumer: by query rows at d 64 (the consumers
// take rows 0-63 / 64-127), by channels otherwise, so every descriptor starts on a whole 128-byte panel.
// kEarlyDv: dV's GEMM issued as soon as P^T is ready, under dS^T's math (see the tile loop). At d 64 the
// fp32 P^T (64 registers) that dS^T still needs, live beside dP^T and the A registers, spilled 48 bytes.
template <int kHeadDim>
struct Sm90BwdShape;
template <>
struct Sm90BwdShape<64> {
  static constexpr int kBlockN = 128, kBlockM = 128, kStages = 2;
  static constexpr bool kEarlyDv = false, kColumnSplit = false;
};
template <>
struct Sm90BwdShape<128> {
  static constexpr int kBlockN = 128, kBlockM = 64, kStages = 2;
  static constexpr bool kEarlyDv = true, kColumnSplit = false;
};
template <>
struct Sm90BwdShape<256> {
  static constexpr int kBlockN = 64, kBlockM = 64, kStages = 1;
  static constexpr bool kEarlyDv = true, kColumnSplit = true;
};

template <int kHeadDim>
struct Sm90BwdConfig {
  using Shape = Sm90BwdShape<kHeadDim>;
  static constexpr int kBlockN = Shape::kBlockN;  // keys per CTA
  static constexpr int kBlockM = Shape::kBlockM;  // query rows per streamed tile
  static constexpr int kStages = Shape::kStages;
  static constexpr bool kEarlyDv = Shape::kEarlyDv;
  static constexpr bool kColumnSplit = Shape::kColumnSplit;
  static constexpr int kThreads = 384;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kAccCols = kColumnSplit ? kHeadDim / 2 : kHeadDim;  // dK / dV channels per consumer
  // dQ shares: true = by query rows, false = by channels; kDqPasses 64 x 64 shares per consumer per tile.
  static constexpr bool kSplitRows = kBlockM == 128;
  static constexpr int kDqPasses = kBlockM * kHeadDim / (2 * 64 * 64);
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * 2;  // one K (or V) tile
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * 2;   // one Q (or dO) tile
  static constexpr uint32_t kDsBytes = kBlockN * kBlockM * 2;   // one dS^T tile
  static constexpr uint32_t kDqShareBytes = 64 * 64 * 4;        // one consumer's fp32 dQ share
  static constexpr uint32_t kKOffset = 0;
  static constexpr uint32_t kVOffset = kKOffset + kKVBytes;
  static constexpr uint32_t kQOffset = kVOffset + kKVBytes;           // kStages x Q
  static constexpr uint32_t kDoOffset = kQOffset + kStages * kQBytes;  // kStages x dO
  static constexpr uint32_t kDsOffset = kDoOffset + kStages * kQBytes;  // 2 x dS^T
  static constexpr uint32_t kDqOffset = kDsOffset + 2 * kDsBytes;       // 2 x dQ share
  static constexpr uint32_t kStatsOffset = kDqOffset + 2 * kDqShareBytes;  // kStages x (lse2[kBlockM], delta[kBlockM])
  static constexpr uint32_t kBarOffset = kStatsOffset + kStages * 2 * kBlockM * 4;
  // full_kv, full[kStages], empty[kStages]
  static constexpr uint32_t kBarriers = 1 + 2 * kStages;
  static constexpr uint32_t kSmemBytes = kBarOffset + kBarriers * 8 + 1024;  // + the 1024-byte alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "an sm_90 CTA has at most 227 KB of shared memory");
  static_assert(kBlockN == (kColumnSplit ? 64 : 128), "64 keys per consumer, or 64 shared by both");
  static_assert(kBlockM * kHeadDim == 2 * kDqPasses * 64 * 64 && (kDqPasses == 1 || !kSplitRows),
                "dQ_tile = whole 64 x 64 shares, kDqPasses per consumer");
  static_assert(kQBytes % 1024 == 0 && kKVBytes % 1024 == 0 && kDsBytes % 1024 == 0, "tiles stay 1024-aligned");
  static_assert(128 * (kProducerRegs + 2 * kConsumerRegs) <= 65536 / kThreads / 8 * 8 * kThreads,
                "setmaxnreg budgets exceed the CTA's registers");
};

// Named barriers: 0 is __syncthreads; 1 both consumers (the dS^T tile is whole); 2 + wg consumer wg's
// own 128 threads (its dQ share staged / free).
constexpr uint32_t kDsReadyBarrier = 1, kBwdConsumerBarrier = 2;

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(Sm90BwdConfig<kHeadDim>::kThreads, 1)
    attention_bwd_sm90_kernel(const __grid_constant__ AttentionParams params, const __grid_constant__ CUtensorMap tma_q,
                              const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v,
                              const __grid_constant__ CUtensorMap tma_do, const __grid_constant__ CUtensorMap tma_dq) {
#if defined(FLASHATTN_SM90A_ENABLED)
  using Cfg = Sm90BwdConfig<kHeadDim>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSRegs = kBlockM / 2, kAccRegs = Cfg::kAccCols / 2;
  constexpr int kSlicesD = kHeadDim / 16, kSlicesM = kBlockM / 16, kSlicesN = kBlockN / 16;

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* k_s = smem + Cfg::kKOffset;
  unsigned char* v_s = smem + Cfg::kVOffset;
  unsigned char* q_s = smem + Cfg::kQOffset;
  unsigned char* do_s = smem + Cfg::kDoOffset;
  unsigned char* ds_s = smem + Cfg::kDsOffset;
  unsigned char* dq_s = smem + Cfg::kDqOffset;
  float* stats_s = reinterpret_cast<float*>(smem + Cfg::kStatsOffset);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + Cfg::kBarOffset);
  uint64_t* full_kv = bars;
  uint64_t* full = bars + 1;
  uint64_t* empty = bars + 1 + kStages;

  const AttentionParams& p = params;
  const int kv_head = blockIdx.y, batch = blockIdx.z;
  const int n0 = int(blockIdx.x) * kBlockN;  // low key blocks first: under causal masks they see the most queries
  const int group = p.nheads_q / p.nheads_kv;
  const SequenceView seq = sequence_view<true>(p, batch);
  if (n0 >= seq.k_rows) return;  // the grid covers the longest sequence: the whole CTA leaves
  const MaskRule rule = MaskRule::from(p, seq);

  // Query tiles that see some key of the block (keys past seqused_k see none: dK = dV = 0 below), aligned
  // to kBlockM; tile t of the flattened loop is query tile t % m_tiles of GQA member t / m_tiles.
  const Range queries = n0 < seq.seqlen_k ? rule.query_range(n0, min(n0 + kBlockN, seq.seqlen_k)) : Range{0, 0};
  const int m_begin = int(queries.lo) / kBlockM * kBlockM;
  const int m_tiles = queries.lo < queries.hi ? (int(queries.hi) - m_begin + kBlockM - 1) / kBlockM : 0;
  const int num_tiles = m_tiles * group;

  const int wg = warpgroup_index();
  if (threadIdx.x == 0) {
    mbarrier_init(full_kv, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1 + 32);  // the TMA thread's expect_tx + warp 1's 32 lanes (lse2, delta)
      mbarrier_init(&empty[s], 8);      // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  // TMA coordinates {channel, row, head, batch}: a packed batch is one sequence of rows (batch 0).
  const int q_row0 = int(seq.q_row0), k_row = int(seq.k_row0) + n0, tma_batch = seq.packed ? 0 : batch;

  if (wg == 0) {  // ---- producer ----
    setmaxnreg_dec<Cfg::kProducerRegs>();
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    if (warp == 0 && lane == 0 && num_tiles > 0) {
      tma_prefetch_descriptor(&tma_q);
      tma_prefetch_descriptor(&tma_do);
      mbarrier_arrive_expect_tx(full_kv, 2 * Cfg::kKVBytes);
#pragma unroll
      for (int panel = 0; panel < Cfg::kPanels; ++panel) {
        tma_load_4d(k_s + panel * kBlockN * 128, &tma_k, full_kv, 64 * panel, k_row, kv_head, tma_batch);
        tma_load_4d(v_s + panel * kBlockN * 128, &tma_v, full_kv, 64 * panel, k_row, kv_head, tma_batch);
      }
      for (int t = 0; t < num_tiles; ++t) {
        const int stage = t % kStages;
        mbarrier_wait(&empty[stage], (uint32_t(t / kStages) & 1u) ^ 1u);  // a fresh slot passes
        const int member = t / m_tiles;
        const int row = q_row0 + m_begin + (t - member * m_tiles) * kBlockM;
        const int head = kv_head * group + member;
        mbarrier_arrive_expect_tx(&full[stage], 2 * Cfg::kQBytes);
#pragma unroll
        for (int panel = 0; panel < Cfg::kPanels; ++panel) {
          tma_load_4d(q_s + stage * Cfg::kQBytes + panel * kBlockM * 128, &tma_q, &full[stage], 64 * panel, row, head,
                      tma_batch);
          tma_load_4d(do_s + stage * Cfg::kQBytes + panel * kBlockM * 128, &tma_do, &full[stage], 64 * panel, row,
                      head, tma_batch);
        }
      }
    } else if (warp == 1) {
      // lse in base 2 (a row that saw no key, and rows past the sequence, get +inf: exp2(s - inf) = 0, so
      // they add nothing and no inf - inf appears) and delta (0 past the sequence), kBlockM of each per tile.
      // stats_row0 is linear in the head: its step, not the sequence view, stays live (24 registers here).
      const int64_t stats_first = stats_row0(p, seq, batch, int64_t(kv_head) * group) + m_begin;
      const int64_t stats_step = stats_row0(p, seq, batch, 1) - stats_row0(p, seq, batch, 0);
      const int rows_left0 = seq.seqlen_q - m_begin;  // rows of the sequence from the first tile's row 0 on
      for (int t = 0; t < num_tiles; ++t) {
        const int stage = t % kStages;
        mbarrier_wait(&empty[stage], (uint32_t(t / kStages) & 1u) ^ 1u);
        const int member = t / m_tiles, tile = t - member * m_tiles;
        const int64_t stats0 = stats_first + member * stats_step + tile * kBlockM;
        const float* lse_rows = p.lse + stats0 + lane;
        const float* delta_rows = p.delta + stats0 + lane;
        const int rows = rows_left0 - tile * kBlockM - lane;  // > i: row lane + i of the tile is in the sequence
        const uint32_t stats = smem_u32(stats_s) + uint32_t(stage * 2 * kBlockM + lane) * 4;
#pragma unroll
        for (int i = 0; i < kBlockM; i += 32) {
          const float lse = i < rows ? lse_rows[i] : -INFINITY;
          st_shared_b32(stats + i * 4, __float_as_uint(lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f));
          st_shared_b32(stats + (kBlockM + i) * 4, __float_as_uint(i < rows ? delta_rows[i] : 0.f));
        }
        mbarrier_arrive(&full[stage]);  // release: the stores above are visible to the consumers' wait
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  const int cw = wg - 1;  // consumer 0 or 1: keys 64 cw .. 64 cw + 63 of the block (kColumnSplit: keys 0-63, channels 128 cw ..)
  const int ctid = int(threadIdx.x) - 128 * wg;  // 0..127 within the warpgroup
  const int warp = ctid / 32, lane = ctid % 32, g = lane / 4, t4 = lane % 4;
  const int wg_key0 = Cfg::kColumnSplit ? 0 : 64 * cw;  // the consumer's first key (block row)
  const int key_local = wg_key0 + 16 * warp + g;        // this thread's keys: key_local, key_local + 8
  const uint32_t acc_panel0 = Cfg::kColumnSplit ? uint32_t(2 * cw) : 0u;  // its dK / dV channels' first panel
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;

  float dk[kAccRegs], dv[kAccRegs];
#pragma unroll
  for (int i = 0; i < kAccRegs; ++i) dk[i] = dv[i] = 0.f;

  // Descriptors as a base plus a constant per k16 step (desc_advance), as in the forward.
  const uint64_t k_desc = sw128_kmajor_desc(smem_u32(k_s) + uint32_t(wg_key0 * 128), kBlockN, 0);  // A of S^T
  const uint64_t v_desc = sw128_kmajor_desc(smem_u32(v_s) + uint32_t(wg_key0 * 128), kBlockN, 0);  // A of dP^T
  const uint64_t q_desc0 = sw128_kmajor_desc(smem_u32(q_s), kBlockM, 0);    // B of S^T (slot 0)
  const uint64_t do_desc0 = sw128_kmajor_desc(smem_u32(do_s), kBlockM, 0);  // B of dP^T (slot 0)
  // B of dK / dV (Q / dO transposed), from the consumer's first channel panel.
  const uint64_t q_mn0 = sw128_mnmajor_desc(smem_u32(q_s) + acc_panel0 * kBlockM * 128, kBlockM, 0);
  const uint64_t do_mn0 = sw128_mnmajor_desc(smem_u32(do_s) + acc_panel0 * kBlockM * 128, kBlockM, 0);
  // dQ share `share` (cw kDqPasses + pass): A = dS (dS^T's panel of the share's rows, or the one panel), B = K
  // (the share's channel panel, or the one panel), both transposed (MN-major), the block's keys the reduction.
  const auto ds_mn_of = [&](uint32_t share) {
    return sw128_mnmajor_desc(smem_u32(ds_s) + (Cfg::kSplitRows ? share * kBlockN * 128 : 0u), kBlockN, 0);
  };
  const auto k_mn_of = [&](uint32_t share) {
    return sw128_mnmajor_desc(smem_u32(k_s) + (Cfg::kSplitRows ? 0u : share * kBlockN * 128), kBlockN, 0);
  };
  unsigned char* dq_share = dq_s + cw * Cfg::kDqShareBytes;

  if (num_tiles > 0) {
    mbarrier_wait(full_kv, 0);
    // With an encoding q arrives encoded (pe.q_encoded: every key block re-reads each Q tile, so the backend
    // encodes q once); the K block, read by this CTA alone, is encoded here, once, by both consumers.
    if (p.pe.kind != int(PEKind::kNone)) {
      const SequenceView cs = sequence_view<true>(p, batch);
      encode_tile_rows<kBlockN, 256>(Sw128Tile<T>{k_s, kBlockN, 0}, int(threadIdx.x) - 128, n0, cs.seqlen_k,
                                     sequence_positions(p.pe, cs, batch, true), p.pe.k_pos_stride_s, p.pe, false);
      fence_proxy_async_shared();  // generic-proxy writes, read next by wgmma
      named_barrier_sync(kDsReadyBarrier, 256);
    }
  }
  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t % kStages;
    const int member = t / m_tiles;
    const int m0 = m_begin + (t - member * m_tiles) * kBlockM;
    const int head = kv_head * group + member;
    const float* lse2 = stats_s + stage * 2 * kBlockM;
    const float* delta = lse2 + kBlockM;
    mbarrier_wait(&full[stage], uint32_t(t / kStages) & 1u);

    // wgmma groups per tile, so that the math of each step runs under the GEMM issued before it (kEarlyDv):
    //   1 S^T = K Q^T, 2 dP^T = V dO^T   (P^T is computed while dP^T runs)
    //   3 dV += P^T dO                   (dS^T is computed and stored while dV runs)
    //   4 dK += dS^T Q, then 5 the dQ share (after the dS^T tile is whole)
    // Without kEarlyDv, P^T waits for dP^T too and dV joins dK's group (fp32 P^T then need not stay live
    // beside dP^T and P^T's A registers while dV runs).
    constexpr bool kEarlyDv = Cfg::kEarlyDv;
    float s[kSRegs], dp[kSRegs];
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    // acc = A B^T over the head dim, one group: A = this consumer's K (or V) rows, B = the slot's Q (or dO).
    const auto issue_scores = [&](float (&acc)[kSRegs], uint64_t a_desc, uint64_t b_desc0) {
      const uint64_t b_desc = desc_advance(b_desc0, uint32_t(stage) * Cfg::kQBytes);
#pragma unroll
      for (int kk = 0; kk < kSlicesD; ++kk) {
        Wgmma<kBlockM, T>::ss(acc, desc_advance(a_desc, sw128_kmajor_step(kBlockN, kk)),
                              desc_advance(b_desc, sw128_kmajor_step(kBlockM, kk)), kk > 0);
      }
      wgmma_commit_group();
    };
    issue_scores(s, k_desc, q_desc0);
    issue_scores(dp, v_desc, do_desc0);
    if constexpr (kEarlyDv) {
      wgmma_wait_group<1>();  // S^T done; dP^T may still run
    } else {
      wgmma_wait_group<0>();
    }
    wgmma_fence_operand(s);

    // P^T (accumulator element 4j + 2h + e: key key_local + 8h, query m0 + 8j + 2 t4 + e). A hidden score is
    // zeroed before exp2: it may exceed lse and overflow.
    // Masked tiles test each element against its key's visible queries (MaskRule::query_range of the one
    // key, i.e. MaskRule::visible, as tile columns; keys past the sequence see none): two bounds per key
    // instead of the rule's arithmetic per element, which spilled at d 64.
    // The rule re-read per tile (a few cached loads): kept live across the GEMMs it spilled at d 64.
    const MaskRule mask = MaskRule::from(p, sequence_view<true>(p, batch));
    const bool needs_mask = mask.tile_needs_mask(m0, kBlockM, n0 + wg_key0, 64);
    int col_lo[2] = {0, 0}, col_hi[2] = {kBlockM, kBlockM};
    if (needs_mask) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int key = n0 + key_local + 8 * h;
        const Range r = key < mask.seqlen_k ? mask.query_range(key, key + 1) : Range{0, 0};
        col_lo[h] = int(r.lo) - m0;
        col_hi[h] = int(r.hi) - m0;
      }
    }
    // f(r, h, col) for every accumulator element r of S^T / dP^T: key key_local + 8h, tile query col.
    const auto for_each_score = [&](auto f) {
#pragma unroll
      for (int j = 0; j < kBlockM / 8; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int e = 0; e < 2; ++e) f(4 * j + 2 * h + e, h, 8 * j + 2 * t4 + e);
        }
      }
    };
    for_each_score([&](int r, int h, int col) {
      const bool keep = col >= col_lo[h] && col < col_hi[h];
      s[r] = keep ? fast_exp2(fmaf(s[r], scale_log2, -lse2[col])) : 0.f;
    });
    // P^T rounded to T in the A-register layout (k16 slice c = queries 16c .. 16c + 15), then dV += P^T dO
    // (B = the dO tile read transposed).
    uint32_t a_p[kSlicesM][4], a_ds[kSlicesM][4];
#pragma unroll
    for (int c = 0; c < kSlicesM; ++c) {
      acc_to_a<T>(a_p[c], s, c);
      wgmma_fence_operand(a_p[c]);
    }
    const auto issue_dv = [&] {
      const uint64_t do_mn = desc_advance(do_mn0, uint32_t(stage) * Cfg::kQBytes);
#pragma unroll
      for (int c = 0; c < kSlicesM; ++c) {
        Wgmma<Cfg::kAccCols, T>::template rs<1>(dv, a_p[c], desc_advance(do_mn, sw128_mnmajor_step(c)), 1);
      }
    };
    if constexpr (kEarlyDv) {
      wgmma_fence_operand(dv);
      wgmma_fence();
      issue_dv();
      wgmma_commit_group();
      wgmma_wait_group<1>();  // dP^T done; dV may still run
    }
    wgmma_fence_operand(dp);

    // dS^T = P^T (dP^T - delta), rounded into the A-register layout.
    for_each_score([&](int r, int, int col) { dp[r] = s[r] * (dp[r] - delta[col]); });
#pragma unroll
    for (int c = 0; c < kSlicesM; ++c) acc_to_a<T>(a_ds[c], dp, c);
    // dS^T of this thread into the tile's dS^T buffer ([key][query], 128B-swizzled panels of kBlockN rows;
    // smem_layout.h ds_pair_offset). The buffer was last read by tile t - 2's dQ GEMMs, which both consumers
    // waited for before tile t - 1's kDsReady barrier, which this consumer has passed.
    // With kColumnSplit both consumers hold the same dS^T: consumer 0 stores it.
    if (!Cfg::kColumnSplit || cw == 0) {
      const uint32_t sw = opaque(uint32_t(key_local % 8));  // recomputed per tile (hoisted, the addresses spilled)
      const uint32_t buf = smem_u32(ds_s) + uint32_t(t % 2) * Cfg::kDsBytes;
#pragma unroll
      for (int c = 0; c < kSlicesM; ++c) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          st_shared_b32(buf + ds_pair_offset(uint32_t(key_local), uint32_t(t4), c, i, kBlockN, sw), a_ds[c][i]);
        }
      }
    }

    // dK += dS^T Q (B = the Q tile read transposed), with dV before it in one group when not issued early.
#pragma unroll
    for (int c = 0; c < kSlicesM; ++c) wgmma_fence_operand(a_ds[c]);
    wgmma_fence_operand(dk);
    wgmma_fence_operand(dv);
    wgmma_fence();
    if constexpr (!kEarlyDv) issue_dv();
    {
      const uint64_t q_mn = desc_advance(q_mn0, uint32_t(stage) * Cfg::kQBytes);
#pragma unroll
      for (int c = 0; c < kSlicesM; ++c) {
        Wgmma<Cfg::kAccCols, T>::template rs<1>(dk, a_ds[c], desc_advance(q_mn, sw128_mnmajor_step(c)), 1);
      }
    }
    wgmma_commit_group();

    // The whole dS^T tile (both consumers' rows) is in shared memory: generic-proxy stores, read next by wgmma.
    fence_proxy_async_shared();
    named_barrier_sync(kDsReadyBarrier, 256);

    // The dQ shares = dS K over the block's keys, one group each; the Q / dO slot is released as soon as dV
    // and dK are done (before the first share's GEMM completes), so the producer refills it meanwhile.
#pragma unroll
    for (int pass = 0; pass < Cfg::kDqPasses; ++pass) {
      const uint32_t share = uint32_t(cw * Cfg::kDqPasses + pass);
      float dq[32];
      wgmma_fence_operand(dq);
      wgmma_fence();
      {
        const uint64_t ds_mn = desc_advance(ds_mn_of(share), uint32_t(t % 2) * Cfg::kDsBytes);
        const uint64_t k_mn = k_mn_of(share);
#pragma unroll
        for (int c = 0; c < kSlicesN; ++c) {
          Wgmma<64, T>::template ss<1, 1>(dq, desc_advance(ds_mn, sw128_mnmajor_step(c)),
                                          desc_advance(k_mn, sw128_mnmajor_step(c)), c > 0);
        }
      }
      wgmma_commit_group();
      if (pass == 0) {
        wgmma_wait_group<1>();  // dV and dK are done: Q, dO and this slot's stats are no longer read
        wgmma_fence_operand(dv);
        wgmma_fence_operand(dk);
#pragma unroll
        for (int c = 0; c < kSlicesM; ++c) {
          wgmma_fence_operand(a_p[c]);
          wgmma_fence_operand(a_ds[c]);
        }
        if (lane == 0) mbarrier_arrive(&empty[stage]);
      }
      // The staging of this consumer's dQ share is free once the reduce-add issued before has read it (its
      // issuing thread waits, then the warpgroup's barrier passes that on).
      if (ctid == 0) bulk_wait_group_read<0>();
      named_barrier_sync(kBwdConsumerBarrier + cw, 128);
      wgmma_wait_group<0>();
      wgmma_fence_operand(dq);

      // The share into its swizzled fp32 staging (two 32-column TMA boxes of 64 rows; smem_layout.h
      // f32_share_pair_offset), then one reduce-add per box.
      {
        const uint32_t row = uint32_t(16 * warp + g);
        const uint32_t sw = opaque((row % 8) ^ uint32_t(t4 / 2));
        const uint32_t base = smem_u32(dq_share);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            st_shared_v2_f32(base + f32_share_pair_offset(row, uint32_t(t4), j, h, sw), dq[4 * j + 2 * h],
                             dq[4 * j + 2 * h + 1]);
          }
        }
      }
      fence_proxy_async_shared();
      named_barrier_sync(kBwdConsumerBarrier + cw, 128);
      if (ctid == 0) {
        const int row = q_row0 + m0 + (Cfg::kSplitRows ? 64 * int(share) : 0);
        const int col = Cfg::kSplitRows ? 0 : 64 * int(share);
#pragma unroll
        for (int box = 0; box < 2; ++box) {
          tma_reduce_add_4d(&tma_dq, dq_share + box * 64 * 128, col + 32 * box, row, head, tma_batch);
        }
        bulk_commit_group();
      }
    }
  }
  if (ctid == 0) bulk_wait_group<0>();  // the last reduce-adds have read the staging (and are done)

  // ---- epilogue: dK = scale * dS^T Q summed over the tiles, dV; keys past the sequence are not stored ----
  T* dk_out = static_cast<T*>(p.dk) + row0_offset(seq, p.dk_strides, batch, kv_head, true);
  T* dv_out = static_cast<T*>(p.dv) + row0_offset(seq, p.dv_strides, batch, kv_head, true);
  const auto store_pairs = [&](T* out, const Strides& st, const float (&acc)[kAccRegs], float scale) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int key = n0 + key_local + 8 * h;
      if (key >= seq.k_rows) continue;
#pragma unroll
      for (int j = 0; j < Cfg::kAccCols / 8; ++j) {
        const int col = int(acc_panel0) * 64 + 8 * j + 2 * t4;
        *reinterpret_cast<uint32_t*>(out + int64_t(key) * st.seq + col) =
            pack2<T>(acc[4 * j + 2 * h] * scale, acc[4 * j + 2 * h + 1] * scale);
      }
    }
  };
  store_pairs(dv_out, p.dv_strides, dv, 1.f);
  if (p.pe.kind == int(PEKind::kNone)) {
    store_pairs(dk_out, p.dk_strides, dk, p.softmax_scale);
  } else {
    // dK is w.r.t. the encoded k: whole rows (both consumers' channels at d 256) go through an fp32 tile over
    // the K / V / Q memory, which every GEMM of both consumers has finished reading at this barrier, for the
    // inverse encoding, then out, rounded once.
    constexpr int kLd = kHeadDim + 4;  // floats; 16-byte rows, rows 4 banks apart
    float* tile = reinterpret_cast<float*>(smem);
    static_assert(Cfg::kBlockN * kLd * 4 <= Cfg::kDsOffset, "the dK tile overlays K, V, Q and dO only");
    const int tid = int(threadIdx.x) - 128;  // 0..255 over both consumers
    named_barrier_sync(kDsReadyBarrier, 256);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < Cfg::kAccCols / 8; ++j) {
        const int col = int(acc_panel0) * 64 + 8 * j + 2 * t4;
        *reinterpret_cast<float2*>(tile + (key_local + 8 * h) * kLd + col) =
            make_float2(dk[4 * j + 2 * h] * p.softmax_scale, dk[4 * j + 2 * h + 1] * p.softmax_scale);
      }
    }
    named_barrier_sync(kDsReadyBarrier, 256);
    const SequenceView cs = sequence_view<true>(p, batch);
    encode_tile_rows<kBlockN, 256>(RowMajorTile<float>{tile, kLd}, tid, n0, cs.k_rows,
                                   sequence_positions(p.pe, cs, batch, true), p.pe.k_pos_stride_s, p.pe, true);
    named_barrier_sync(kDsReadyBarrier, 256);
    constexpr int kQuads = kHeadDim / 4;  // 4 channels = one 8-byte store
    for (int i = tid; i < kBlockN * kQuads; i += 256) {
      const int r = i / kQuads, c = (i % kQuads) * 4;
      if (n0 + r >= cs.k_rows) break;  // rows grow with i
      const float4 x = *reinterpret_cast<const float4*>(tile + r * kLd + c);
      *reinterpret_cast<uint2*>(dk_out + int64_t(n0 + r) * p.dk_strides.seq + c) =
          make_uint2(pack2<T>(x.x, x.y), pack2<T>(x.z, x.w));
    }
  }
#else
  unsupported_arch();  // compiled for sm_90a only; route.h never launches it elsewhere
#endif
}

}  // namespace hopper
}  // namespace flashattn
