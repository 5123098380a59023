// The one parameter block every CUDA kernel of flashattn_py takes (forward, backward, positional).
//
// Filled by the pybind11 bindings (csrc/bindings.cpp) from raw device pointers, shapes and strides
// that Python passes as integers, so nothing here depends on torch. Semantics are those of
// flashattn_py (docs/design.md; flashattn_py/params.py is its Python twin): bshd tensors addressed by element strides,
// bottom-right aligned causal/window masks, rows that see no key give out 0 and lse -inf.
#pragma once

#include <cstdint>

namespace flashattn {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Positional encoding applied to q/k tiles after they are loaded (fused), and inversely to dq/dk.
enum class PEKind : int { kNone = 0, kRotary = 1, kSinusoidal = 2 };

struct PositionalParams {
  int kind = 0;            // PEKind
  int dim = 0;             // rotary: rotated channels (rotary_dim, even); sinusoidal: head_dim
  int interleaved = 0;     // rotary: 1 = GPT-J pairs (2i, 2i+1); 0 = GPT-NeoX pairs (i, i + dim/2)
  float log2_base = 0.f;   // angle of pair i at position p: p * exp2(-(2i / dim) * log2_base)
  float scale = 1.f;       // sinusoidal: x * scale + PE(p); its inverse (backward) is g * scale
  // Optional rotary tables (nullptr: angles computed in-kernel): fp32 (seqlen_ro, dim / 2), row stride.
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t table_stride = 0;
  // Positions (int64) of each query / key row: element [b, s] at pos[b * stride_b + s * stride_s].
  const int64_t* q_pos = nullptr;
  int64_t q_pos_stride_b = 0, q_pos_stride_s = 0;
  const int64_t* k_pos = nullptr;
  int64_t k_pos_stride_b = 0, k_pos_stride_s = 0;
  // 1: k arrives already encoded (the backend's K pre-pass), so the forward encodes q only. The Hopper
  // forward (hopper/route.h) takes encoded calls only this way; the mma.sync forward refuses it (it
  // encodes K itself, and a flag read in its loop cost the tightest instance a spill).
  int k_encoded = 0;
  // 1: q arrives already encoded (the backend's Q pre-pass: every key block re-reads each Q tile), so the
  // Hopper backward encodes its K block in the kernel (once per CTA) and maps dq, dk back through the
  // inverse itself. Only the Hopper backward takes it (hopper/route.h); the mma.sync backward refuses it.
  int q_encoded = 0;
};

// Score modifications between scale * q.k and the softmax (flashattn_py/semantics/score_mods.py, FlashAttention
// 2's order; csrc/score_mods.cuh applies them): softcap (Gemma 2), then ALiBi. Attention biases / masks
// and sinks have no field: flashattn_py/backends/cuda_backend.py refuses them.
struct ScoreModParams {
  float softcap = 0.f;  // > 0: s = softcap * tanh(s / softcap); 0: off
  // ALiBi slopes, fp32, element [b, h] at alibi_slopes[b * alibi_stride_b + h * alibi_stride_h] (strides
  // may be 0: one slope per head broadcast over the batch); nullptr: off. s -= slope * |i + diag - j|.
  const float* alibi_slopes = nullptr;
  int64_t alibi_stride_b = 0, alibi_stride_h = 0;
};

// Element strides (not bytes) of a bshd tensor; the head dim is contiguous (stride 1).
struct Strides {
  int64_t batch = 0, seq = 0, head = 0;
};

struct AttentionParams {
  DType dtype = DType::kFloat16;
  int batch = 0, seqlen_q = 0, seqlen_k = 0;
  int nheads_q = 0, nheads_kv = 0;  // nheads_q % nheads_kv == 0 (GQA/MQA)
  int head_dim = 0;                 // 32, 64, 96, 128 or 256 (others rejected before launch)
  float softmax_scale = 0.f;
  int window_left = -1, window_right = -1;  // causal folded in (right = 0); -1 = unbounded
  int top_left = 0;  // 0: query i at key i + seqlen_k - seqlen_q (FlashAttention); 1: at key i (SDPA)

  // Forward inputs / outputs (dtype), lse fp32 contiguous (batch, nheads_q, seqlen_q), natural log.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  Strides q_strides, k_strides, v_strides, out_strides;

  // Backward: dout (dtype) in, dq/dk/dv (dtype, shaped like q/k/v) out. delta fp32
  // (batch, nheads_q, seqlen_q) contiguous scratch: rowsum(dout * out).
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* delta = nullptr;
  Strides dout_strides, dq_strides, dk_strides, dv_strides;
  // The Hopper backward's fp32 dQ accumulator (hopper/attention_bwd_sm90.cuh): shaped like dq, zeroed by
  // the caller, summed into by TMA reduce-adds, then scaled and rounded into dq. nullptr: the mma.sync
  // backward, which writes dq directly.
  float* dq_accum = nullptr;
  Strides dq_accum_strides;

  PositionalParams pe;
  ScoreModParams mods;

  // Variable lengths (flashattn_py/varlen.py, validation/sequences.py), int32 device arrays; nullptr: every sequence is
  // (seqlen_q, seqlen_k). sequence.h turns them into each CTA's view of its sequence.
  //  - cu_seqlens_q / cu_seqlens_k (batch + 1 prefix sums): packed batches. Sequence b is rows
  //    cu[b] .. cu[b + 1] - 1 of q/out (resp. k/v) and of the position tensors; batch strides are not
  //    used; seqlen_q / seqlen_k are the longest sequence's; lse / delta are (nheads_q, total_q).
  //  - seqused_k (batch): dense batches where sequence b attends to its first seqused_k[b] keys (the
  //    backward writes zero dk / dv for the others).
  //  - leftpad_k (batch; with seqused_k, forward only): sequence b's first leftpad_k[b] key rows are
  //    padding (flash_attn_with_kvcache's cache_leftpad), so it sees keys leftpad_k[b] .. seqused_k[b] - 1. Key
  //    indices are not shifted: the diagonal and window stay where seqused_k puts them.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int total_q = 0;  // packed: rows of q (cu_seqlens_q[batch]), the lse / delta row length
  int total_k = 0;  // packed: rows of k / v (cu_seqlens_k[batch]): the extent of the Hopper kernel's K/V tensor maps
  const int32_t* seqused_k = nullptr;
  const int32_t* leftpad_k = nullptr;

  // Paged K/V (forward only): k and v are (num_pages, page_size, nheads_kv, head_dim),
  // k_strides.batch / v_strides.batch are page strides, and key row j of sequence b lives in page
  // block_table[b * block_table_stride + j / page_size], row j % page_size. Dense or packed batches:
  // a packed one's cu_seqlens_k give only each sequence's key count (its keys are rows 0.. of its own
  // pages, not packed rows).
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int page_size = 0;

  // Split-K forward (flash-decoding; dense batches): num_splits CTAs share each query tile, each over
  // one slice of its key blocks, and write an fp32 partial result: out_accum[split][r][head_dim] and
  // lse_accum[split][r] (natural log) with r = (b * nheads_q + h) * seqlen_q + row, contiguous. The
  // merge kernel combines them into out and lse.
  int num_splits = 1;
  float* out_accum = nullptr;
  float* lse_accum = nullptr;
};

#ifdef __CUDACC__
#define FLASHATTN_HOST_DEVICE __host__ __device__
#else
#define FLASHATTN_HOST_DEVICE
#endif

// Every row start of a bshd tensor with element strides s is 16-byte aligned relative to its base
// (16-bit elements: strides that are multiples of 8) for the dimensions it steps over; the stride of a
// dimension of size 1 is never used (torch leaves arbitrary strides there). The mma.sync forward's
// cp.async (attention_fwd.cu) and the Hopper forward's TMA (hopper/route.h) both need it.
FLASHATTN_HOST_DEVICE inline bool rows_vector_aligned(const Strides& s, int batch, int seqlen, int heads) {
  return (batch <= 1 || s.batch % 8 == 0) && (seqlen <= 1 || s.seq % 8 == 0) && (heads <= 1 || s.head % 8 == 0);
}

}  // namespace flashattn
