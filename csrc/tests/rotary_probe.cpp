// Host probe of csrc/rotary_angles.h, for tests/test_cuda_rotary_angles.py: the (cos, sin) each thread
// of encode_rows_in_smem (csrc/positional.cuh) computes for its pair column and rows, with the same
// work split (kThreads = 128 threads; thread tid owns column i = tid % cols, cols = min(dim/2, 128), and
// rows tid / cols, + groups, ...; one AngleWalk per column, step = groups) and the same inv_freq
// (exp2f(-(2i / dim) * log2_base) in fp32), compiled with the host compiler and compared with float64
// in Python, without a GPU.
//
// stdin, whitespace-separated, one case after another until EOF:
//   dim log2_base rows first_row npos [pos: npos int64]
// (npos = 0: position = row index, the kernels' pos == nullptr; else row r's position is pos[first_row + r])
// stdout, one line per (case, column, row):
//   case i r position inv_freq cos sin run   (run: rotations since the walk's last anchor, 0 = anchored here)
#include <cmath>
#include <cstdio>
#include <vector>

#include "../rotary_angles.h"

using namespace flashattn;

int main() {
  constexpr int kThreads = 128;
  int dim, rows, first_row, npos;
  float log2_base;
  for (int cs = 0; std::scanf("%d %f %d %d %d", &dim, &log2_base, &rows, &first_row, &npos) == 5; ++cs) {
    std::vector<long long> pos(npos);
    for (auto& p : pos) {
      if (std::scanf("%lld", &p) != 1) return 2;
    }
    if (npos != 0 && npos < first_row + rows) return 3;
    const int half = dim / 2, cols = half < kThreads ? half : kThreads, groups = kThreads / cols;
    for (int tid = 0; tid < cols * groups; ++tid) {
      for (int i = tid % cols; i < half; i += cols) {
        const float inv_freq = exp2f(-(float(2 * i) / float(dim)) * log2_base);
        AngleWalk walk(inv_freq, groups);
        for (int r = tid / cols; r < rows; r += groups) {
          const int row = first_row + r;
          const int64_t p = npos != 0 ? int64_t(pos[row]) : int64_t(row);
          walk.advance(p);
          std::printf("%d %d %d %lld %.9g %.9g %.9g %d\n", cs, i, r, (long long)p, inv_freq, walk.cos(), walk.sin(),
                      walk.run());
        }
      }
    }
  }
  return 0;
}
