// Which forward calls the Hopper (sm_90a) kernel takes: the one routing rule, in plain C++ so that
// tests/test_cuda_hopper_forward.py checks it on the host (csrc/hopper/tests/route_probe.cpp) and the
// extension, the Python backend (through the bindings) and the self-test all ask this function.
//
// A call goes to attention_fwd_sm90_kernel when every condition of sm90_forward_route holds and K
// arrives encoded when the call has an encoding (sm90_forward_takes); otherwise the mma.sync forward
// (attention_fwd.cuh) runs it, with the same semantics. sm90_forward_route returns the first condition
// that fails as the reason ("" when the Hopper kernel can take the call).
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

inline bool sm90_head_dim(int d) { return d == 64 || d == 128 || d == 256; }

inline std::string sm90_forward_route(const AttentionParams& p, const Sm90Context& c) {
  if (!c.requested) return "not requested (FLASHATTN_CUDA_SM90=1 opts in)";
  if (!c.compiled) return "the extension was built without sm_90a (FLASHATTN_CUDA_ARCHS needs 90a)";
  if (c.cc_major != 9 || c.cc_minor != 0) return "the device is not sm_90 (H100 / H200)";
  if (!sm90_head_dim(p.head_dim)) return "head_dim " + std::to_string(p.head_dim) + " (the kernel has 64, 128, 256)";
  if (p.mods.softcap != 0.f || p.mods.alibi_slopes != nullptr) return "softcap / ALiBi";
  if (p.block_table != nullptr) return "paged K/V";
  if (p.num_splits != 1) return "split-K";
  if (p.leftpad_k != nullptr) return "leftpad_k";
  if (p.seqlen_k == 0) return "no keys (nothing to stream: out 0, lse -inf without a kernel of its own)";
  const bool packed = p.cu_seqlens_q != nullptr;
  const int batches = packed ? 1 : p.batch;
  // TMA reads rows with 16-byte aligned strides (tma.h): params.h rows_vector_aligned.
  if (!rows_vector_aligned(p.q_strides, batches, p.seqlen_q, p.nheads_q) ||
      !rows_vector_aligned(p.k_strides, batches, p.seqlen_k, p.nheads_kv) ||
      !rows_vector_aligned(p.v_strides, batches, p.seqlen_k, p.nheads_kv) ||
      !rows_vector_aligned(p.out_strides, batches, p.seqlen_q, p.nheads_q)) {
    return "strides not multiples of 8 elements (TMA needs 16-byte aligned rows)";
  }
  if (packed && (p.total_q <= 0 || p.total_k <= 0)) return "packed batch without total_q / total_k";
  return "";
}

// Whether the kernel runs the call as given: the route, and K already encoded when there is an encoding
// (the kernel encodes Q only; the backend pre-encodes K when sm90_forward_route says "").
inline bool sm90_forward_takes(const AttentionParams& p, const Sm90Context& c) {
  return sm90_forward_route(p, c).empty() && (p.pe.kind == int(PEKind::kNone) || p.pe.k_encoded != 0);
}

}  // namespace hopper
}  // namespace flashattn
