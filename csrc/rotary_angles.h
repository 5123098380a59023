// cos and sin of the positional-encoding angles p * inv_freq (RoPE, sinusoidal) for the rows one
// thread visits, as csrc/positional.cuh computes them. Plain C++ with __host__ __device__ functions
// and only fp32 fmaf / rintf / multiply / add, so the host compiler runs exactly the arithmetic the
// kernels run (csrc/tests/rotary_probe.cpp, tests/test_cuda_rotary_angles.py measure its error).
//
// The angle is the exact real product p * inv_freq (inv_freq the fp32 value), not its fp32 rounding:
// at p ~ 1e5 the rounding alone is up to 4e-3 rad, and a walk that rotates from row to row (below)
// follows the exact angle, so anchors must too or rows would disagree with their neighbours.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

namespace flashattn {

// sin and cos of the exact angle p * inv_freq, |p| < 2^24 (float(p) exact; beyond, p is rounded to fp32
// first, as the fp32-angle reference does), 0 <= inv_freq <= 1. Absolute error ~2e-7 at any such angle
// and under any compile flags: no sincosf (--use_fast_math makes it __sincosf, whose error grows with
// |angle|), no MUFU. Steps:
//  - hi + lo = pf * inv_freq exactly (fmaf gives the product's rounding error);
//  - hi - k * pi/2 with a 3-part Cody-Waite split in fmaf: kPio2_1 has 8 significant bits, so k * kPio2_1
//    is a multiple of 2^-7 and, for hi >= 2^16, so is hi: the first fmaf is exact while
//    k < 2^24 * 2^-7 / kPio2_2 (~2.7e8). The next two round once each, at |result| < 1;
//  - + lo, and a second reduction for the rare |r| > pi/4 it makes (|lo| <= ulp(hi) / 2);
//  - minimax polynomials of sin and cos on [-pi/4, pi/4] (musl's __sindf / __cosdf coefficients, rounded
//    to fp32; their own error < 2^-37), then the quadrant k mod 4 picks and signs them.
FLASHATTN_HOST_DEVICE inline void pe_sincos(int64_t p, float inv_freq, float* s, float* c) {
  constexpr float kTwoOverPi = 0.636619747f;
  constexpr float kPio2_1 = 1.5703125f;         // 201 / 128
  constexpr float kPio2_2 = 4.83826792e-4f;     // pi/2 - kPio2_1, rounded to fp32
  constexpr float kPio2_3 = 2.56334407e-12f;    // pi/2 - kPio2_1 - kPio2_2, rounded (residue 8e-20)
  const float pf = float(p);
  const float hi = pf * inv_freq;
  const float lo = fmaf(pf, inv_freq, -hi);
  const float k = rintf(hi * kTwoOverPi);
  float r = fmaf(-k, kPio2_1, hi);
  r = fmaf(-k, kPio2_2, r);
  r = fmaf(-k, kPio2_3, r);
  r += lo;
  const float k2 = rintf(r * kTwoOverPi);  // 0 unless lo pushed r past pi/4 (then +-1: no third part needed)
  r = fmaf(-k2, kPio2_1, r);
  r = fmaf(-k2, kPio2_2, r);
  const float z = r * r;
  const float sr = fmaf(r * z, fmaf(fmaf(fmaf(2.71831141e-6f, z, -1.98393347e-4f), z, 8.33332911e-3f), z,
                                    -0.166666672f), r);
  const float cr = fmaf(z, fmaf(fmaf(fmaf(2.43904487e-5f, z, -1.38867635e-3f), z, 4.16666232e-2f), z, -0.5f),
                        1.0f);
  const int q = (int(k) + int(k2)) & 3;  // angle = q * pi/2 + r (mod 2 pi); & 3 is mod 4 for negatives too
  const float a = (q & 1) ? cr : sr;
  const float b = (q & 1) ? sr : cr;
  *s = (q & 2) ? -a : a;
  *c = ((q + 1) & 2) ? -b : b;
}

// (cos, sin) of p * inv_freq for the positions p = advance()'s arguments, in order, for one pair
// column of one thread. When p is the previous position + step (always, where position = row index,
// and for contiguous position ids), the previous (cos, sin) is rotated by the step angle's, 4 fmaf
// instead of pe_sincos' ~30 instructions; otherwise (arbitrary position ids, or kRun rotations
// since the last anchor) pe_sincos anchors the walk afresh. kRun bounds the error the rotations
// accumulate: each adds the step's fp32 rounding (angle and norm, a systematic few 1e-8) and its
// own (4 roundings), so the error grows ~linearly with the run; 16 keeps it at ~1.1e-6 at any
// position (tests/test_cuda_rotary_angles.py) for ~2 extra instructions per row.
class AngleWalk {
 public:
  static constexpr int kRun = 16;

  FLASHATTN_HOST_DEVICE AngleWalk(float inv_freq, int step) : inv_freq_(inv_freq), step_(step) {
    pe_sincos(step, inv_freq, &step_sin_, &step_cos_);
  }

  FLASHATTN_HOST_DEVICE void advance(int64_t p) {
    if (run_ < kRun && p == pos_ + step_) {
      const float c = fmaf(cos_, step_cos_, -(sin_ * step_sin_));
      sin_ = fmaf(sin_, step_cos_, cos_ * step_sin_);
      cos_ = c;
      ++run_;
    } else {
      pe_sincos(p, inv_freq_, &sin_, &cos_);
      run_ = 0;
    }
    pos_ = p;
  }

  FLASHATTN_HOST_DEVICE float cos() const { return cos_; }
  FLASHATTN_HOST_DEVICE float sin() const { return sin_; }
  FLASHATTN_HOST_DEVICE int run() const { return run_; }  // rotations since the last anchor

 private:
  float inv_freq_;
  int step_;
  float step_cos_ = 1.f, step_sin_ = 0.f;
  float cos_ = 1.f, sin_ = 0.f;
  int64_t pos_ = 0;
  int run_ = kRun;  // the first advance() anchors
};

}  // namespace flashattn
