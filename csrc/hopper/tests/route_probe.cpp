// Host probe of csrc/hopper/route.h for tests/test_cuda_hopper_forward.py and test_cuda_hopper_backward.py:
// the routing rules of the Hopper forward and backward on named cases, compiled with the host compiler (no CUDA).
// stdout, one line per case: "name|reason|takes" (reason "" when the Hopper kernel can take the call, takes 1
// when it runs the call as given). Forward cases first; the backward's are named "bwd_...": there takes needs
// no encoding left for the kernel and the fp32 dQ accumulator.
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "../route.h"

using namespace flashattn;
using namespace flashattn::hopper;

// A dense bf16 call the kernel takes: batch 2, 300 queries, 500 keys, 8 / 2 heads, head_dim 128,
// contiguous bshd strides, on an H100 build with sm_90a, opted in.
static AttentionParams dense() {
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 2, p.seqlen_q = 300, p.seqlen_k = 500, p.nheads_q = 8, p.nheads_kv = 2, p.head_dim = 128;
  p.q_strides = p.out_strides = Strides{300 * 8 * 128, 8 * 128, 128};
  p.k_strides = p.v_strides = Strides{500 * 2 * 128, 2 * 128, 128};
  return p;
}

static Sm90Context h100() { return Sm90Context{true, true, 9, 0}; }

int main() {
  static float slopes[1];
  static int32_t lengths[3];
  static int64_t positions[1];
  using Edit = std::function<void(AttentionParams&, Sm90Context&)>;
  const std::vector<std::pair<std::string, Edit>> cases = {
      {"dense", [](AttentionParams&, Sm90Context&) {}},
      {"fp16_d64", [](AttentionParams& p, Sm90Context&) { p.dtype = DType::kFloat16, p.head_dim = 64; }},
      {"d256", [](AttentionParams& p, Sm90Context&) { p.head_dim = 256; }},
      {"causal_window", [](AttentionParams& p, Sm90Context&) { p.window_left = 64, p.window_right = 0; }},
      {"not_requested", [](AttentionParams&, Sm90Context& c) { c.requested = false; }},
      {"not_compiled", [](AttentionParams&, Sm90Context& c) { c.compiled = false; }},
      {"a100", [](AttentionParams&, Sm90Context& c) { c.cc_major = 8; }},
      {"sm_100", [](AttentionParams&, Sm90Context& c) { c.cc_major = 10; }},
      {"d96", [](AttentionParams& p, Sm90Context&) { p.head_dim = 96; }},
      {"d32", [](AttentionParams& p, Sm90Context&) { p.head_dim = 32; }},
      {"softcap", [](AttentionParams& p, Sm90Context&) { p.mods.softcap = 30.f; }},
      {"alibi", [](AttentionParams& p, Sm90Context&) { p.mods.alibi_slopes = slopes; }},
      {"paged", [](AttentionParams& p, Sm90Context&) { p.block_table = lengths, p.page_size = 16; }},
      {"split", [](AttentionParams& p, Sm90Context&) { p.num_splits = 4; }},
      {"leftpad", [](AttentionParams& p, Sm90Context&) { p.seqused_k = lengths, p.leftpad_k = lengths; }},
      {"seqused_k", [](AttentionParams& p, Sm90Context&) { p.seqused_k = lengths; }},
      {"no_keys", [](AttentionParams& p, Sm90Context&) { p.seqlen_k = 0; }},
      {"odd_q_seq_stride", [](AttentionParams& p, Sm90Context&) { p.q_strides.seq = 8 * 128 + 4; }},
      {"odd_v_head_stride", [](AttentionParams& p, Sm90Context&) { p.v_strides.head = 130; }},
      {"odd_stride_of_size_1_dim", [](AttentionParams& p, Sm90Context&) { p.batch = 1, p.q_strides.batch = 3; }},
      {"packed", [](AttentionParams& p, Sm90Context&) {
         p.cu_seqlens_q = p.cu_seqlens_k = lengths, p.total_q = 700, p.total_k = 900;
         p.q_strides.batch = p.k_strides.batch = p.v_strides.batch = p.out_strides.batch = 0;
       }},
      {"packed_without_total_k", [](AttentionParams& p, Sm90Context&) {
         p.cu_seqlens_q = p.cu_seqlens_k = lengths, p.total_q = 700;
       }},
      {"rotary_k_raw", [](AttentionParams& p, Sm90Context&) {
         p.pe.kind = int(PEKind::kRotary), p.pe.dim = 128, p.pe.q_pos = p.pe.k_pos = positions;
       }},
      {"rotary_k_encoded", [](AttentionParams& p, Sm90Context&) {
         p.pe.kind = int(PEKind::kRotary), p.pe.dim = 128, p.pe.k_encoded = 1;
       }},
      {"sinusoidal_k_encoded", [](AttentionParams& p, Sm90Context&) {
         p.pe.kind = int(PEKind::kSinusoidal), p.pe.dim = 128, p.pe.k_encoded = 1;
       }},
  };
  for (const auto& [name, edit] : cases) {
    AttentionParams p = dense();
    Sm90Context c = h100();
    edit(p, c);
    std::printf("%s|%s|%d\n", name.c_str(), sm90_forward_route(p, c).c_str(), int(sm90_forward_takes(p, c)));
  }

  // The backward: the same dense call with its gradients (laid out like q, k, v), dout and dq_accum.
  static float accum[1];
  const auto backward_call = [] {
    AttentionParams p = dense();
    p.dout_strides = p.dq_strides = p.q_strides;
    p.dk_strides = p.dv_strides = p.k_strides;
    p.dq_accum = accum, p.dq_accum_strides = p.q_strides;
    return p;
  };
  using BwdEdit = std::function<void(AttentionParams&, Sm90Context&, bool&)>;
  const std::vector<std::pair<std::string, BwdEdit>> bwd_cases = {
      {"bwd_dense", [](AttentionParams&, Sm90Context&, bool&) {}},
      {"bwd_fp16_d64", [](AttentionParams& p, Sm90Context&, bool&) { p.dtype = DType::kFloat16, p.head_dim = 64; }},
      {"bwd_causal_window", [](AttentionParams& p, Sm90Context&, bool&) { p.window_left = 64, p.window_right = 0; }},
      {"bwd_seqused_k", [](AttentionParams& p, Sm90Context&, bool&) { p.seqused_k = lengths; }},
      {"bwd_packed", [](AttentionParams& p, Sm90Context&, bool&) {
         p.cu_seqlens_q = p.cu_seqlens_k = lengths, p.total_q = 700, p.total_k = 900;
       }},
      {"bwd_d256", [](AttentionParams& p, Sm90Context&, bool&) { p.head_dim = 256; }},
      {"bwd_d96", [](AttentionParams& p, Sm90Context&, bool&) { p.head_dim = 96; }},
      {"bwd_deterministic", [](AttentionParams&, Sm90Context&, bool& det) { det = true; }},
      {"bwd_not_requested", [](AttentionParams&, Sm90Context& c, bool&) { c.requested = false; }},
      {"bwd_a100", [](AttentionParams&, Sm90Context& c, bool&) { c.cc_major = 8; }},
      {"bwd_softcap", [](AttentionParams& p, Sm90Context&, bool&) { p.mods.softcap = 30.f; }},
      {"bwd_no_queries", [](AttentionParams& p, Sm90Context&, bool&) { p.seqlen_q = 0; }},
      {"bwd_odd_dout_stride", [](AttentionParams& p, Sm90Context&, bool&) { p.dout_strides.seq = 8 * 128 + 4; }},
      {"bwd_odd_dk_stride", [](AttentionParams& p, Sm90Context&, bool&) { p.dk_strides.head = 130; }},
      // An encoded call: the route is open (the backend then pre-encodes q, pe.q_encoded); the kernel runs it
      // only so, and only with the dQ accumulator.
      {"bwd_rotary_raw", [](AttentionParams& p, Sm90Context&, bool&) {
         p.pe.kind = int(PEKind::kRotary), p.pe.dim = 128, p.pe.q_pos = p.pe.k_pos = positions;
       }},
      {"bwd_rotary_q_encoded", [](AttentionParams& p, Sm90Context&, bool&) {
         p.pe.kind = int(PEKind::kRotary), p.pe.dim = 128, p.pe.q_pos = p.pe.k_pos = positions, p.pe.q_encoded = 1;
       }},
      {"bwd_no_accum", [](AttentionParams& p, Sm90Context&, bool&) { p.dq_accum = nullptr; }},
  };
  for (const auto& [name, edit] : bwd_cases) {
    AttentionParams p = backward_call();
    Sm90Context c = h100();
    bool deterministic = false;
    edit(p, c, deterministic);
    std::printf("%s|%s|%d\n", name.c_str(), sm90_backward_route(p, c, deterministic).c_str(),
                int(sm90_backward_takes(p, c, deterministic)));
  }
  return 0;
}
