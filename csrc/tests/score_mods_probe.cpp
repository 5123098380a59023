// Host probe of csrc/score_mods.h, for tests/test_cuda_score_mods.py: the softcap and ALiBi the CUDA
// kernels apply to each score, compiled with the host compiler and checked against the Python formulas
// (flashattn_py/semantics/score_mods.py) without a GPU.
//
// stdin, whitespace-separated:
//   softcap softmax_scale has_alibi stride_b stride_h n_slopes [slopes: n_slopes floats]
//   n_scores, then per score: batch head raw offset     (offset = i + diag - j)
// stdout:
//   mods has_score_mods
//   then per score: score s2 (base 2) dcap
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../score_mods.h"

using namespace flashattn;

int main() {
  AttentionParams p;
  int has_alibi = 0, n_slopes = 0;
  long long stride_b = 0, stride_h = 0;
  if (std::scanf("%f %f %d %lld %lld %d", &p.mods.softcap, &p.softmax_scale, &has_alibi, &stride_b, &stride_h,
                 &n_slopes) != 6) {
    return 2;
  }
  std::vector<float> slopes(n_slopes);
  for (auto& s : slopes) {
    if (std::scanf("%f", &s) != 1) return 2;
  }
  if (has_alibi) {
    p.mods.alibi_slopes = slopes.data();
    p.mods.alibi_stride_b = stride_b, p.mods.alibi_stride_h = stride_h;
  }
  std::printf("mods %d\n", int(has_score_mods(p)));
  int n = 0;
  if (std::scanf("%d", &n) != 1) return 2;
  for (int i = 0; i < n; ++i) {
    long long batch = 0, head = 0;
    float raw = 0.f;
    int offset = 0;
    if (std::scanf("%lld %lld %f %d", &batch, &head, &raw, &offset) != 4) return 2;
    float dcap = 0.f;
    const float s2 = ScoreMod::of(p, batch, head).apply(raw, offset, &dcap);
    std::printf("score %.9g %.9g\n", s2, dcap);
  }
  return 0;
}
