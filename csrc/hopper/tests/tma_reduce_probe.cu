// Probe of the Hopper shared -> global TMA primitives (csrc/hopper/sm90_primitives.cuh) that the backward of
// issue 18 needs for dQ: cp.reduce.async.bulk.tensor (.add, fp32) into one global accumulator that many CTAs
// add to, and the TMA tensor store (cp.async.bulk.tensor .global.shared::cta), with their bulk async-groups.
//
// The shape of the backward's dQ path: grid (ctas, heads, batch); CTA c of a (batch, head) is "key block" c.
// It walks the query blocks of 64 rows; for each it computes a 64 x head_dim fp32 tile in registers (the
// wgmma accumulator layout of sm90_primitives.cuh: warp w rows 16w + g (+8), columns 8j + 2t (+1)), writes it
// to shared memory in the TMA box layout (128B-swizzled panels of 32 fp32 columns, or unswizzled rows),
// fence.proxy.async + barrier, and one thread adds it to the global dQ accumulator with the TMA reduce-add
// (one box per panel), then commit_group. Two staging buffers: before rewriting one, the issuing thread
// waits with cp.async.bulk.wait_group.read 1 (its previous group may still be reading the other buffer).
// At the end, cp.async.bulk.wait_group 0.
//   * Reduce cases: every CTA adds every query block of its (batch, head), its blocks starting at row
//     (c * row_step) % 64, so tiles of different CTAs overlap fully and partially and each element receives
//     several adds; the last block of each CTA runs past seqlen (the box is clipped: no write there).
//   * Store cases: CTA c stores the blocks c, c + ctas, ... (each element written once, tail clipped).
// The buffer is padded (head_dim < row stride, seqlen < rows allocated, batch gaps) and filled with known
// values; padding must come back bit for bit unchanged. Tile values are multiples of 2^-8 in [-2, 2), initial
// values multiples of 2^-6 in [-8, 8): every partial sum (|sum| < 20) is exact in fp32 whatever the order of
// the adds, so the result must equal the CPU fp64 reference exactly (a lost, doubled or misplaced add shows
// as a mismatch; the rounding that a real dQ's order-dependent sum would show is not what is tested here).
//
// Build and run on an H100/H200 (sm_90a; plain sm_90 would do for these instructions, the suite compiles
// sm_90a like the other probes):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc csrc/hopper/tests/tma_reduce_probe.cu \
//       -o /tmp/tma_reduce_probe && /tmp/tma_reduce_probe
// Prints one ok/FAIL line per case, then PASS; exit 0 when all pass, 1 on a mismatch or CUDA error, 2 when
// there is no sm_90 GPU.  `--config` (no GPU needed): threads, tile rows and dynamic shared memory per head_dim.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

#include "hopper/sm90_primitives.cuh"
#include "hopper/smem_layout.h"
#include "hopper/tma.h"
#include "hopper/tests/probe_util.h"

using namespace flashattn::hopper;

namespace {

constexpr int kThreads = 128;  // one warpgroup: the accumulator layout of one m64 wgmma tile
constexpr int kTileRows = 64;
constexpr int kBuffers = 2;

template <int kHeadDim, bool kSwizzle>
struct ReduceShape {
  // 128B swizzle: panels of 32 fp32 columns (128-byte rows), one box each; unswizzled: one box of all columns.
  static constexpr int kBoxCols = kSwizzle ? int(kSwizzleRowBytes / 4) : kHeadDim;
  static constexpr int kPanels = kHeadDim / kBoxCols;
  static constexpr uint32_t kPanelBytes = kTileRows * kBoxCols * 4;
  static constexpr uint32_t kBufferBytes = kPanels * kPanelBytes;
  static constexpr uint32_t kSmemBytes = kBuffers * kBufferBytes + kSwizzleAtomBytes;  // + base alignment
  static_assert(kHeadDim % kBoxCols == 0 && kBoxCols <= 256, "whole boxes of at most 256 columns");
  static_assert(kPanelBytes % kSwizzleAtomBytes == 0, "panels stay 1024-aligned");
  static_assert(kSmemBytes <= 227 * 1024, "an sm_90 CTA has at most 227 KB of shared memory");
};

// Multiples of 2^-8 in [-2, 2), from global coordinates (the host computes the same).
__host__ __device__ inline float tile_value(uint32_t seed, uint32_t cta, uint32_t b, uint32_t h, uint32_t row,
                                            uint32_t col) {
  uint32_t x = seed ^ (cta * 0x9E3779B9u) ^ (b * 0x85EBCA6Bu) ^ (h * 0xC2B2AE35u) ^ (row * 0x27D4EB2Fu) ^
               (col * 0x165667B1u);
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  x *= 0x297A2D39u;
  x ^= x >> 15;
  return float(int(x % 1024u) - 512) / 256.f;
}

template <int kRank, bool kReduce>
__device__ __forceinline__ void issue_box(const CUtensorMap* map, const void* src, int col, int row, int head,
                                          int batch) {
  if constexpr (kReduce) {
    if constexpr (kRank == 4) {
      tma_reduce_add_4d(map, src, col, row, head, batch);
    } else if constexpr (kRank == 3) {
      tma_reduce_add_3d(map, src, col, row, head);
    } else {
      tma_reduce_add_2d(map, src, col, row);
    }
  } else {
    if constexpr (kRank == 4) {
      tma_store_4d(map, src, col, row, head, batch);
    } else if constexpr (kRank == 3) {
      tma_store_3d(map, src, col, row, head);
    } else {
      tma_store_2d(map, src, col, row);
    }
  }
}

template <int kRank, int kHeadDim, bool kSwizzle, bool kReduce>
__global__ void __launch_bounds__(kThreads, 1)
    tma_reduce_probe(const __grid_constant__ CUtensorMap map, int seqlen, int row_step, uint32_t seed) {
  using Shape = ReduceShape<kHeadDim, kSwizzle>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAtomBytes - 1) / kSwizzleAtomBytes * kSwizzleAtomBytes);
  const int cta = blockIdx.x, ctas = gridDim.x, head = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  if (tid == 0) tma_prefetch_descriptor(&map);

  // Reduce: every block from this CTA's offset; store: blocks cta, cta + ctas, ... from row 0.
  const int first_row = kReduce ? (cta * row_step) % kTileRows : cta * kTileRows;
  const int row_stride = kReduce ? kTileRows : ctas * kTileRows;
  int use = 0;
  for (int row0 = first_row; row0 < seqlen; row0 += row_stride, ++use) {
    uint8_t* buffer = smem + (use % kBuffers) * Shape::kBufferBytes;
    if (use >= kBuffers) {  // the group that read this buffer (issued kBuffers - 1 groups ago) must be done
      if (tid == 0) bulk_wait_group_read<kBuffers - 1>();
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * warp + g + 8 * half, col = 8 * j + 2 * t;
        const float2 v = make_float2(tile_value(seed, cta, batch, head, row0 + row, col),
                                     tile_value(seed, cta, batch, head, row0 + row, col + 1));
        uint32_t offset;
        if constexpr (kSwizzle) {
          const int panel = col / Shape::kBoxCols;
          offset = panel * Shape::kPanelBytes + sw128_byte_offset(row, (col % Shape::kBoxCols) * 4);
        } else {
          offset = (row * kHeadDim + col) * 4;
        }
        *reinterpret_cast<float2*>(buffer + offset) = v;
      }
    }
    fence_proxy_async_shared();  // the generic-proxy writes, before the async proxy (TMA) reads them
    __syncthreads();
    if (tid == 0) {
#pragma unroll
      for (int p = 0; p < Shape::kPanels; ++p) {
        issue_box<kRank, kReduce>(&map, buffer + p * Shape::kPanelBytes, p * Shape::kBoxCols, row0, head, batch);
      }
      bulk_commit_group();
    }
  }
  if (tid == 0) bulk_wait_group<0>();  // the writes done (and, before exit, the shared-memory reads)
}

// ---- host ------------------------------------------------------------------------------------------------

struct Case {
  const char* name;
  int batch, heads, seqlen, seqlen_alloc, head_dim, d_alloc;  // rows of d_alloc floats, seqlen_alloc per batch
  int ctas, row_step;
};

bool cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

template <int kRank, int kHeadDim, bool kSwizzle, bool kReduce>
bool run_case(const Case& cs, uint32_t seed) {
  using Shape = ReduceShape<kHeadDim, kSwizzle>;
  auto kernel = tma_reduce_probe<kRank, kHeadDim, kSwizzle, kReduce>;
  // Element (b, s, h, d) at b * sb + s * ss + h * sh + d.
  const int64_t sh = cs.d_alloc, ss = int64_t(cs.heads) * cs.d_alloc, sb = ss * cs.seqlen_alloc;
  const size_t elems = size_t(cs.batch) * sb;
  const float kPad = 777.f;  // every padding element; must come back unchanged
  std::vector<float> init(elems, kPad);
  std::vector<double> ref(elems, kPad);
  std::vector<char> inside(elems, 0);
  for (int b = 0; b < cs.batch; ++b)
    for (int s = 0; s < cs.seqlen; ++s)
      for (int h = 0; h < cs.heads; ++h)
        for (int d = 0; d < cs.head_dim; ++d) {
          const size_t i = b * sb + s * ss + h * sh + d;
          init[i] = 4.f * tile_value(seed, 0xFFFFu, b, h, s, d);
          ref[i] = init[i];
          inside[i] = 1;
        }
  for (int b = 0; b < cs.batch; ++b)
    for (int h = 0; h < cs.heads; ++h)
      for (int c = 0; c < cs.ctas; ++c) {
        const int first = kReduce ? (c * cs.row_step) % kTileRows : c * kTileRows;
        const int step = kReduce ? kTileRows : cs.ctas * kTileRows;
        for (int row0 = first; row0 < cs.seqlen; row0 += step)
          for (int s = row0; s < row0 + kTileRows && s < cs.seqlen; ++s)
            for (int d = 0; d < cs.head_dim; ++d) {
              const size_t i = b * sb + s * ss + h * sh + d;
              const double v = tile_value(seed, c, b, h, s, d);
              ref[i] = kReduce ? ref[i] + v : v;
            }
      }

  float* dbuf = nullptr;
  std::vector<float> got(elems);
  bool ok = cuda_ok(cudaMalloc(&dbuf, elems * sizeof(float)), "cudaMalloc") &&
            cuda_ok(cudaMemcpy(dbuf, init.data(), elems * sizeof(float), cudaMemcpyHostToDevice), "copy in");
  if (ok) {
    try {
      TmaTileArgs args;
      const TmaSwizzle swizzle = kSwizzle ? TmaSwizzle::k128B : TmaSwizzle::kNone;
      if constexpr (kRank == 4) {
        args = bshd_tile_args(TmaDataType::kFloat32, cs.batch, cs.seqlen, cs.heads, cs.head_dim, sb, ss, sh, kTileRows,
                              Shape::kBoxCols, swizzle);
      } else {  // rank 3 (d, s, h): the (seqlen, heads, head_dim) dQ accumulator; rank 2 (d, s): one head
        const uint64_t dims[3] = {uint64_t(cs.head_dim), uint64_t(cs.seqlen), uint64_t(cs.heads)};
        const uint64_t strides[2] = {uint64_t(ss) * 4, uint64_t(sh) * 4};
        const uint32_t box[3] = {uint32_t(Shape::kBoxCols), uint32_t(kTileRows), 1};
        args = tma_tile_args(TmaDataType::kFloat32, kRank, dims, strides, box, swizzle);
      }
      const CUtensorMap map = encode_tensor_map(args, dbuf);
      ok = cuda_ok(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Shape::kSmemBytes)),
                   "cudaFuncSetAttribute");
      if (ok) kernel<<<dim3(cs.ctas, cs.heads, cs.batch), kThreads, Shape::kSmemBytes>>>(map, cs.seqlen, cs.row_step,
                                                                                           seed);
      ok = ok && cuda_ok(cudaGetLastError(), "launch") && cuda_ok(cudaDeviceSynchronize(), "kernel") &&
           cuda_ok(cudaMemcpy(got.data(), dbuf, elems * sizeof(float), cudaMemcpyDeviceToHost), "copy out");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ok = false;
    }
  }
  cudaFree(dbuf);
  if (!ok) {
    std::printf("FAIL %s (CUDA error)\n", cs.name);
    return false;
  }
  double max_err = 0.0;
  size_t bad = 0, pad_bad = 0;
  for (size_t i = 0; i < elems; ++i) {
    if (!inside[i]) {
      if (std::memcmp(&got[i], &init[i], sizeof(float)) != 0) {
        if (pad_bad < 5) std::printf("  %s: padding element %zu = %g, written\n", cs.name, i, double(got[i]));
        ++pad_bad;
      }
      continue;
    }
    const double err = std::fabs(double(got[i]) - ref[i]);  // exact by construction (header)
    if (!(err == 0.0)) {
      if (bad < 5) std::printf("  %s: element %zu = %.9g, expected %.9g\n", cs.name, i, double(got[i]), ref[i]);
      ++bad;
    }
    if (err > max_err || err != err) max_err = err;
  }
  std::printf("%s %s: batch %d, heads %d, seqlen %d, head_dim %d, %d CTAs per head, max |err| %.3g, %zu mismatches, "
              "%zu padding writes\n",
              bad || pad_bad ? "FAIL" : "ok", cs.name, cs.batch, cs.heads, cs.seqlen, cs.head_dim, cs.ctas, max_err, bad,
              pad_bad);
  return bad == 0 && pad_bad == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--config") == 0) {
    std::printf("threads %d tile_rows %d buffers %d\n", kThreads, kTileRows, kBuffers);
    std::printf("smem_dynamic d64_sw128 %u d64_none %u d128_sw128 %u\n", ReduceShape<64, true>::kSmemBytes,
                ReduceShape<64, false>::kSmemBytes, ReduceShape<128, true>::kSmemBytes);
    return 0;
  }
  if (!require_sm90_gpu()) return 2;
  bool ok = true;
  // The dQ accumulator (seqlen, heads, head_dim), rank 3, 128B swizzle (4 panels of 32 columns): 6 CTAs per
  // head with row offsets 0, 24, 48, 8, 32, 56 (partial overlaps), 200 rows (tail clipped), 16 padding rows.
  ok &= run_case<3, 128, true, true>({"reduce rank3 sw128 d128", 1, 3, 200, 216, 128, 128, 6, 24}, 11);
  // bshd, rank 4, 128B swizzle: rows of 72 floats (padding columns), batch gaps of 14 rows.
  ok &= run_case<4, 64, true, true>({"reduce rank4 sw128 d64", 2, 2, 130, 144, 64, 72, 4, 16}, 12);
  // One head, rank 2, unswizzled (one 64-column box = 256 bytes per row), 8 CTAs, offsets 0, 40, 16, 56, ...
  ok &= run_case<2, 64, false, true>({"reduce rank2 none d64", 1, 1, 300, 320, 64, 68, 8, 40}, 13);
  // Stores: each block written by one CTA, the tail clipped, padding untouched.
  ok &= run_case<3, 128, true, false>({"store rank3 sw128 d128", 1, 2, 190, 200, 128, 132, 2, 0}, 14);
  ok &= run_case<4, 64, false, false>({"store rank4 none d64", 2, 3, 70, 80, 64, 64, 1, 0}, 15);
  std::printf(ok ? "PASS\n" : "FAILED\n");
  return ok ? 0 : 1;
}
