// Which calls the Hopper (sm_90a) kernels take: the one routing rule, in plain C++ so that
// tests/test_cuda_hopper_forward.py and tests/test_cuda_hopper_backward.py check it on the host
// (csrc/hopper/tests/route_probe.cpp) and the extension, the Python backend (through the bindings) and
// the self-tests all ask these functions.
//
// A forward call goes to attention_fwd_sm90_kernel when every condition of sm90_forward_route holds and K
// arrives encoded when the call has an encoding (sm90_forward_takes); a backward call goes to
// attention_bwd_sm90_kernel when sm90_backward_route holds, q arrives encoded when the call has an encoding
// (pe.q_encoded) and the caller gave the fp32 dQ accumulator (sm90_backward_takes). Otherwise the mma.sync kernels (attention_fwd.cuh,
// attention_bwd_*.cuh) run the call, with the same semantics. The *_route functions return the first
// condition that fails as the reason ("" when the Hopper kernel can take the call).
#pragma once

#include <cstdint>
#include <string>

#include "../params.h"

namespace flashattn {
namespace hopper {

// What the caller knows besides the params: the device and the build.
struct Sm90Context {
  bool requested = false;  // the user's opt-in (FLASHATTN_CUDA_SM90=1) while the kernel is unvalidated on a GPU
  bool compiled = false;   // the extension has sm_90a code (FLASHATTN_CUDA_ARCHS contains 90a)
  int cc_major = 0, cc_minor = 0;  // the device's compute capability
};

// The head dims of both Hopper kernels (at 256 the backward's consumers split dK / dV by channels).
inline bool sm90_head_dim(int d) { return d == 64 || d == 128 || d == 256; }

// The batches whose strides a call steps over: a packed batch is one sequence of rows.
inline int strided_batches(const AttentionParams& p) { return p.cu_seqlens_q != nullptr ? 1 : p.batch; }

// The conditions the forward and the backward share: opt-in, build, device, head dim, and the call's form.
inline std::string sm90_common_route(const AttentionParams& p, const Sm90Context& c) {
  if (!c.requested) return "not requested (FLASHATTN_CUDA_SM90=1 opts in)";
  if (!c.compiled) return "the extension was built without sm_90a (FLASHATTN_CUDA_ARCHS needs 90a)";
  if (c.cc_major != 9 || c.cc_minor != 0) return "the device is not sm_90 (H100 / H200)";
  if (!sm90_head_dim(p.head_dim)) return "head_dim " + std::to_string(p.head_dim) + " (the kernels have 64, 128, 256)";
  if (p.mods.softcap != 0.f || p.mods.alibi_slopes != nullptr) return "softcap / ALiBi";
  if (p.block_table != nullptr) return "paged K/V";
  if (p.num_splits != 1) return "split-K";
  if (p.leftpad_k != nullptr) return "leftpad_k";
  if (p.seqlen_k == 0) return "no keys (nothing to stream: out 0, lse -inf without a kernel of its own)";
  const int batches = strided_batches(p);
  // TMA reads rows with 16-byte aligned strides (tma.h): params.h rows_vector_aligned.
  if (!rows_vector_aligned(p.q_strides, batches, p.seqlen_q, p.nheads_q) ||
      !rows_vector_aligned(p.k_strides, batches, p.seqlen_k, p.nheads_kv) ||
      !rows_vector_aligned(p.v_strides, batches, p.seqlen_k, p.nheads_kv) ||
      !rows_vector_aligned(p.out_strides, batches, p.seqlen_q, p.nheads_q)) {
    return "strides not multiples of 8 elements (TMA needs 16-byte aligned rows)";
  }
  if (p.cu_seqlens_q != nullptr && (p.total_q <= 0 || p.total_k <= 0)) return "packed batch without total_q / total_k";
  return "";
}

inline std::string sm90_forward_route(const AttentionParams& p, const Sm90Context& c) { return sm90_common_route(p, c); }

// Whether the kernel runs the call as given: the route, and K already encoded when there is an encoding
// (the kernel encodes Q only; the backend pre-encodes K when sm90_forward_route says "").
inline bool sm90_forward_takes(const AttentionParams& p, const Sm90Context& c) {
  return sm90_forward_route(p, c).empty() && (p.pe.kind == int(PEKind::kNone) || p.pe.k_encoded != 0);
}

// The backward (attention_bwd_sm90.cuh): the forward's conditions, not deterministic
// (its dQ adds are atomic and unordered; the mma.sync backward writes every gradient once), and the
// gradients' and dout's rows 16-byte aligned too (the epilogue's and dq_convert's vector stores, dO by TMA).
inline std::string sm90_backward_route(const AttentionParams& p, const Sm90Context& c, bool deterministic) {
  const std::string common = sm90_common_route(p, c);
  if (!common.empty()) return common;
  if (deterministic) return "deterministic (the kernel adds dQ with unordered TMA reduce-adds)";
  if (p.seqlen_q == 0) return "no queries (every gradient is 0 without a kernel of its own)";
  const int batches = strided_batches(p);
  if (!rows_vector_aligned(p.dout_strides, batches, p.seqlen_q, p.nheads_q) ||
      !rows_vector_aligned(p.dq_strides, batches, p.seqlen_q, p.nheads_q) ||
      !rows_vector_aligned(p.dk_strides, batches, p.seqlen_k, p.nheads_kv) ||
      !rows_vector_aligned(p.dv_strides, batches, p.seqlen_k, p.nheads_kv)) {
    return "gradient strides not multiples of 8 elements (16-byte aligned rows)";
  }
  return "";
}

// Whether the backward kernel runs the call as given: the route, q arriving encoded when there is an encoding
// (pe.q_encoded: the backend's Q pre-pass; the kernel encodes its K block and maps dq, dk back), and the
// caller's zeroed fp32 dQ accumulator.
inline bool sm90_backward_takes(const AttentionParams& p, const Sm90Context& c, bool deterministic) {
  return sm90_backward_route(p, c, deterministic).empty() && (p.pe.kind == int(PEKind::kNone) || p.pe.q_encoded) &&
         p.dq_accum != nullptr && rows_vector_aligned(p.dq_accum_strides, strided_batches(p), p.seqlen_q, p.nheads_q);
}

}  // namespace hopper
}  // namespace flashattn
