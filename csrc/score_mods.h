// Score modifications of the CUDA kernels, written once for the forward (attention_fwd.cuh) and both
// backward kernels (attention_bwd_dq.cuh, attention_bwd_dkdv.cuh): softcap (Gemma 2) then ALiBi, the
// formulas and order of flashattn_py/semantics/score_mods.py (FlashAttention 2's):
//   s = scale * q.k;  s = softcap * tanh(s / softcap) if softcap > 0;  s -= slope[b, h] * |i + diag - j|
// with diag the key position of query 0 (bottom-right or top-left, per sequence: sequence.h).
// Scores here are in the kernels' base-2 units (natural-log scores times log2 e), as the softmax uses
// them, so the softcap and the ALiBi slope are pre-multiplied by log2 e.
//
// Plain C++ with no CUDA header: the functions are __host__ __device__, so tests/test_cuda_score_mods.py
// compiles this file with the host compiler and checks it against the Python formulas without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

namespace flashattn {

constexpr float kScoreLog2e = 1.4426950408889634f;

// Whether the call modifies its scores: the kernels are compiled with and without the modifications,
// so a plain call keeps the instance (registers, instructions) it had before they existed.
FLASHATTN_HOST_DEVICE inline bool has_score_mods(const AttentionParams& p) {
  return p.mods.softcap > 0.f || p.mods.alibi_slopes != nullptr;
}

// 2^x: the MUFU approximation on the GPU (relative error 2^-22), the libm one on the host.
FLASHATTN_HOST_DEVICE inline float score_exp2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// tanh in fp32 from one exp2 and one division, branch-free: (1 - e^-2|x|) / (1 + e^-2|x|) with the sign
// of x. Below |x| ~ 0.1, 1 - e^-2|x| cancels and the relative error grows, but the absolute error stays
// under 2e-7 everywhere, and that is what the softmax sees: softcap * tanh moves a logit by at most
// softcap * 2e-7 (1e-5 at softcap 50; the Triton kernels add a Taylor branch for relative accuracy,
// which here cost registers the tightest instances do not have). Accuracy does not depend on
// --use_fast_math: the project builds with it, and its tanhf would be the approximate tanh.approx
// (2^-11 relative: 0.02 of a logit at softcap 50).
FLASHATTN_HOST_DEVICE inline float score_tanh(float x) {
  const float e = score_exp2(-2.8853900817779268f * fabsf(x));  // e^(-2|x|), exactly 0 for large |x|
  return copysignf((1.f - e) / (1.f + e), x);
}

// The modifications as one (batch, query head) sees them, in base-2 units.
struct ScoreMod {
  float scale_log2 = 0.f;     // without softcap: s2 = raw * scale_log2
  float softcap_scale = 0.f;  // scale / softcap: tanh's argument is raw * softcap_scale
  float softcap_log2 = 0.f;   // softcap * log2 e
  float slope_log2 = 0.f;     // ALiBi slope * log2 e (0 without ALiBi)
  bool softcap = false;

  FLASHATTN_HOST_DEVICE static ScoreMod of(const AttentionParams& p, int64_t batch, int64_t head) {
    ScoreMod m;
    m.scale_log2 = p.softmax_scale * kScoreLog2e;
    m.softcap = p.mods.softcap > 0.f;
    if (m.softcap) {
      m.softcap_scale = p.softmax_scale / p.mods.softcap;
      m.softcap_log2 = p.mods.softcap * kScoreLog2e;
    }
    if (p.mods.alibi_slopes != nullptr) {
      m.slope_log2 = p.mods.alibi_slopes[batch * p.mods.alibi_stride_b + head * p.mods.alibi_stride_h] * kScoreLog2e;
    }
    return m;
  }

  // The modified score (base 2) of raw = q.k for query i and key j, given offset = i + diag - j (the
  // signed distance from the diagonal; ALiBi uses its magnitude). *dcap = d(capped)/d(scaled), the
  // factor the backward multiplies dS by (1 without softcap).
  FLASHATTN_HOST_DEVICE float apply(float raw, int offset, float* dcap) const {
    float s;
    if (softcap) {
      const float capped = score_tanh(raw * softcap_scale);
      s = capped * softcap_log2;
      *dcap = 1.f - capped * capped;
    } else {
      s = raw * scale_log2;
      *dcap = 1.f;
    }
    return s - slope_log2 * float(offset < 0 ? -offset : offset);
  }
};

}  // namespace flashattn
