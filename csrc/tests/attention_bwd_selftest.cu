// Standalone GPU self-test of run_attention_backward, no torch: random q, k, v, dout; a float64 host
// reference computes out, lse (given to the kernels, as the forward would) and dq, dk, dv with the
// same semantics (flashattn_py/semantics/masks.py, positional.py); outputs are NaN-poisoned first and guarded
// by sentinel elements around them. For a GPU machine without the Python stack (run_attention_backward
// calls the Hopper backward, attention_bwd_sm90.cu, so both files are linked; its kernel body is in the
// sm_90a pass only):
//   nvcc -std=c++17 -O3 --use_fast_math -gencode arch=compute_80,code=sm_80 \
//        -gencode arch=compute_90a,code=sm_90a -Icsrc csrc/attention_bwd.cu csrc/attention_bwd_sm90.cu \
//        csrc/tests/attention_bwd_selftest.cu -o build/bwd_selftest
//   build/bwd_selftest [--sm90]   (exit status 0 = every case within tolerance)
// --sm90: every call carries the Hopper context (requested, compiled, this device's compute capability)
// and a zeroed fp32 dQ accumulator, so hopper/route.h sends the calls it takes to attention_bwd_sm90_kernel.
// Cases with a positional encoding then upload q encoded on the host (pe.q_encoded = 1, as the backend's Q
// pre-pass); the kernel encodes K and maps dq, dk back, compared with the same reference as without --sm90.
// Each line is tagged [sm90] or [mma.sync]: the kernel that ran. Exit status 2 without an sm_90 device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../launch.h"
#include "selftest_util.h"

using namespace flashattn;

// --sm90: the Hopper context of every run_attention_backward call; cases the Hopper kernel ran.
static hopper::Sm90Context g_sm90;
static int g_sm90_cases = 0;

struct Case {
  int batch, sq, sk, hq, hkv, d;
  DType dtype;
  int wl, wr;        // window, -1 unbounded (causal: wr = 0)
  bool bhsd;         // memory layout of every tensor
  int pe;            // 0 none, 1 rotary, 2 sinusoidal
  int rot_dim;       // rotary dim (0: d)
  int interleaved;
  bool misaligned;   // odd seq strides and an odd base offset: the element-wise load/store paths
  float softcap = 0.f;  // score mods (csrc/score_mods.h): softcap > 0, ALiBi slopes per (batch, head)
  bool alibi = false;
};

// ALiBi slope of (batch b, head h): the usual 2^(-8 (h + 1) / H), varied per batch so a kernel that
// reads the wrong batch's slope fails.
static double alibi_slope(int b, int h, int H) { return float(std::exp2(-8.0 * (h + 1) / H) * (1.0 + 0.25 * b)); }

// A (b, s, h, d) tensor in bshd or bhsd order; `pad` extra elements per seq row (misaligned case).
struct Layout {
  Strides st;
  size_t elems;  // allocation size in elements
};
static Layout layout_of(int b, int s, int h, int d, bool bhsd, int pad) {
  Layout l;
  if (bhsd) {
    l.st.seq = d + pad, l.st.head = int64_t(s) * l.st.seq, l.st.batch = int64_t(h) * l.st.head;
  } else {
    l.st.head = d, l.st.seq = int64_t(h) * d + pad, l.st.batch = int64_t(s) * l.st.seq;
  }
  l.elems = size_t(b) * l.st.batch + 1;
  return l;
}
static size_t at(const Strides& st, int b, int s, int h) {
  return size_t(b) * st.batch + size_t(s) * st.seq + size_t(h) * st.head;
}

// Reference encoding of one row (double math), forward or inverse (positional.py semantics).
// The angle is the exact p * inv_freq (inv_freq the kernel's fp32 exp2f value), not the fp32 product
// fl(p * inv_freq): the kernel rotates from row to row along exact angles (rotary_angles.h), as
// positional.py's float64 reference does; fl() would differ by up to ulp(angle) / 2.
static void encode_row(double* x, int d, int64_t p, const Case& c, int rot_dim, bool inverse) {
  const double log2_base = std::log2(10000.0);
  if (c.pe == 1) {
    const int half = rot_dim / 2;
    for (int i = 0; i < half; ++i) {
      const float inv = exp2f(-(float(2 * i) / float(rot_dim)) * float(log2_base));  // as the kernel
      const double a = double(p) * inv;  // exact, as the kernel
      const double co = std::cos(a), si = inverse ? -std::sin(a) : std::sin(a);
      const int c1 = c.interleaved ? 2 * i : i, c2 = c.interleaved ? 2 * i + 1 : i + half;
      const double x1 = x[c1], x2 = x[c2];
      x[c1] = x1 * co - x2 * si;
      x[c2] = x2 * co + x1 * si;
    }
  } else if (c.pe == 2) {
    for (int i = 0; i < d / 2; ++i) {
      const float inv = exp2f(-(float(2 * i) / float(d)) * float(log2_base));
      const double a = double(p) * inv;  // exact, as the kernel
      x[2 * i] = x[2 * i] * 0.5 + (inverse ? 0.0 : std::sin(a));
      x[2 * i + 1] = x[2 * i + 1] * 0.5 + (inverse ? 0.0 : std::cos(a));
    }
  }
}

static bool visible(int i, int j, const Case& c) {
  const long long d = (long long)j - i - ((long long)c.sk - c.sq);
  return (c.wr < 0 || d <= c.wr) && (c.wl < 0 || d >= -c.wl);
}

static bool run_case(const Case& c, std::mt19937& rng) {
  const int B = c.batch, Sq = c.sq, Sk = c.sk, Hq = c.hq, Hkv = c.hkv, D = c.d, group = Hq / Hkv;
  const DType t = c.dtype;
  const int pad = c.misaligned ? 3 : 0;
  // --sm90 with an encoding: q and k go to the kernel encoded (as the backend's pre-pass hands them) when
  // the route is open for the call; decided below once the params exist, prepared here.
  const bool sm90_mode = g_sm90.requested;
  const int rot_dim = c.rot_dim ? c.rot_dim : D;
  const Layout lq = layout_of(B, Sq, Hq, D, c.bhsd, pad), lk = layout_of(B, Sk, Hkv, D, c.bhsd, pad);
  const int off = c.misaligned ? 1 : 0;  // odd element offset of every base pointer
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> hq(lq.elems + off), hk(lk.elems + off), hv(lk.elems + off), ho(lq.elems + off),
      hdo(lq.elems + off);
  for (auto* v : {&hq, &hdo}) for (auto& x : *v) x = to_bits(nd(rng), t);
  for (auto* v : {&hk, &hv}) for (auto& x : *v) x = to_bits(nd(rng), t);
  std::vector<int64_t> qpos(size_t(B) * Sq), kpos(size_t(B) * Sk);
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < Sq; ++s) qpos[size_t(b) * Sq + s] = s + 3 * b + 5;  // per-batch offsets
    for (int s = 0; s < Sk; ++s) kpos[size_t(b) * Sk + s] = s;
  }
  auto val = [&](const std::vector<uint16_t>& v, const Strides& st, int b, int s, int h, int e) {
    return double(from_bits(v[off + at(st, b, s, h) + e], t));
  };

  // Reference forward (out rounded to dtype, as a forward would hand it over) and backward.
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> rdq(size_t(B) * Sq * Hq * D, 0.0), rdk(size_t(B) * Sk * Hkv * D, 0.0),
      rdv(size_t(B) * Sk * Hkv * D, 0.0);
  std::vector<float> lse(size_t(B) * Hq * Sq);
  auto ridx = [&](int b, int s, int h, int H, int S) { return ((size_t(b) * S + s) * H + h) * D; };
  std::vector<uint16_t> hq_enc(hq);  // q encoded and rounded to T (the --sm90 Q pre-pass)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < Hq; ++h) {
      const int kvh = h / group;
      std::vector<double> qe(size_t(Sq) * D), ke(size_t(Sk) * D);
      for (int i = 0; i < Sq; ++i) {
        for (int e = 0; e < D; ++e) qe[size_t(i) * D + e] = val(hq, lq.st, b, i, h, e);
        encode_row(&qe[size_t(i) * D], D, qpos[size_t(b) * Sq + i], c, rot_dim, false);
        for (int e = 0; e < D; ++e) hq_enc[off + at(lq.st, b, i, h) + e] = to_bits(float(qe[size_t(i) * D + e]), t);
      }
      for (int j = 0; j < Sk; ++j) {
        for (int e = 0; e < D; ++e) ke[size_t(j) * D + e] = val(hk, lk.st, b, j, kvh, e);
        encode_row(&ke[size_t(j) * D], D, kpos[size_t(b) * Sk + j], c, rot_dim, false);
      }
      std::vector<double> pr(Sk), dp(Sk), dcap(Sk, 1.0), dqe(D), o(D);
      for (int i = 0; i < Sq; ++i) {
        double m = -INFINITY;
        for (int j = 0; j < Sk; ++j) {
          double s = 0;
          for (int e = 0; e < D; ++e) s += qe[size_t(i) * D + e] * ke[size_t(j) * D + e];
          s *= scale;
          if (c.softcap > 0) {  // s = cap tanh(s / cap); d(capped)/d(scaled) = 1 - tanh^2
            const double th = std::tanh(s / c.softcap);
            s = c.softcap * th;
            dcap[j] = 1 - th * th;
          }
          if (c.alibi) s -= alibi_slope(b, h, Hq) * std::fabs(double(i) + Sk - Sq - j);
          pr[j] = visible(i, j, c) ? s : -INFINITY;
          m = std::max(m, pr[j]);
        }
        double l = 0;
        for (int j = 0; j < Sk; ++j) l += m == -INFINITY ? 0.0 : std::exp(pr[j] - m);
        lse[(size_t(b) * Hq + h) * Sq + i] = l == 0 ? -INFINITY : float(m + std::log(l));
        for (int j = 0; j < Sk; ++j) pr[j] = l == 0 ? 0.0 : std::exp(pr[j] - m) / l;
        std::fill(o.begin(), o.end(), 0.0);
        for (int j = 0; j < Sk; ++j)
          for (int e = 0; e < D; ++e) o[e] += pr[j] * val(hv, lk.st, b, j, kvh, e);
        double delta = 0;
        for (int e = 0; e < D; ++e) {
          ho[off + at(lq.st, b, i, h) + e] = to_bits(float(o[e]), t);
          delta += val(hdo, lq.st, b, i, h, e) * o[e];
        }
        for (int j = 0; j < Sk; ++j) {
          double s = 0;
          for (int e = 0; e < D; ++e) s += val(hdo, lq.st, b, i, h, e) * val(hv, lk.st, b, j, kvh, e);
          dp[j] = pr[j] * (s - delta) * dcap[j];  // dS w.r.t. the scaled scores
        }
        std::fill(dqe.begin(), dqe.end(), 0.0);
        for (int j = 0; j < Sk; ++j) {
          if (pr[j] == 0) continue;
          for (int e = 0; e < D; ++e) {
            dqe[e] += scale * dp[j] * ke[size_t(j) * D + e];
            rdk[ridx(b, j, kvh, Hkv, Sk) + e] += scale * dp[j] * qe[size_t(i) * D + e];
            rdv[ridx(b, j, kvh, Hkv, Sk) + e] += pr[j] * val(hdo, lq.st, b, i, h, e);
          }
        }
        for (int e = 0; e < D; ++e) rdq[ridx(b, i, h, Hq, Sq) + e] = dqe[e];  // w.r.t. the encoded q (inverse below)
      }
    }
  }
  // The reference gradients w.r.t. the user's q, k: the encoding's inverse.
  for (int b = 0; b < B; ++b) {
    for (int i = 0; i < Sq; ++i)
      for (int h = 0; h < Hq; ++h) encode_row(&rdq[ridx(b, i, h, Hq, Sq)], D, qpos[size_t(b) * Sq + i], c, rot_dim, true);
    for (int j = 0; j < Sk; ++j)
      for (int h = 0; h < Hkv; ++h) encode_row(&rdk[ridx(b, j, h, Hkv, Sk)], D, kpos[size_t(b) * Sk + j], c, rot_dim, true);
  }

  // Device buffers. Gradients: NaN-poisoned (0xffff), `guard` sentinel elements before and after.
  const size_t guard = 256;
  auto upload = [&](const std::vector<uint16_t>& h) {
    uint16_t* d;
    CK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * 2));
    CK(cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    return d;
  };
  auto grad_buffer = [&](size_t elems) {
    uint16_t* d;
    CK(cudaMalloc(&d, (elems + 2 * guard) * 2));
    CK(cudaMemset(d, 0xff, (elems + 2 * guard) * 2));
    CK(cudaMemset(d, 0x7f, guard * 2));
    CK(cudaMemset(d + guard + elems, 0x7f, guard * 2));
    return d;
  };
  uint16_t *dq_in = upload(hq), *dk_in = upload(hk), *dv_in = upload(hv), *do_in = upload(ho),
           *ddo_in = upload(hdo);
  uint16_t* gq = grad_buffer(lq.elems + off);
  uint16_t* gk = grad_buffer(lk.elems + off);
  uint16_t* gv = grad_buffer(lk.elems + off);
  float *dlse, *ddelta;
  int64_t *dqpos, *dkpos;
  CK(cudaMalloc(&dlse, std::max<size_t>(lse.size(), 1) * 4));
  CK(cudaMalloc(&ddelta, std::max<size_t>(lse.size(), 1) * 4));
  CK(cudaMemcpy(dlse, lse.data(), lse.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&dqpos, std::max<size_t>(qpos.size(), 1) * 8));
  CK(cudaMalloc(&dkpos, std::max<size_t>(kpos.size(), 1) * 8));
  CK(cudaMemcpy(dqpos, qpos.data(), qpos.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dkpos, kpos.data(), kpos.size() * 8, cudaMemcpyHostToDevice));

  AttentionParams p;
  p.dtype = t;
  p.batch = B, p.seqlen_q = Sq, p.seqlen_k = Sk, p.nheads_q = Hq, p.nheads_kv = Hkv, p.head_dim = D;
  p.softmax_scale = float(scale);
  p.window_left = c.wl, p.window_right = c.wr;
  p.q = dq_in + off, p.k = dk_in + off, p.v = dv_in + off, p.out = do_in + off, p.dout = ddo_in + off;
  p.lse = dlse, p.delta = ddelta;
  p.q_strides = p.out_strides = p.dout_strides = p.dq_strides = lq.st;
  p.k_strides = p.v_strides = p.dk_strides = p.dv_strides = lk.st;
  p.dq = gq + guard + off, p.dk = gk + guard + off, p.dv = gv + guard + off;
  p.pe.kind = c.pe;
  p.pe.dim = c.pe == 1 ? rot_dim : D;
  p.pe.interleaved = c.interleaved;
  p.pe.log2_base = float(std::log2(10000.0));
  p.pe.scale = 0.5f;
  p.pe.q_pos = dqpos, p.pe.q_pos_stride_b = Sq, p.pe.q_pos_stride_s = 1;
  p.pe.k_pos = dkpos, p.pe.k_pos_stride_b = Sk, p.pe.k_pos_stride_s = 1;
  p.mods.softcap = c.softcap;
  float* dslopes = nullptr;
  if (c.alibi) {
    std::vector<float> slopes(size_t(B) * Hq);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq; ++h) slopes[size_t(b) * Hq + h] = float(alibi_slope(b, h, Hq));
    CK(cudaMalloc(&dslopes, slopes.size() * 4));
    CK(cudaMemcpy(dslopes, slopes.data(), slopes.size() * 4, cudaMemcpyHostToDevice));
    p.mods.alibi_slopes = dslopes, p.mods.alibi_stride_b = Hq, p.mods.alibi_stride_h = 1;
  }
  // --sm90: the Hopper context, the fp32 dQ accumulator (zeroed, contiguous bshd), and, when the route is
  // open and the call has an encoding, q pre-encoded (pe.q_encoded) as the backend hands it over.
  float* dq_accum = nullptr;
  if (sm90_mode) {
    const size_t n = size_t(B) * Sq * Hq * D;
    CK(cudaMalloc(&dq_accum, std::max<size_t>(n, 1) * 4));
    CK(cudaMemset(dq_accum, 0, std::max<size_t>(n, 1) * 4));
    p.dq_accum = dq_accum;
    p.dq_accum_strides = Strides{int64_t(Sq) * Hq * D, int64_t(Hq) * D, D};
    if (c.pe != 0 && hopper::sm90_backward_route(p, g_sm90, false).empty()) {
      CK(cudaMemcpy(dq_in, hq_enc.data(), hq_enc.size() * 2, cudaMemcpyHostToDevice));
      p.pe.q_encoded = 1;
    }
  }
  const bool hopper_ran = hopper::sm90_backward_takes(p, g_sm90, false) && B > 0 && Hq > 0 && Sq > 0 && Sk > 0;
  g_sm90_cases += hopper_ran;
  std::printf("  %s\n", hopper_ran ? "[sm90]" : "[mma.sync]");
  try {
    run_attention_backward(p, 0, g_sm90, false);
  } catch (const std::exception& e) {
    std::printf("  launch threw: %s\n", e.what());
    return false;
  }
  CK(cudaDeviceSynchronize());

  bool ok = true;
  auto check = [&](const char* name, uint16_t* dev, size_t elems, const Strides& st, int S, int H,
                   const std::vector<double>& ref) {
    std::vector<uint16_t> h(elems + 2 * guard);
    CK(cudaMemcpy(h.data(), dev, h.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t g = 0; g < guard; ++g) {
      if (h[g] != 0x7f7f || h[guard + elems + g] != 0x7f7f) {
        std::printf("  %s: guard element overwritten\n", name);
        ok = false;
        break;
      }
    }
    double max_ref = 0, max_err = 0;
    for (double r : ref) max_ref = std::max(max_ref, std::fabs(r));
    for (int b = 0; b < B; ++b)
      for (int s = 0; s < S; ++s)
        for (int hh = 0; hh < H; ++hh)
          for (int e = 0; e < D; ++e) {
            const double got = from_bits(h[guard + off + at(st, b, s, hh) + e], t);
            const double err = std::fabs(got - ref[ridx(b, s, hh, H, S) + e]);
            max_err = std::isnan(got) ? INFINITY : std::max(max_err, err);
          }
    // Loose on purpose (fp16/bf16 storage + recomputation): layout or fragment bugs give O(1).
    const double tol = (t == DType::kFloat16 ? 1e-2 : 4e-2) * std::max(1.0, max_ref);
    const bool good = max_err <= tol;
    std::printf("  %s max|ref| %.3g err %.3g tol %.3g%s\n", name, max_ref, max_err, tol,
                good ? "" : "  FAIL");
    ok = ok && good;
  };
  check("dq", gq, lq.elems + off, lq.st, Sq, Hq, rdq);
  check("dk", gk, lk.elems + off, lk.st, Sk, Hkv, rdk);
  check("dv", gv, lk.elems + off, lk.st, Sk, Hkv, rdv);
  for (void* ptr : {(void*)dq_in, (void*)dk_in, (void*)dv_in, (void*)do_in, (void*)ddo_in, (void*)gq,
                    (void*)gk, (void*)gv, (void*)dlse, (void*)ddelta, (void*)dqpos, (void*)dkpos})
    CK(cudaFree(ptr));
  if (dslopes) CK(cudaFree(dslopes));
  if (dq_accum) CK(cudaFree(dq_accum));
  return ok;
}

int main(int argc, char** argv) {
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--sm90") == 0) {
      g_sm90 = sm90_selftest_context("backward");
    } else {
      std::printf("usage: %s [--sm90]\n", argv[0]);
      return 2;
    }
  }
  const DType f16 = DType::kFloat16, bf16 = DType::kBFloat16;
  // batch, sq, sk, hq, hkv, d, dtype, wl, wr, bhsd, pe, rot_dim, interleaved, misaligned
  const std::vector<Case> cases = {
      {1, 64, 64, 1, 1, 64, f16, -1, -1, false, 0, 0, 0, false},      // one tile each way
      {2, 77, 131, 4, 2, 64, f16, -1, 0, false, 0, 0, 0, false},     // causal, sq < sk, GQA, ragged
      {1, 150, 40, 2, 1, 128, bf16, -1, 0, true, 0, 0, 0, false},    // causal sq > sk: empty rows
      {1, 200, 200, 2, 2, 32, f16, 17, 5, false, 0, 0, 0, false},    // sliding window
      {1, 90, 70, 3, 1, 96, bf16, -1, -1, false, 0, 0, 0, false},    // MQA, head_dim 96
      {1, 100, 120, 2, 1, 256, f16, -1, 0, false, 0, 0, 0, false},   // head_dim 256 (split columns)
      {1, 96, 96, 2, 1, 256, bf16, 40, -1, true, 0, 0, 0, false},    // head_dim 256, left window
      {2, 70, 90, 2, 2, 64, f16, -1, 0, false, 1, 0, 0, false},      // rotary (NeoX)
      {1, 70, 90, 2, 1, 128, bf16, -1, -1, false, 1, 64, 1, false},  // partial interleaved rotary
      {1, 65, 65, 1, 1, 64, f16, -1, 0, true, 2, 0, 0, false},       // sinusoidal
      {1, 33, 47, 2, 1, 64, f16, -1, 0, false, 1, 0, 0, true},       // misaligned strides/pointers
      {1, 0, 50, 2, 1, 64, f16, -1, -1, false, 0, 0, 0, false},      // seqlen_q 0: dk = dv = 0
      {1, 40, 0, 2, 1, 64, bf16, -1, -1, false, 0, 0, 0, false},     // seqlen_k 0: dq = 0
      {1, 30, 200, 2, 2, 32, f16, 3, 0, false, 0, 0, 0, false},      // key blocks seen by no query
      // Score mods (softcap, ALiBi): every head dim's tiles, GQA (dK/dV summed over heads with their
      // own slopes), masks, sq != sk, rotary on top.
      {2, 77, 131, 4, 2, 64, f16, -1, 0, false, 0, 0, 0, false, 30.f},          // softcap, causal
      {1, 90, 70, 4, 2, 128, bf16, -1, -1, false, 0, 0, 0, false, 0.f, true},   // ALiBi
      {2, 64, 100, 2, 1, 32, f16, 17, 5, false, 0, 0, 0, false, 5.f, true},     // both, window
      {1, 70, 90, 2, 1, 96, bf16, -1, 0, false, 1, 0, 0, false, 20.f, true},    // both + rotary
      {1, 100, 120, 2, 1, 256, f16, -1, 0, false, 0, 0, 0, false, 10.f, true},  // head_dim 256
      // Several key blocks (128) and query tiles (64 / 128) per CTA, for the Hopper backward's loops (its
      // ring slots wrap, dS^T buffers alternate, GQA members follow each other).
      {2, 300, 520, 4, 2, 128, bf16, -1, 0, false, 0, 0, 0, false},    // causal, GQA, ragged tails
      {1, 520, 300, 2, 2, 64, f16, -1, -1, false, 0, 0, 0, false},     // sq > sk
      {1, 384, 384, 6, 2, 64, bf16, 100, 0, true, 0, 0, 0, false},     // sliding window, bhsd
      {1, 260, 260, 2, 1, 128, f16, -1, 0, false, 1, 0, 0, false},     // rotary (pre-encoded on Hopper)
      {1, 200, 330, 2, 2, 128, bf16, -1, -1, false, 2, 0, 0, false},   // sinusoidal
      {2, 150, 290, 4, 2, 256, bf16, -1, 0, false, 0, 0, 0, false},    // head_dim 256 (Hopper: channel split), GQA
      {1, 200, 200, 2, 1, 256, f16, 60, 0, false, 1, 0, 0, false},     // head_dim 256, window, rotary
  };
  std::mt19937 rng(1234);
  int failed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::printf("case %zu: b%d sq%d sk%d hq%d hkv%d d%d %s window(%d,%d) %s pe%d rot%d inter%d cap%g alibi%d%s\n",
                i, c.batch, c.sq, c.sk, c.hq, c.hkv, c.d, c.dtype == f16 ? "fp16" : "bf16", c.wl, c.wr,
                c.bhsd ? "bhsd" : "bshd", c.pe, c.rot_dim, c.interleaved, c.softcap, int(c.alibi),
                c.misaligned ? " misaligned" : "");
    if (!run_case(c, rng)) ++failed;
  }
  if (g_sm90.requested) {
    std::printf("%d / %zu cases ran attention_bwd_sm90_kernel\n", g_sm90_cases, cases.size());
    if (g_sm90_cases == 0) ++failed;  // --sm90 proved nothing
  }
  std::printf(failed ? "%d case(s) FAILED\n" : "all cases passed\n", failed);
  return failed ? 1 : 0;
}
