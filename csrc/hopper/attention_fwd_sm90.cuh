// Forward attention on Hopper (sm_90a): warp-specialized, TMA-fed, wgmma tensor cores (FlashAttention
// 3's design, written with this package's primitives: sm90_primitives.cuh, smem_layout.h, tma.h).
//
// One CTA = one tile of kBlockM = 128 query rows of one (batch, head), 3 warpgroups (384 threads):
//  - warpgroup 0, the producer, gives its registers back (setmaxnreg.dec 24); one thread issues the TMA
//    loads: the Q tile once, then the K and V tiles of every visible key block into a ring of kStages
//    slots (full barriers: bytes landed; empty barriers: both consumers are done with the slot).
//  - warpgroups 1 and 2, the consumers (setmaxnreg.inc 240), own query rows 0-63 and 64-127 of the tile.
//    Per key block: S = Q K^T (wgmma, both operands from shared memory), mask, online softmax in
//    registers, P rounded to T in the wgmma A-register layout, O += P V (wgmma, A from registers).
// Overlap, as FlashAttention 3:
//  - inside a warpgroup, S_{j+1} = Q K_{j+1}^T is issued together with O += P_j V_j, and the softmax
//    of block j+1 runs while P_j V_j is still on the tensor cores (O is rescaled once that GEMM is done);
//  - between the two consumers (ping-pong), the issue of one warpgroup's GEMMs waits on a named barrier
//    the other one arrives at after issuing its own, so the tensor cores alternate between them and one
//    warpgroup's softmax runs under the other's GEMMs.
//
// Shared memory (every tile 1024-byte aligned, 128B-swizzled 64-column panels, smem_layout.h): Q
// [kBlockM x D], kStages x K [kBlockN x D], kStages x V [kBlockN x D], the mbarriers. The epilogue stages
// each consumer's O rows in its own (no longer read) Q rows, swizzled, then writes 16-byte chunks.
//
// Semantics are the mma.sync forward's (attention_fwd.cuh) and the package's: masks.cuh row_key_range /
// key_range / tile_needs_mask (causal either alignment, windows, sequence tails), sequence.h's reading
// of packed batches and seqused_k, base-2 softmax with the no-key rule (out 0, lse -inf), lse in natural
// log. Positional encoding: Q is encoded in shared memory by its consumer after it lands
// (positional.cuh encode_tile_rows on the swizzled tile); K arrives encoded (pe.k_encoded: the
// backend's K pre-pass), because the producer warpgroup has no registers to encode K as it arrives.
// What the kernel does not take (paged K/V, split-K, leftpad_k, softcap / ALiBi, head dims other than
// 64 / 128 / 256) is routed to the mma.sync kernels by hopper/route.h.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

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

// Tiles per head dim. kBlockM = 2 consumer warpgroups x 64 rows. Registers per consumer thread: S is
// kBlockN / 2 fp32, O is D / 2, P (the A registers of P V) kBlockN / 4; 240 registers leave room for
// S_{j+1}, P_j and O at once. Shared memory: (kBlockM + 2 * kStages * kBlockN) * D * 2 bytes.
//  - d 64: 128 x 128, 4 stages: 16 + 4 * 32 KB = 144 KB.
//  - d 128: 128 x 128, 2 stages: 32 + 2 * 64 KB = 160 KB (FlashAttention 3's non-causal 128 x 176
//    needs an n176 wgmma this package does not instantiate).
//  - d 256: 128 x 64, 2 stages: 64 + 2 * 64 KB = 192 KB; O alone is 128 registers.
template <int kHeadDim>
struct Sm90FwdShape;
// kOverlap: S_{j+1} issued beside P_j V_j (intra-warpgroup overlap). At d 256 the three live register
// sets (O 128, S 32, P 16) with the softmax spilled 16 bytes; there S_{j+1} follows P_j V_j, and the
// ping-pong still hides one warpgroup's softmax under the other's GEMMs (0 spills).
template <>
struct Sm90FwdShape<64> {
  static constexpr int kBlockN = 128, kStages = 4;
  static constexpr bool kOverlap = true;
};
template <>
struct Sm90FwdShape<128> {
  static constexpr int kBlockN = 128, kStages = 2;
  static constexpr bool kOverlap = true;
};
template <>
struct Sm90FwdShape<256> {
  static constexpr int kBlockN = 64, kStages = 2;
  static constexpr bool kOverlap = false;
};

template <int kHeadDim>
struct Sm90FwdConfig {
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = Sm90FwdShape<kHeadDim>::kBlockN;
  static constexpr int kStages = Sm90FwdShape<kHeadDim>::kStages;
  static constexpr bool kOverlap = Sm90FwdShape<kHeadDim>::kOverlap;
  static constexpr int kThreads = 384;  // producer + 2 consumer warpgroups
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * 2;
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * 2;  // one K (or V) tile = its TMA bytes
  static constexpr uint32_t kQOffset = 0;
  static constexpr uint32_t kKOffset = kQBytes;
  static constexpr uint32_t kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr uint32_t kBarOffset = kVOffset + kStages * kKVBytes;
  // full_q, full_k[kStages], full_v[kStages], empty[kStages]
  static constexpr uint32_t kBarriers = 1 + 3 * kStages;
  static constexpr uint32_t kSmemBytes = kBarOffset + kBarriers * 8 + 1024;  // + the 1024-byte alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "an sm_90 CTA has at most 227 KB of shared memory");
  static_assert(kHeadDim % 64 == 0, "whole 64-column panels");
  static_assert(kQBytes % 1024 == 0 && kKVBytes % 1024 == 0, "tiles stay 1024-aligned");
  // setmaxnreg.inc waits for registers that .dec released: the three warpgroups' budgets must fit what
  // the CTA launched with (65536 / 384 rounded down to a multiple of 8 = 168 per thread).
  static_assert(128 * (kProducerRegs + 2 * kConsumerRegs) <= 65536 / kThreads / 8 * 8 * kThreads,
                "setmaxnreg budgets exceed the CTA's registers");
};

// Named barriers: 0 is __syncthreads; 1 + wg the ping-pong turn of consumer wg (0, 1); 3 + wg consumer
// wg's own 128 threads.
constexpr uint32_t kTurnBarrier = 1, kConsumerBarrier = 3;

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(Sm90FwdConfig<kHeadDim>::kThreads, 1)
    attention_fwd_sm90_kernel(const __grid_constant__ AttentionParams params, const __grid_constant__ CUtensorMap tma_q,
                              const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v) {
#if defined(FLASHATTN_SM90A_ENABLED)
  using Cfg = Sm90FwdConfig<kHeadDim>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSRegs = kBlockN / 2, kORegs = kHeadDim / 2;
  constexpr int kSlicesQK = kHeadDim / 16, kSlicesPV = kBlockN / 16;

  extern __shared__ unsigned char smem_raw[];
  // The swizzle is computed from address bits: tiles must start 1024-aligned (smem_layout.h).
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* q_s = smem + Cfg::kQOffset;
  unsigned char* k_s = smem + Cfg::kKOffset;
  unsigned char* v_s = smem + Cfg::kVOffset;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + Cfg::kBarOffset);
  uint64_t* full_q = bars;
  uint64_t* full_k = bars + 1;
  uint64_t* full_v = bars + 1 + kStages;
  uint64_t* empty = bars + 1 + 2 * kStages;

  const AttentionParams& p = params;
  const int m_tiles = gridDim.x;
  const int m_start = (m_tiles - 1 - int(blockIdx.x)) * kBlockM;  // heaviest (causal: last) tiles first
  const int head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head / (p.nheads_q / p.nheads_kv);
  const SequenceView seq = sequence_view<true>(p, batch);
  if (m_start >= seq.seqlen_q) return;  // the grid covers the longest sequence: the whole CTA leaves

  int n_block_min = 0, n_block_max = 0;  // the key blocks some row of the tile sees (masks.cuh)
  {
    int lo, hi;
    key_range(m_start, min(m_start + kBlockM, seq.seqlen_q), p, seq, lo, hi);
    if (hi > lo) {
      n_block_min = lo / kBlockN;
      n_block_max = (hi + kBlockN - 1) / kBlockN;
    }
  }
  const int n_blocks = n_block_max - n_block_min;

  const int wg = warpgroup_index();
  if (threadIdx.x == 0) {
    mbarrier_init(full_q, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full_k[s], 1);
      mbarrier_init(&full_v[s], 1);
      mbarrier_init(&empty[s], 8);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  // TMA coordinates {channel, row, head, batch}: a packed batch is one sequence of rows (batch 0).
  const int q_row = int(seq.q_row0) + m_start, q_batch = seq.packed ? 0 : batch;
  const int k_row0 = int(seq.k_row0), k_batch = seq.packed ? 0 : batch;

  if (wg == 0) {  // ---- producer ----
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&tma_q);
      tma_prefetch_descriptor(&tma_k);
      tma_prefetch_descriptor(&tma_v);
      mbarrier_arrive_expect_tx(full_q, Cfg::kQBytes);
#pragma unroll
      for (int panel = 0; panel < Cfg::kPanels; ++panel) {
        tma_load_4d(q_s + panel * kBlockM * 128, &tma_q, full_q, 64 * panel, q_row, head, q_batch);
      }
      for (int i = 0; i < n_blocks; ++i) {
        const int stage = i % kStages;
        const uint32_t phase = uint32_t(i / kStages) & 1u;
        mbarrier_wait(&empty[stage], phase ^ 1u);  // a fresh slot passes (its "previous" phase is complete)
        const int row = k_row0 + (n_block_min + i) * kBlockN;
        mbarrier_arrive_expect_tx(&full_k[stage], Cfg::kKVBytes);
#pragma unroll
        for (int panel = 0; panel < Cfg::kPanels; ++panel) {
          tma_load_4d(k_s + stage * Cfg::kKVBytes + panel * kBlockN * 128, &tma_k, &full_k[stage], 64 * panel, row,
                      kv_head, k_batch);
        }
        mbarrier_arrive_expect_tx(&full_v[stage], Cfg::kKVBytes);
#pragma unroll
        for (int panel = 0; panel < Cfg::kPanels; ++panel) {
          tma_load_4d(v_s + stage * Cfg::kKVBytes + panel * kBlockN * 128, &tma_v, &full_v[stage], 64 * panel, row,
                      kv_head, k_batch);
        }
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  // The sequence read again here, after the barrier: the copy read before it stayed live across the
  // role split and spilled 8 bytes (d 128 / 256); these few cached loads cost nothing.
  const SequenceView cseq = sequence_view<true>(p, batch);
  const int cw = wg - 1;                   // consumer 0 or 1: query rows 64 cw .. 64 cw + 63 of the tile
  const int ctid = int(threadIdx.x) - 128 * wg;  // 0..127 within the warpgroup
  const int warp = ctid / 32, lane = ctid % 32, g = lane / 4, t = lane % 4;
  const int row0 = m_start + 64 * cw + 16 * warp + g;  // this thread's rows: row0 and row0 + 8
  const uint32_t q_wg = smem_u32(q_s) + uint32_t(64 * cw * 128);  // its rows in panel 0 (8 atoms in)
  // Consumer 0 issues first: consumer 1 opens its turn once.
  if (cw == 1) named_barrier_arrive(kTurnBarrier + 0, 256);

  mbarrier_wait(full_q, 0);
  if (p.pe.kind != int(PEKind::kNone)) {  // encode this warpgroup's Q rows in place (K arrives encoded)
    const int64_t* q_pos = sequence_positions(p.pe, cseq, batch, false);
    encode_tile_rows<64, 128>(Sw128Tile<T>{q_s, kBlockM, 64 * cw}, ctid, m_start + 64 * cw, cseq.seqlen_q, q_pos,
                              p.pe.q_pos_stride_s, p.pe, false);
    fence_proxy_async_shared();  // generic-proxy writes, read next by wgmma (async proxy)
    named_barrier_sync(kConsumerBarrier + cw, 128);
  }

  float o[kORegs];
#pragma unroll
  for (int i = 0; i < kORegs; ++i) o[i] = 0.f;
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;

  // Descriptors as a base plus a constant per k16 step (desc_advance): ptxas then forms each one at its
  // wgmma instead of keeping all of them live through the loop, which spilled (d 128 / 256).
  const uint64_t q_desc = sw128_kmajor_desc(q_wg, kBlockM, 0);
  const uint64_t k_desc0 = sw128_kmajor_desc(smem_u32(k_s), kBlockN, 0);
  const uint64_t v_desc0 = sw128_mnmajor_desc(smem_u32(v_s), kBlockN, 0);
  // S = Q K^T of the block in ring slot `stage`, issued (not waited for).
  const auto issue_qk = [&](float (&s)[kSRegs], int stage) {
    const uint64_t k_desc = desc_advance(k_desc0, uint32_t(stage) * Cfg::kKVBytes);
#pragma unroll
    for (int kk = 0; kk < kSlicesQK; ++kk) {
      Wgmma<kBlockN, T>::ss(s, desc_advance(q_desc, sw128_kmajor_step(kBlockM, kk)),
                            desc_advance(k_desc, sw128_kmajor_step(kBlockN, kk)), kk > 0);
    }
  };
  // Mask, scale and softmax of block n_block in s (S in, P = 2^(s - m) out); returns the rescale factor
  // of each of the thread's two rows for O and updates m_row, l_row.
  const auto softmax = [&](float (&s)[kSRegs], int n_block, float (&rescale)[2]) {
    const int n_start = n_block * kBlockN;
    const bool need_mask = tile_needs_mask<true>(p, cseq, m_start, kBlockM, n_start, kBlockN);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int lo = 0, hi = kBlockN;
      if (need_mask) {
        row_key_range(row0 + 8 * h, p, cseq, lo, hi);
        lo -= n_start;
        hi -= n_start;
      }
      float mx = m_row[h];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = 8 * j + 2 * t + e;
          float sv = s[4 * j + 2 * h + e] * scale_log2;
          if (need_mask && (col < lo || col >= hi)) sv = -INFINITY;
          s[4 * j + 2 * h + e] = sv;
          mx = fmaxf(mx, sv);
        }
      }
      mx = quad_max(mx);
      const float m_sub = mx == -INFINITY ? 0.f : mx;  // nothing visible yet: avoid -inf - -inf
      rescale[h] = mx == m_row[h] ? 1.f : fast_exp2(m_row[h] - m_sub);
      m_row[h] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = fast_exp2(s[4 * j + 2 * h + e] - m_sub);
          s[4 * j + 2 * h + e] = pr;
          sum += pr;
        }
      }
      l_row[h] = l_row[h] * rescale[h] + sum;
    }
  };

  if (n_blocks > 0) {
    float s[kSRegs];
    float rescale[2];
    // Block 0: S_0 alone.
    mbarrier_wait(&full_k[0], 0);
    named_barrier_sync(kTurnBarrier + cw, 256);
    wgmma_fence_operand(s);
    wgmma_fence();
    issue_qk(s, 0);
    wgmma_commit_group();
    wgmma_fence_operand(s);
    named_barrier_arrive(kTurnBarrier + (cw ^ 1), 256);
    wgmma_wait_group<0>();
    wgmma_fence_operand(s);
    softmax(s, n_block_min, rescale);  // O is 0: nothing to rescale

    // One key block i: P_i V_i, and with kNext S_{i+1} = Q K_{i+1}^T issued beside it and its softmax
    // run under P_i V_i. The last block is a separate instance (kNext false), so that every path
    // through a step commits the same groups and ptxas can match each wait to its GEMMs.
    const auto step = [&](auto next, int i) {
      constexpr bool kNext = decltype(next)::value;
      const int stage = i % kStages;
      const int next_stage = (i + 1) % kStages;
      uint32_t a[kSlicesPV][4];  // P_i in the A-register layout
#pragma unroll
      for (int c = 0; c < kSlicesPV; ++c) acc_to_a<T>(a[c], s, c);
      if (kNext) mbarrier_wait(&full_k[next_stage], uint32_t((i + 1) / kStages) & 1u);
      mbarrier_wait(&full_v[stage], uint32_t(i / kStages) & 1u);
      // Pin every register the GEMMs read (P_i, O, S) before the fence: the compiler may not sink their
      // last writes past it (ptxas would then add its own fence).
#pragma unroll
      for (int c = 0; c < kSlicesPV; ++c) wgmma_fence_operand(a[c]);
      wgmma_fence_operand(o);
      wgmma_fence_operand(s);
      named_barrier_sync(kTurnBarrier + cw, 256);
      wgmma_fence();
      if constexpr (kNext && Cfg::kOverlap) {
        issue_qk(s, next_stage);  // s is free: P_i lives in a
        wgmma_commit_group();
      }
      const uint64_t v_desc = desc_advance(v_desc0, uint32_t(stage) * Cfg::kKVBytes);
#pragma unroll
      for (int c = 0; c < kSlicesPV; ++c) {
        Wgmma<kHeadDim, T>::template rs<1>(o, a[c], desc_advance(v_desc, sw128_mnmajor_step(c)), 1);
      }
      wgmma_commit_group();
      wgmma_fence_operand(s);
      wgmma_fence_operand(o);
      named_barrier_arrive(kTurnBarrier + (cw ^ 1), 256);
      if constexpr (kNext && Cfg::kOverlap) {
        wgmma_wait_group<1>();  // S_{i+1} done; P_i V_i may still run
        wgmma_fence_operand(s);
        softmax(s, n_block_min + i + 1, rescale);
      }
      wgmma_wait_group<0>();
      if constexpr (kNext && !Cfg::kOverlap) {  // S_{i+1} after P_i V_i (outside the ping-pong turn)
        wgmma_fence();
        issue_qk(s, next_stage);
        wgmma_commit_group();
        wgmma_wait_group<0>();
        wgmma_fence_operand(s);
        softmax(s, n_block_min + i + 1, rescale);
      }
      wgmma_fence_operand(o);
#pragma unroll
      for (int c = 0; c < kSlicesPV; ++c) wgmma_fence_operand(a[c]);  // P_i's registers were read until now
      // This warp's share of the GEMMs that read K_i and V_i is done: one arrival per warp, so no
      // warp's release depends on how the hardware tracks another warp's part.
      if (lane == 0) mbarrier_arrive(&empty[stage]);
      if constexpr (kNext) {
#pragma unroll
        for (int j = 0; j < kHeadDim / 8; ++j) {
          o[4 * j + 0] *= rescale[0];
          o[4 * j + 1] *= rescale[0];
          o[4 * j + 2] *= rescale[1];
          o[4 * j + 3] *= rescale[1];
        }
      }
    };
    for (int i = 0; i + 1 < n_blocks; ++i) step(std::true_type{}, i);
    step(std::false_type{}, n_blocks - 1);
  }

  // ---- epilogue: normalize, lse, O through this warpgroup's Q rows (swizzled), 16-byte stores ----
  const int64_t stats0 = stats_row0(p, cseq, batch, head);
  // Every wgmma that read Q is done (wait_group 0 above); the other warpgroup never reads these rows.
  named_barrier_sync(kConsumerBarrier + cw, 128);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = quad_sum(l_row[h]);
    const float inv_l = l > 0.f ? 1.f / l : 0.f;  // l = 0: the row saw no key, out = 0
    const int row = row0 + 8 * h;
    if (t == 0 && row < cseq.seqlen_q) {
      p.lse[stats0 + row] = l > 0.f ? (m_row[h] + log2f(l)) * 0.6931471805599453f : -INFINITY;
    }
    const uint32_t r = uint32_t(64 * cw + 16 * warp + g + 8 * h);
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      *reinterpret_cast<uint32_t*>(q_s + sw128_offset(r, uint32_t(8 * j + 2 * t), kBlockM)) =
          pack2<T>(o[4 * j + 2 * h] * inv_l, o[4 * j + 2 * h + 1] * inv_l);
    }
  }
  named_barrier_sync(kConsumerBarrier + cw, 128);
  T* out = static_cast<T*>(p.out) + row0_offset(cseq, p.out_strides, batch, head, false);
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
#pragma unroll 4
  for (int c = ctid; c < 64 * kChunksPerRow; c += 128) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int row = m_start + 64 * cw + r;
    if (row < cseq.seqlen_q) {
      *reinterpret_cast<uint4*>(out + int64_t(row) * p.out_strides.seq + col) =
          *reinterpret_cast<const uint4*>(q_s + sw128_offset(uint32_t(64 * cw + r), uint32_t(col), kBlockM));
    }
  }
#else
  unsupported_arch();  // compiled for sm_90a only; route.h never launches it elsewhere
#endif
}

}  // namespace hopper
}  // namespace flashattn
