// Standalone GPU self-test of run_attention_forward, no torch: random inputs, a float64 host
// reference of the same semantics (flashattn_py/semantics/masks.py, positional.py), strided layouts, guard
// bytes around the output, seqused_k and packed (cu_seqlens) batches, then a few timings. For a GPU
// machine without the Python stack (run_attention_forward calls the Hopper forward, attention_fwd_sm90.cu,
// so both files are linked; its kernel body is in the sm_90a pass only: an H100 / H200 build names
// sm_90a, not sm_90, whose SASS runs the mma.sync kernels as well):
//   nvcc -std=c++17 -O3 --use_fast_math -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
//        -Icsrc csrc/attention_fwd.cu csrc/attention_fwd_sm90.cu csrc/tests/attention_fwd_selftest.cu \
//        -o build/fwd_selftest
//   build/fwd_selftest [--sm90] [--no-timing | --timing-only]   (exit status 0 = every case within tolerance)
// --sm90: every call carries the Hopper context (requested, compiled, this device's compute capability),
// so hopper/route.h sends the calls it takes to attention_fwd_sm90_kernel; cases with a positional
// encoding upload K pre-encoded on the host (pe.k_encoded = 1, as the backend's K pre-pass) while the
// reference still encodes the raw K. Each line is tagged [sm90] or [mma.sync]: the kernel that ran.
// Exit status 2 without an sm_90 device. Timings then time the same cases, so running the binary with
// and without --sm90 compares the two kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../launch.h"
#include "selftest_util.h"

using namespace flashattn;

struct Case {
  int batch, sq, sk, hq, hkv, d;
  DType dtype;
  int wl, wr;          // window, -1 unbounded (causal: wr = 0)
  bool bhsd;           // memory layout of q/k/v/out
  int pe;              // 0 none, 1 rotary, 2 sinusoidal
  int rot_dim;         // rotary dim (0: d)
  int interleaved;
  bool tables;         // rotary cos/sin tables
  int q_offset;        // position offset of q rows (k rows start at 0)
  int user_dim;        // sinusoidal channel count (<= d; < d emulates padded head dims)
  float softcap = 0.f;  // score mods (csrc/score_mods.h): softcap > 0, ALiBi slopes per (batch, head)
  bool alibi = false;
  bool seqused = false;  // dense batches with seqused_k: sequence b attends to its first used_k(sk, b) keys
  bool packed = false;   // packed batch (cu_seqlens_q/k, bshd): sequence b has packed_len(sq/sk, b) rows
};

// Lengths of the per-sequence cases: sequence 0 has the case's sq / sk (the longest, as params.h
// wants of seqlen_q / seqlen_k), the later ones fewer, down to no keys at all for seqused_k.
static int used_k(int sk, int b) { return std::max(0, sk - 97 * b); }
static int packed_len(int s, int step, int b) { return std::max(1, s - step * b); }

// --sm90: the Hopper context of every run_attention_forward call (requested and compiled, the device's
// compute capability); the default one (not requested) keeps every call on the mma.sync kernels.
static hopper::Sm90Context g_sm90;

// Whether run_attention_forward sends p to the Hopper kernel: hopper/route.h's rule, except for the
// calls with nothing to stream, which it leaves to the mma.sync path (attention_fwd_sm90.cu).
static bool sm90_runs(const AttentionParams& p) {
  return hopper::sm90_forward_takes(p, g_sm90) && p.batch > 0 && p.seqlen_q > 0 && p.nheads_q > 0 && p.seqlen_k > 0;
}
static const char* kernel_tag(const AttentionParams& p) { return sm90_runs(p) ? "[sm90]    " : "[mma.sync]"; }
static int g_sm90_cases = 0;  // checked cases the Hopper kernel ran

// ALiBi slope of (batch b, head h): the usual 2^(-8 (h + 1) / H), varied per batch so a kernel that
// reads the wrong batch's slope fails.
static float alibi_slope(int b, int h, int H) { return float(std::exp2(-8.0 * (h + 1) / H) * (1.0 + 0.25 * b)); }

static float round_to(float x, DType t) { return from_bits(to_bits(x, t), t); }

// Element strides for (batch, seq, head) of a (b, s, h, d) tensor in bshd or bhsd memory order.
static Strides strides_of(int s, int h, int d, bool bhsd) {
  Strides st;
  if (bhsd) {
    st.seq = d, st.head = int64_t(s) * d, st.batch = int64_t(h) * s * d;
  } else {
    st.seq = int64_t(h) * d, st.head = d, st.batch = int64_t(s) * h * d;
  }
  return st;
}

// Encode one row x[0..d) at position p (reference of positional.cuh, double math, one rounding).
// The angle is the exact p * inv_freq (inv_freq the kernel's fp32 exp2f value), not the fp32 product
// fl(p * inv_freq): the kernel rotates from row to row along exact angles (rotary_angles.h), as
// positional.py's float64 reference does; fl() would differ by up to ulp(angle) / 2.
static void encode_row(float* x, int d, int64_t p, const Case& c, double log2_base,
                       const std::vector<float>& cos_t, const std::vector<float>& sin_t, DType t) {
  if (c.pe == 1) {
    const int dim = c.rot_dim, half = dim / 2;
    for (int i = 0; i < half; ++i) {
      double co, si;
      if (c.tables) {
        co = cos_t[p * half + i], si = sin_t[p * half + i];
      } else {
        const float inv = exp2f(-(float(2 * i) / float(dim)) * float(log2_base));  // as the kernel
        const double a = double(p) * inv;  // exact, as the kernel
        co = std::cos(a), si = std::sin(a);
      }
      const int c1 = c.interleaved ? 2 * i : i, c2 = c.interleaved ? 2 * i + 1 : i + half;
      const double x1 = x[c1], x2 = x[c2];
      x[c1] = round_to(float(x1 * co - x2 * si), t);
      x[c2] = round_to(float(x2 * co + x1 * si), t);
    }
  } else if (c.pe == 2) {
    const int dim = c.user_dim;
    for (int i = 0; i < dim / 2; ++i) {
      const float inv = exp2f(-(float(2 * i) / float(dim)) * float(log2_base));
      const double a = double(p) * inv;  // exact, as the kernel
      x[2 * i] = round_to(float(x[2 * i] * 0.5 + std::sin(a)), t);
      x[2 * i + 1] = round_to(float(x[2 * i + 1] * 0.5 + std::cos(a)), t);
    }
  }
}

static bool run_case(const Case& c, std::mt19937& rng) {
  const int B = c.batch, Sq = c.sq, Sk = c.sk, Hq = c.hq, Hkv = c.hkv, D = c.d;
  const DType t = c.dtype;
  const bool packed = c.packed;
  if (packed && c.bhsd) {
    std::printf("FAIL bad case: packed batches are bshd only\n");
    return false;
  }
  // Per sequence: rows of q (len_q), rows of k/v (len_k), keys it attends to (vis_k: seqused_k), the
  // first row in the position tensors and packed tensors (q_row0 / k_row0: b * s when dense).
  std::vector<int> len_q(B), len_k(B), vis_k(B);
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0), used(B);
  for (int b = 0; b < B; ++b) {
    len_q[b] = packed ? packed_len(Sq, 53, b) : Sq;
    len_k[b] = packed ? packed_len(Sk, 71, b) : Sk;
    vis_k[b] = used[b] = c.seqused ? used_k(Sk, b) : len_k[b];
    cu_q[b + 1] = cu_q[b] + len_q[b];
    cu_k[b + 1] = cu_k[b] + len_k[b];
  }
  const int64_t rows_q = packed ? cu_q[B] : int64_t(B) * Sq, rows_k = packed ? cu_k[B] : int64_t(B) * Sk;
  auto q_row0 = [&](int b) { return packed ? int64_t(cu_q[b]) : int64_t(b) * Sq; };
  auto k_row0 = [&](int b) { return packed ? int64_t(cu_k[b]) : int64_t(b) * Sk; };
  // A packed tensor is (total rows, heads, d): strides of one batch of total rows.
  const Strides qs = packed ? strides_of(int(rows_q), Hq, D, false) : strides_of(Sq, Hq, D, c.bhsd);
  const Strides ks = packed ? strides_of(int(rows_k), Hkv, D, false) : strides_of(Sk, Hkv, D, c.bhsd);
  auto q_base = [&](int b) { return packed ? int64_t(cu_q[b]) * qs.seq : b * qs.batch; };
  auto k_base = [&](int b) { return packed ? int64_t(cu_k[b]) * ks.seq : b * ks.batch; };
  // lse: (batch, heads, seqlen_q) when dense, (heads, total_q) when packed.
  auto lse_at = [&](int b, int h, int i) {
    return packed ? size_t(h) * rows_q + cu_q[b] + i : (size_t(b) * Hq + h) * Sq + i;
  };
  const size_t nq = size_t(rows_q) * Hq * D, nk = size_t(rows_k) * Hkv * D, nlse = size_t(rows_q) * Hq;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> hq(nq), hk(nk), hv(nk);
  for (auto& x : hq) x = to_bits(nd(rng), t);
  for (auto& x : hk) x = to_bits(nd(rng), t);
  for (auto& x : hv) x = to_bits(nd(rng), t);

  const double log2_base = std::log2(10000.0);
  const int rot_dim = c.rot_dim ? c.rot_dim : D;
  Case cc = c;
  cc.rot_dim = rot_dim;
  const int max_pos = std::max(Sq + c.q_offset, Sk) + 1;
  std::vector<float> cos_t, sin_t;
  if (c.tables) {  // a "scaled" table, deliberately unlike the computed angles
    cos_t.resize(size_t(max_pos) * rot_dim / 2), sin_t.resize(cos_t.size());
    for (int p = 0; p < max_pos; ++p)
      for (int i = 0; i < rot_dim / 2; ++i) {
        const double a = 0.37 * p / std::pow(500.0, 2.0 * i / rot_dim);
        cos_t[size_t(p) * rot_dim / 2 + i] = float(std::cos(a));
        sin_t[size_t(p) * rot_dim / 2 + i] = float(std::sin(a));
      }
  }
  // Positions (batch, seqlen) when dense, (1, total) by packed row when packed.
  std::vector<int64_t> qpos(rows_q), kpos(rows_k);
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < len_q[b]; ++s) qpos[q_row0(b) + s] = s + c.q_offset + b;  // per-batch offsets
    for (int s = 0; s < len_k[b]; ++s) kpos[k_row0(b) + s] = s;
  }
  if (c.q_offset + B + Sq > max_pos) {  // keep table lookups in range
    for (auto& p : qpos) p = std::min<int64_t>(p, max_pos - 1);
  }
  // What the kernel reads as k: the raw K, or in --sm90 mode with an encoding K encoded on the host as
  // the reference encodes it (same positions, rounded to the dtype), as the backend's K pre-pass does.
  // The reference below always encodes the raw hk itself.
  const bool k_encoded = g_sm90.requested && c.pe != int(PEKind::kNone);
  std::vector<uint16_t> hk_dev = hk;
  if (k_encoded) {
    std::vector<float> row(D);
    for (int b = 0; b < B; ++b)
      for (int kh = 0; kh < Hkv; ++kh)
        for (int j = 0; j < len_k[b]; ++j) {
          const int64_t at = k_base(b) + j * ks.seq + kh * ks.head;
          for (int e = 0; e < D; ++e) row[e] = from_bits(hk[at + e], t);
          encode_row(row.data(), D, kpos[k_row0(b) + j], cc, log2_base, cos_t, sin_t, t);
          for (int e = 0; e < D; ++e) hk_dev[at + e] = to_bits(row[e], t);
        }
  }

  // Device buffers; out gets guard space before and after, filled with a sentinel.
  const size_t guard = 4096;
  uint16_t *dq, *dk, *dv, *dout;
  float *dlse, *dcos = nullptr, *dsin = nullptr;
  int64_t *dqpos, *dkpos;
  int32_t *dcu_q = nullptr, *dcu_k = nullptr, *dused = nullptr;
  float* dslopes = nullptr;
  CK(cudaMalloc(&dq, std::max<size_t>(nq, 1) * 2));
  CK(cudaMalloc(&dk, std::max<size_t>(nk, 1) * 2));
  CK(cudaMalloc(&dv, std::max<size_t>(nk, 1) * 2));
  CK(cudaMalloc(&dout, (nq + 2 * guard) * 2));
  CK(cudaMalloc(&dlse, (nlse + 64) * 4));
  CK(cudaMalloc(&dqpos, std::max<size_t>(qpos.size(), 1) * 8));
  CK(cudaMalloc(&dkpos, std::max<size_t>(kpos.size(), 1) * 8));
  CK(cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, hk_dev.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dqpos, qpos.data(), qpos.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dkpos, kpos.data(), kpos.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemset(dout, 0x7f, (nq + 2 * guard) * 2));  // 0x7f7f: a large finite sentinel
  CK(cudaMemset(dlse, 0x7f, (nlse + 64) * 4));
  if (c.tables) {
    CK(cudaMalloc(&dcos, cos_t.size() * 4));
    CK(cudaMalloc(&dsin, sin_t.size() * 4));
    CK(cudaMemcpy(dcos, cos_t.data(), cos_t.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dsin, sin_t.data(), sin_t.size() * 4, cudaMemcpyHostToDevice));
  }
  if (packed) {
    CK(cudaMalloc(&dcu_q, cu_q.size() * 4));
    CK(cudaMalloc(&dcu_k, cu_k.size() * 4));
    CK(cudaMemcpy(dcu_q, cu_q.data(), cu_q.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dcu_k, cu_k.data(), cu_k.size() * 4, cudaMemcpyHostToDevice));
  }
  if (c.seqused) {
    CK(cudaMalloc(&dused, used.size() * 4));
    CK(cudaMemcpy(dused, used.data(), used.size() * 4, cudaMemcpyHostToDevice));
  }

  AttentionParams p;
  p.dtype = t;
  p.batch = B, p.seqlen_q = Sq, p.seqlen_k = Sk, p.nheads_q = Hq, p.nheads_kv = Hkv, p.head_dim = D;
  p.softmax_scale = float(1.0 / std::sqrt(double(D)));
  p.window_left = c.wl, p.window_right = c.wr;
  p.q = dq, p.k = dk, p.v = dv, p.out = dout + guard, p.lse = dlse;
  p.q_strides = qs, p.k_strides = ks, p.v_strides = ks, p.out_strides = qs;
  if (packed) {
    p.cu_seqlens_q = dcu_q, p.cu_seqlens_k = dcu_k;
    p.total_q = int(rows_q), p.total_k = int(rows_k);
  }
  p.seqused_k = dused;
  p.pe.kind = c.pe;
  p.pe.dim = c.pe == 1 ? rot_dim : c.user_dim;
  p.pe.interleaved = c.interleaved;
  p.pe.log2_base = float(log2_base);
  p.pe.scale = 0.5f;
  p.pe.cos = dcos, p.pe.sin = dsin, p.pe.table_stride = rot_dim / 2;
  p.pe.q_pos = dqpos, p.pe.q_pos_stride_b = packed ? 0 : Sq, p.pe.q_pos_stride_s = 1;
  p.pe.k_pos = dkpos, p.pe.k_pos_stride_b = packed ? 0 : Sk, p.pe.k_pos_stride_s = 1;
  p.pe.k_encoded = k_encoded;
  p.mods.softcap = c.softcap;
  std::vector<float> slopes(size_t(B) * Hq);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h) slopes[size_t(b) * Hq + h] = alibi_slope(b, h, Hq);
  if (c.alibi) {
    CK(cudaMalloc(&dslopes, slopes.size() * 4));
    CK(cudaMemcpy(dslopes, slopes.data(), slopes.size() * 4, cudaMemcpyHostToDevice));
    p.mods.alibi_slopes = dslopes, p.mods.alibi_stride_b = Hq, p.mods.alibi_stride_h = 1;
  }
  const char* tag = kernel_tag(p);
  g_sm90_cases += sm90_runs(p);
  try {
    run_attention_forward(p, 0, g_sm90);
  } catch (const std::exception& e) {
    std::printf("  launch threw: %s\n", e.what());
    return false;
  }
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> hout(nq + 2 * guard);
  std::vector<float> hlse(nlse + 64);
  CK(cudaMemcpy(hout.data(), dout, hout.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hlse.data(), dlse, hlse.size() * 4, cudaMemcpyDeviceToHost));

  // Reference, per sequence: its own lengths, the causal diagonal bottom-right of them (query i at key
  // i + vis_k - len_q), keys past seqused_k invisible.
  double max_err = 0, max_ref = 0, max_lse_err = 0;
  bool ok = true;
  const int group = Hq / Hkv;
  std::vector<float> qrow(D), kenc(size_t(Sk) * D), vf(size_t(Sk) * D);
  std::vector<double> sc(Sk), o(D);
  for (int b = 0; b < B; ++b) {
    const int nqb = len_q[b], nkb = vis_k[b];
    for (int h = 0; h < Hq; ++h) {
      const int kh = h / group;
      for (int j = 0; j < nkb; ++j) {
        const int64_t at = k_base(b) + j * ks.seq + kh * ks.head;
        for (int e = 0; e < D; ++e) kenc[size_t(j) * D + e] = from_bits(hk[at + e], t);  // the raw K
        for (int e = 0; e < D; ++e) vf[size_t(j) * D + e] = from_bits(hv[at + e], t);
        encode_row(&kenc[size_t(j) * D], D, kpos[k_row0(b) + j], cc, log2_base, cos_t, sin_t, t);
      }
      for (int i = 0; i < nqb; ++i) {
        const int64_t qat = q_base(b) + i * qs.seq + h * qs.head;
        for (int e = 0; e < D; ++e) qrow[e] = from_bits(hq[qat + e], t);
        encode_row(qrow.data(), D, qpos[q_row0(b) + i], cc, log2_base, cos_t, sin_t, t);
        const int64_t aligned = int64_t(i) + nkb - nqb;
        double mx = -INFINITY;
        for (int j = 0; j < nkb; ++j) {
          const bool vis = (c.wr < 0 || j <= aligned + c.wr) && (c.wl < 0 || j >= aligned - c.wl);
          double s = -INFINITY;
          if (vis) {
            s = 0;
            for (int e = 0; e < D; ++e) s += double(qrow[e]) * kenc[size_t(j) * D + e];
            s *= p.softmax_scale;
            if (c.softcap > 0) s = c.softcap * std::tanh(s / c.softcap);
            if (c.alibi) s -= slopes[size_t(b) * Hq + h] * std::fabs(double(aligned - j));
          }
          sc[j] = s;
          mx = std::max(mx, s);
        }
        double l = 0;
        for (int j = 0; j < nkb; ++j) l += mx == -INFINITY ? 0 : std::exp(sc[j] - mx);
        const double lse_ref = l > 0 ? mx + std::log(l) : -INFINITY;
        const float lse_got = hlse[lse_at(b, h, i)];
        if (std::isinf(lse_ref) ? !(std::isinf(lse_got) && lse_got < 0) : !(std::fabs(lse_got - lse_ref) <= 2e-3 * std::max(1.0, std::fabs(lse_ref)))) {
          if (ok) std::printf("  lse mismatch b%d h%d i%d: got %g want %g\n", b, h, i, lse_got, lse_ref);
          ok = false;
        }
        if (!std::isinf(lse_ref)) max_lse_err = std::max(max_lse_err, std::fabs(lse_got - lse_ref));
        std::fill(o.begin(), o.end(), 0.0);
        if (l > 0)
          for (int j = 0; j < nkb; ++j)
            if (sc[j] != -INFINITY) {
              const double w = std::exp(sc[j] - mx) / l;
              for (int e = 0; e < D; ++e) o[e] += w * vf[size_t(j) * D + e];
            }
        for (int e = 0; e < D; ++e) {
          const float got = from_bits(hout[guard + qat + e], t);
          if (!std::isfinite(got)) {
            if (ok) std::printf("  non-finite out b%d h%d i%d e%d: %g\n", b, h, i, e, got);
            ok = false;
          }
          max_err = std::max(max_err, std::fabs(got - o[e]));
          max_ref = std::max(max_ref, std::fabs(o[e]));
        }
      }
    }
  }
  for (size_t g = 0; g < guard; ++g)
    if (hout[g] != 0x7f7f || hout[guard + nq + g] != 0x7f7f) {
      std::printf("  write outside out (guard %zu)\n", g);
      ok = false;
      break;
    }
  for (size_t g = nlse; g < hlse.size(); ++g)
    if (std::memcmp(&hlse[g], "\x7f\x7f\x7f\x7f", 4) != 0) {
      std::printf("  write past lse end\n");
      ok = false;
      break;
    }
  const double tol = (t == DType::kFloat16 ? 4e-3 : 3e-2) * std::max(1.0, max_ref);
  if (max_err > tol) ok = false;
  std::printf("%s %s b%d sq%d sk%d hq%d hkv%d d%d %s win(%d,%d) %s%s pe%d%s rd%d il%d tab%d off%d ud%d cap%g alibi%d: "
              "out err %.3g (tol %.3g) lse err %.3g\n",
              ok ? "ok  " : "FAIL", tag, B, Sq, Sk, Hq, Hkv, D, t == DType::kFloat16 ? "fp16" : "bf16", c.wl, c.wr,
              packed ? "packed" : c.bhsd ? "bhsd" : "bshd", c.seqused ? " seqused_k" : "", c.pe,
              k_encoded ? " k-encoded" : "", rot_dim, c.interleaved, int(c.tables), c.q_offset, c.user_dim,
              c.softcap, int(c.alibi), max_err, tol, max_lse_err);
  cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(dqpos), cudaFree(dkpos);
  if (dcos) cudaFree(dcos), cudaFree(dsin);
  if (dslopes) cudaFree(dslopes);
  if (dcu_q) cudaFree(dcu_q), cudaFree(dcu_k);
  if (dused) cudaFree(dused);
  return ok;
}

// Tensors over 2^31 elements: batch 1 lives 2^31 + 4096 elements after batch 0 and holds the same
// data, so its output and lse must equal batch 0's bit for bit (an int32 offset would read elsewhere).
static bool big_offset_check() {
  const int S = 100, H = 2, D = 64;
  const int64_t bstride = (int64_t(1) << 31) + 4096;
  const size_t n = size_t(bstride) + size_t(S) * H * D;
  const DType t = DType::kBFloat16;
  uint16_t *q, *k, *v, *o;
  float* lse;
  if (cudaMalloc(&q, n * 2) != cudaSuccess || cudaMalloc(&k, n * 2) != cudaSuccess ||
      cudaMalloc(&v, n * 2) != cudaSuccess || cudaMalloc(&o, n * 2) != cudaSuccess) {
    std::printf("skip big-offset check: not enough GPU memory\n");
    cudaGetLastError();
    return true;
  }
  CK(cudaMalloc(&lse, size_t(2) * H * S * 4));
  std::vector<uint16_t> h(size_t(S) * H * D);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (uint16_t* buf : {q, k, v}) {
    for (auto& x : h) x = to_bits(nd(rng), t);
    CK(cudaMemcpy(buf, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(buf + bstride, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  AttentionParams p;
  p.dtype = t, p.batch = 2, p.seqlen_q = S, p.seqlen_k = S, p.nheads_q = H, p.nheads_kv = H, p.head_dim = D;
  p.softmax_scale = 0.125f, p.window_right = 0;
  p.q = q, p.k = k, p.v = v, p.out = o, p.lse = lse;
  Strides st;
  st.batch = bstride, st.seq = int64_t(H) * D, st.head = D;
  p.q_strides = p.k_strides = p.v_strides = p.out_strides = st;
  const char* tag = kernel_tag(p);
  g_sm90_cases += sm90_runs(p);
  run_attention_forward(p, 0, g_sm90);
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> o0(h.size()), o1(h.size());
  std::vector<float> l(size_t(2) * H * S);
  CK(cudaMemcpy(o0.data(), o, h.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(o1.data(), o + bstride, h.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(l.data(), lse, l.size() * 4, cudaMemcpyDeviceToHost));
  const bool ok = o0 == o1 && std::memcmp(l.data(), l.data() + H * S, size_t(H) * S * 4) == 0;
  std::printf("%s %s big offsets (batch stride 2^31 + 4096 elements)\n", ok ? "ok  " : "FAIL", tag);
  cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse);
  return ok;
}

static void time_case(int B, int H, int S, int D, DType t, bool causal, int pe, float softcap = 0.f,
                      bool alibi = false) {
  const size_t n = size_t(B) * S * H * D;
  void *q, *k, *v, *o;
  float* lse;
  int64_t* pos;
  CK(cudaMalloc(&q, n * 2));
  CK(cudaMalloc(&k, n * 2));
  CK(cudaMalloc(&v, n * 2));
  CK(cudaMalloc(&o, n * 2));
  CK(cudaMalloc(&lse, size_t(B) * H * S * 4));
  CK(cudaMalloc(&pos, size_t(S) * 8));
  std::vector<uint16_t> h(n);
  std::vector<int64_t> hp(S);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : h) x = to_bits(nd(rng), t);
  for (int s = 0; s < S; ++s) hp[s] = s;
  CK(cudaMemcpy(q, h.data(), n * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(k, h.data(), n * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(v, h.data(), n * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(pos, hp.data(), S * 8, cudaMemcpyHostToDevice));
  AttentionParams p;
  p.dtype = t, p.batch = B, p.seqlen_q = S, p.seqlen_k = S, p.nheads_q = H, p.nheads_kv = H, p.head_dim = D;
  p.softmax_scale = float(1.0 / std::sqrt(double(D)));
  p.window_right = causal ? 0 : -1;
  p.q = q, p.k = k, p.v = v, p.out = o, p.lse = lse;
  p.q_strides = p.k_strides = p.v_strides = p.out_strides = strides_of(S, H, D, false);
  p.pe.kind = pe, p.pe.dim = D, p.pe.log2_base = float(std::log2(10000.0)), p.pe.scale = 1.f;
  p.pe.q_pos = pos, p.pe.q_pos_stride_s = 1, p.pe.k_pos = pos, p.pe.k_pos_stride_s = 1;
  // --sm90: K counts as pre-encoded (its pre-pass is not timed here), so the Hopper kernel takes pe calls.
  p.pe.k_encoded = g_sm90.requested && pe != int(PEKind::kNone);
  float* slopes = nullptr;
  p.mods.softcap = softcap;
  if (alibi) {  // one slope per head, broadcast over the batch (stride 0)
    std::vector<float> hs(H);
    for (int h = 0; h < H; ++h) hs[h] = alibi_slope(0, h, H);
    CK(cudaMalloc(&slopes, H * 4));
    CK(cudaMemcpy(slopes, hs.data(), H * 4, cudaMemcpyHostToDevice));
    p.mods.alibi_slopes = slopes, p.mods.alibi_stride_b = 0, p.mods.alibi_stride_h = 1;
  }
  const char* tag = kernel_tag(p);
  for (int i = 0; i < 3; ++i) run_attention_forward(p, 0, g_sm90);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const int iters = 20;
  CK(cudaEventRecord(e0));
  for (int i = 0; i < iters; ++i) run_attention_forward(p, 0, g_sm90);
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  ms /= iters;
  const double flops = 4.0 * B * H * double(S) * S * D * (causal ? 0.5 : 1.0);
  std::printf("time %s b%d h%d s%d d%d %s causal%d pe%d%s cap%g alibi%d: %.3f ms, %.1f TFLOP/s\n", tag, B, H, S, D,
              t == DType::kFloat16 ? "fp16" : "bf16", int(causal), pe, p.pe.k_encoded ? " k-encoded" : "", softcap,
              int(alibi), ms, flops / ms / 1e9);
  cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse), cudaFree(pos);
  if (slopes) cudaFree(slopes);
}

int main(int argc, char** argv) {
  std::mt19937 rng(1234);
  std::vector<Case> cases;
  const DType F = DType::kFloat16, BF = DType::kBFloat16;
  for (int d : {32, 64, 96, 128, 256})
    for (DType t : {F, BF}) {
      cases.push_back({2, 130, 200, 4, 2, d, t, -1, -1, false, 0, 0, 0, false, 0, d});   // tails, GQA
      cases.push_back({1, 200, 130, 2, 1, d, t, -1, 0, true, 0, 0, 0, false, 0, d});     // causal sq > sk, bhsd
      cases.push_back({1, 77, 300, 2, 2, d, t, 40, 7, false, 1, 0, 0, false, 0, d});      // window + rope neox
    }
  // Masks and edges (d 64 / 128).
  cases.push_back({2, 257, 257, 2, 2, 128, F, -1, 0, false, 0, 0, 0, false, 0, 128});   // causal square
  cases.push_back({1, 300, 64, 2, 2, 64, BF, -1, 0, false, 0, 0, 0, false, 0, 64});     // many empty rows
  cases.push_back({1, 64, 300, 2, 2, 64, F, 0, 0, false, 0, 0, 0, false, 0, 64});       // window (0,0)
  cases.push_back({1, 150, 150, 2, 2, 128, F, 5, -1, true, 0, 0, 0, false, 0, 128});    // left window only
  cases.push_back({1, 100, 0, 2, 1, 64, F, -1, -1, false, 0, 0, 0, false, 0, 64});      // seqlen_k = 0
  cases.push_back({1, 1, 513, 8, 1, 128, BF, -1, 0, false, 0, 0, 0, false, 0, 128});    // decode, MQA
  cases.push_back({3, 33, 33, 3, 3, 32, F, -1, -1, false, 0, 0, 0, false, 0, 32});
  // Positional encodings.
  cases.push_back({2, 100, 160, 2, 1, 128, F, -1, -1, false, 1, 64, 1, false, 1000, 128});  // partial gpt-j
  cases.push_back({1, 129, 129, 2, 2, 64, BF, -1, 0, false, 1, 0, 0, true, 3, 64});         // tables
  cases.push_back({1, 50, 90, 2, 2, 64, F, -1, -1, true, 1, 24, 0, false, 7, 64});          // 12 pairs, neox
  cases.push_back({1, 50, 90, 2, 2, 128, BF, 20, 3, false, 1, 0, 0, true, 0, 128});        // tables, window
  cases.push_back({1, 90, 140, 2, 2, 96, F, -1, -1, false, 2, 0, 0, false, 0, 96});         // sinusoidal
  cases.push_back({1, 90, 140, 2, 2, 96, F, -1, -1, false, 2, 0, 0, false, 0, 80});         // sinusoidal, padded d
  cases.push_back({1, 70, 70, 2, 2, 256, BF, -1, 0, false, 1, 0, 1, false, 99000, 256});    // large positions
  // Score mods (softcap, ALiBi), every head dim, with masks, GQA and sq != sk.
  for (int d : {32, 64, 96, 128, 256}) {
    cases.push_back({2, 130, 200, 4, 2, d, F, -1, -1, false, 0, 0, 0, false, 0, d, 30.f});          // softcap
    cases.push_back({2, 200, 130, 4, 2, d, BF, -1, 0, false, 0, 0, 0, false, 0, d, 0.f, true});     // ALiBi, causal
  }
  cases.push_back({1, 77, 300, 2, 1, 128, F, 40, 7, true, 1, 0, 0, false, 5, 128, 5.f, true});     // both + rope
  cases.push_back({1, 1, 513, 8, 2, 64, BF, -1, 0, false, 0, 0, 0, false, 0, 64, 50.f, true});     // decode step
  // What the Hopper forward takes (hopper/route.h), every head dim x dtype: tails that are no multiple
  // of its 128-row / 64- or 128-key tiles, both causal alignments, windows, GQA 4:1, bhsd, seqused_k
  // (down to sequences with no keys), packed batches (bottom-right causal per sequence), rotary on
  // packed rows. Without --sm90 the mma.sync kernels run them, against the same reference.
  for (int d : {64, 128, 256})
    for (DType t : {F, BF}) {
      cases.push_back({2, 300, 421, 8, 2, d, t, -1, 0, false, 0, 0, 0, false, 0, d});                  // causal sq < sk, GQA 4:1
      cases.push_back({2, 333, 190, 4, 1, d, t, -1, 0, true, 0, 0, 0, false, 0, d});                   // causal sq > sk, bhsd
      cases.push_back({1, 257, 515, 2, 2, d, t, 100, 30, false, 0, 0, 0, false, 0, d});                // window
      cases.push_back({5, 150, 200, 4, 1, d, t, -1, 0, false, 0, 0, 0, false, 0, d, 0.f, false, true});  // seqused_k
      cases.push_back({3, 281, 350, 4, 1, d, t, -1, 0, false, 0, 0, 0, false, 0, d, 0.f, false, false, true});  // packed, causal
      cases.push_back({3, 150, 260, 4, 2, d, t, -1, -1, false, 1, 0, d == 64, false, 3, d, 0.f, false, false, true});  // packed, rope
    }
  cases.push_back({2, 190, 333, 4, 1, 128, BF, 64, -1, false, 0, 0, 0, false, 0, 128, 0.f, false, false, true});  // packed, left window
  cases.push_back({2, 129, 257, 4, 4, 64, F, -1, -1, false, 2, 0, 0, false, 0, 64, 0.f, false, true});  // sinusoidal, seqused_k

  bool timing_only = false, no_timing = false;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--timing-only") == 0) {
      timing_only = true;
    } else if (std::strcmp(argv[a], "--no-timing") == 0) {
      no_timing = true;
    } else if (std::strcmp(argv[a], "--sm90") == 0) {
      g_sm90 = sm90_selftest_context("forward");
    } else {
      std::printf("usage: %s [--sm90] [--no-timing | --timing-only]\n", argv[0]);
      return 2;
    }
  }
  if (g_sm90.requested) {
    std::printf("--sm90: Hopper context on (sm_%d%d); [sm90] marks the calls attention_fwd_sm90_kernel ran\n",
                g_sm90.cc_major, g_sm90.cc_minor);
  }
  int failures = 0;
  if (!timing_only) {
    for (const Case& c : cases) failures += !run_case(c, rng);
    failures += !big_offset_check();
    if (g_sm90.requested) {
      std::printf("%d / %zu cases ran attention_fwd_sm90_kernel\n", g_sm90_cases, cases.size() + 1);
      if (g_sm90_cases == 0) failures += 1;  // --sm90 proved nothing
    }
    std::printf("%d / %zu cases failed\n", failures, cases.size() + 1);
  }
  if (no_timing) return failures != 0;
  for (int d : {64, 128, 256}) {
    time_case(4, 16, 4096, d, BF, false, 0);
    time_case(4, 16, 4096, d, BF, true, 0);
  }
  time_case(4, 16, 4096, 128, F, false, 0);
  time_case(4, 16, 4096, 96, BF, false, 0);
  time_case(16, 16, 1024, 128, BF, true, 0);
  time_case(4, 16, 4096, 128, BF, false, 1);
  time_case(4, 16, 4096, 64, BF, false, 1);
  time_case(4, 16, 4096, 128, BF, false, 0, 50.f);        // softcap: its cost against pe0 above
  time_case(4, 16, 4096, 128, BF, true, 0, 0.f, true);    // ALiBi, causal
  return failures != 0;
}
