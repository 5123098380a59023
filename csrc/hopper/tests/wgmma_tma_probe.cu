// Probe of the Hopper primitives (csrc/hopper/): a tiny warp-specialized GEMM C = A B^T per (batch, head)
// of bshd tensors, bf16/fp16 in, fp32 out, one 64 x N tile of C per CTA -- the shape of S = Q K^T in the
// attention kernel of issue 17, without the softmax.
//
//   warpgroup 0 (producer): setmaxnreg.dec; one thread issues TMA loads of the A (64 x 64) and B (N x 64)
//     tiles of each 64-wide K chunk into a 2-stage ring of 128B-swizzled shared memory; mbarrier "full"
//     (arrive.expect_tx + complete_tx) says a stage has landed, "empty" (128 consumer arrivals) that it
//     may be overwritten.
//   warpgroup 1 (consumer): setmaxnreg.inc; per chunk 4 x wgmma m64nNk16 with B (and A, "SS") from
//     shared-memory descriptors (smem_layout.h), or A from registers ("RS", loaded from the swizzled tile
//     with sw128_offset), fp32 accumulators in registers; then stores C.
//
// Variants cover bf16/fp16, N = 64/128/256, SS/RS, TMA rank 4 (bshd), 3 and 2, partial tiles (OOB zero
// fill in rows and in the head_dim), a padded head stride, and a K loop that wraps the ring.
//
// Build (sm_90a needed for wgmma/setmaxnreg; the test suite compiles it for its static facts):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc csrc/hopper/tests/wgmma_tma_probe.cu -o probe
// Run:  ./probe            on an sm_90 GPU: every variant against a CPU fp64 GEMM; exit 0 when all pass,
//                          1 on a mismatch or CUDA error, 2 when there is no sm_90 GPU.
//       ./probe --config   no GPU needed: per variant, its dynamic shared memory, threads and setmaxnreg values.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "hopper/sm90_primitives.cuh"
#include "hopper/smem_layout.h"
#include "hopper/tma.h"
#include "hopper/tests/probe_util.h"

using namespace flashattn::hopper;

namespace {

constexpr int kStages = 2;
constexpr int kTileM = 64;   // rows of C per CTA: one wgmma M
constexpr int kChunkK = 64;  // K per stage: one 128-byte swizzled row
constexpr int kThreads = 256;
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;

template <int N>
struct ProbeShape {
  static constexpr uint32_t kABytes = kTileM * kChunkK * 2;  // 8 KB
  static constexpr uint32_t kBBytes = N * kChunkK * 2;
  static constexpr uint32_t kStageBytes = kABytes + kBBytes;
  // + 1024: the dynamic shared memory base is rounded up to the 1024-byte swizzle atom in the kernel.
  static constexpr uint32_t kSmemBytes = kStages * kStageBytes + kSwizzleAtomBytes;
  static_assert(kABytes % kSwizzleAtomBytes == 0 && kBBytes % kSwizzleAtomBytes == 0, "tiles stay 1024-aligned");
  static_assert(kSmemBytes <= 227 * 1024, "an sm_90 CTA has at most 227 KB of shared memory");
};

template <int kRank>
__device__ __forceinline__ void load_box(void* dst, const CUtensorMap* map, uint64_t* bar, int col, int row, int head,
                                         int batch) {
  if constexpr (kRank == 4) {
    tma_load_4d(dst, map, bar, col, row, head, batch);
  } else if constexpr (kRank == 3) {
    tma_load_3d(dst, map, bar, col, row, head);
  } else {
    tma_load_2d(dst, map, bar, col, row);
  }
}

template <typename T, int N, bool kARegs, int kRank>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_abt_probe(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b, float* c,
                   int m, int n, int k, int heads) {
  using Shape = ProbeShape<N>;
  extern __shared__ uint8_t smem_raw[];
  __shared__ uint64_t full[kStages], empty[kStages];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAtomBytes - 1) / kSwizzleAtomBytes * kSwizzleAtomBytes);

  const int m0 = blockIdx.x * kTileM, n0 = blockIdx.y * N;
  const int head = blockIdx.z % heads, batch = blockIdx.z / heads;
  const int chunks = (k + kChunkK - 1) / kChunkK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 128);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup_index() == 0) {  // producer
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&map_a);
      tma_prefetch_descriptor(&map_b);
      for (int kb = 0; kb < chunks; ++kb) {
        const int s = kb % kStages;
        mbarrier_wait(&empty[s], ((kb / kStages) & 1) ^ 1);
        uint8_t* tile_a = smem + s * Shape::kStageBytes;
        mbarrier_arrive_expect_tx(&full[s], Shape::kStageBytes);
        load_box<kRank>(tile_a, &map_a, &full[s], kb * kChunkK, m0, head, batch);
        load_box<kRank>(tile_a + Shape::kABytes, &map_b, &full[s], kb * kChunkK, n0, head, batch);
      }
    }
  } else {  // consumer warpgroup
    setmaxnreg_inc<kConsumerRegs>();
    const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    float acc[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; ++i) acc[i] = 1e30f;  // overwritten by the first wgmma (scale_d = 0)
    for (int kb = 0; kb < chunks; ++kb) {
      const int s = kb % kStages;
      mbarrier_wait(&full[s], (kb / kStages) & 1);
      const uint8_t* tile_a = smem + s * Shape::kStageBytes;
      const uint32_t addr_a = smem_u32(tile_a), addr_b = addr_a + Shape::kABytes;
      if constexpr (kARegs) {
        uint32_t a[4][4];
#pragma unroll
        for (int k16 = 0; k16 < 4; ++k16) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {  // a[r]: rows g / g + 8, columns 2t / 2t + 8 (header of sm90_primitives.cuh)
            const uint32_t row = 16 * warp + g + (r % 2) * 8, col = 16 * k16 + 2 * t + (r / 2) * 8;
            a[k16][r] = *reinterpret_cast<const uint32_t*>(tile_a + sw128_offset(row, col, kTileM));
          }
        }
        wgmma_fence_operand(acc);
        wgmma_fence();
#pragma unroll
        for (int k16 = 0; k16 < 4; ++k16) {
          Wgmma<N, T>::rs(acc, a[k16], sw128_kmajor_desc(addr_b, N, k16), (kb > 0 || k16 > 0) ? 1 : 0);
        }
      } else {
        wgmma_fence_operand(acc);
        wgmma_fence();
#pragma unroll
        for (int k16 = 0; k16 < 4; ++k16) {
          Wgmma<N, T>::ss(acc, sw128_kmajor_desc(addr_a, kTileM, k16), sw128_kmajor_desc(addr_b, N, k16),
                          (kb > 0 || k16 > 0) ? 1 : 0);
        }
      }
      wgmma_commit_group();
      wgmma_wait_group<0>();
      wgmma_fence_operand(acc);
      mbarrier_arrive(&empty[s]);
    }
    float* c_tile = c + int64_t(blockIdx.z) * m * n;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + 16 * warp + g + 8 * half, col = n0 + 8 * j + 2 * t;
        if (row < m && col < n) c_tile[int64_t(row) * n + col] = acc[4 * j + 2 * half];
        if (row < m && col + 1 < n) c_tile[int64_t(row) * n + col + 1] = acc[4 * j + 2 * half + 1];
      }
    }
  }
}

// ---- host ------------------------------------------------------------------------------------------------

struct Case {
  const char* name;
  int batch, heads, m, n, k, k_alloc;  // k_alloc >= k: the head stride (padded rows)
};

bool cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

template <typename T>
T to_t(float x);
template <>
__nv_bfloat16 to_t<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__half to_t<__half>(float x) { return __float2half(x); }
template <typename T>
float from_t(T x);
template <>
float from_t<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
float from_t<__half>(__half x) { return __half2float(x); }

// The tensor map of a bshd tensor (batch, rows, heads, k) with head stride k_alloc, box box_rows x 64,
// of TMA rank 4, or 3 / 2 with the trailing unit extents dropped.
TmaTileArgs probe_args(TmaDataType type, int rank, const Case& cs, int rows, uint32_t box_rows) {
  const int64_t sh = cs.k_alloc, ss = int64_t(cs.heads) * cs.k_alloc, sb = ss * rows;
  if (rank == 4) return bshd_tile_args(type, cs.batch, rows, cs.heads, cs.k, sb, ss, sh, box_rows);
  const uint64_t dims[3] = {uint64_t(cs.k), uint64_t(rows), uint64_t(cs.heads)};
  const uint64_t strides[2] = {uint64_t(ss) * 2, uint64_t(sh) * 2};
  const uint32_t box[3] = {64, box_rows, 1};
  return tma_tile_args(type, rank, dims, strides, box);
}

template <typename T, int N, bool kARegs, int kRank>
bool run_case(const Case& cs, uint64_t seed) {
  constexpr TmaDataType kType = std::is_same<T, __half>::value ? TmaDataType::kFloat16 : TmaDataType::kBFloat16;
  auto kernel = gemm_abt_probe<T, N, kARegs, kRank>;
  const size_t a_elems = size_t(cs.batch) * cs.m * cs.heads * cs.k_alloc;
  const size_t b_elems = size_t(cs.batch) * cs.n * cs.heads * cs.k_alloc;
  const size_t c_elems = size_t(cs.batch) * cs.heads * cs.m * cs.n;
  std::vector<T> ha(a_elems), hb(b_elems);
  auto uniform = [&seed]() {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return float((seed >> 40) & 0xFFFFFF) / float(0x800000) - 1.f;
  };
  for (auto& x : ha) x = to_t<T>(uniform());
  for (auto& x : hb) x = to_t<T>(uniform());

  T *da = nullptr, *db = nullptr;
  float* dc = nullptr;
  bool ok = cuda_ok(cudaMalloc(&da, a_elems * sizeof(T)), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&db, b_elems * sizeof(T)), "cudaMalloc") &&
            cuda_ok(cudaMalloc(&dc, c_elems * sizeof(float)), "cudaMalloc") &&
            cuda_ok(cudaMemcpy(da, ha.data(), a_elems * sizeof(T), cudaMemcpyHostToDevice), "copy A") &&
            cuda_ok(cudaMemcpy(db, hb.data(), b_elems * sizeof(T), cudaMemcpyHostToDevice), "copy B") &&
            cuda_ok(cudaMemset(dc, 0xFF, c_elems * sizeof(float)), "memset C");  // NaN: unwritten C shows
  std::vector<float> hc(c_elems);
  if (ok) {
    try {
      const CUtensorMap map_a = encode_tensor_map(probe_args(kType, kRank, cs, cs.m, kTileM), da);
      const CUtensorMap map_b = encode_tensor_map(probe_args(kType, kRank, cs, cs.n, N), db);
      const uint32_t smem = ProbeShape<N>::kSmemBytes;
      ok = cuda_ok(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                   "cudaFuncSetAttribute");
      const dim3 grid((cs.m + kTileM - 1) / kTileM, (cs.n + N - 1) / N, cs.batch * cs.heads);
      if (ok) kernel<<<grid, kThreads, smem>>>(map_a, map_b, dc, cs.m, cs.n, cs.k, cs.heads);
      ok = ok && cuda_ok(cudaGetLastError(), "launch") && cuda_ok(cudaDeviceSynchronize(), "kernel") &&
           cuda_ok(cudaMemcpy(hc.data(), dc, c_elems * sizeof(float), cudaMemcpyDeviceToHost), "copy C");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ok = false;
    }
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  if (!ok) {
    std::printf("FAIL %s (CUDA error)\n", cs.name);
    return false;
  }
  double max_err = 0.0;
  size_t bad = 0;
  for (int b = 0; b < cs.batch; ++b)
    for (int h = 0; h < cs.heads; ++h)
      for (int i = 0; i < cs.m; ++i)
        for (int j = 0; j < cs.n; ++j) {
          double ref = 0.0;
          const T* arow = ha.data() + ((size_t(b) * cs.m + i) * cs.heads + h) * cs.k_alloc;
          const T* brow = hb.data() + ((size_t(b) * cs.n + j) * cs.heads + h) * cs.k_alloc;
          for (int kk = 0; kk < cs.k; ++kk) ref += double(from_t(arow[kk])) * double(from_t(brow[kk]));
          const double got = hc[((size_t(b) * cs.heads + h) * cs.m + i) * cs.n + j];
          const double err = std::fabs(got - ref);
          if (!(err <= 1e-3 * (1.0 + std::fabs(ref)))) {
            if (bad < 5) std::printf("  %s: C[%d,%d][%d,%d] = %g, expected %g\n", cs.name, b, h, i, j, got, ref);
            ++bad;
          }
          if (err > max_err || err != err) max_err = err;
        }
  std::printf("%s %s: %d x %d x %d, batch %d, heads %d, max |err| %.3g, %zu mismatches\n", bad ? "FAIL" : "ok",
              cs.name, cs.m, cs.n, cs.k, cs.batch, cs.heads, max_err, bad);
  return bad == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--config") == 0) {
    std::printf("threads %d producer_regs %d consumer_regs %d stages %d\n", kThreads, kProducerRegs, kConsumerRegs,
                kStages);
    std::printf("smem_dynamic N64 %u N128 %u N256 %u\n", ProbeShape<64>::kSmemBytes, ProbeShape<128>::kSmemBytes,
                ProbeShape<256>::kSmemBytes);
    return 0;
  }
  if (!require_sm90_gpu()) return 2;
  bool ok = true;
  // bf16, SS, N 128, rank 4: 2 M tiles (the second partial: OOB rows), 2 N tiles (partial), head_dim 96
  // (the second K chunk half out of bounds: zero-filled columns) in rows padded to 104 elements.
  ok &= run_case<__nv_bfloat16, 128, false, 4>({"bf16 SS n128 rank4", 2, 3, 100, 200, 96, 104}, 1);
  // fp16, SS, N 64, rank 3: 3 K chunks wrap the 2-stage ring.
  ok &= run_case<__half, 64, false, 3>({"fp16 SS n64 rank3", 1, 2, 128, 100, 192, 192}, 2);
  // bf16, A from registers, N 128, rank 2: 4 K chunks.
  ok &= run_case<__nv_bfloat16, 128, true, 2>({"bf16 RS n128 rank2", 1, 1, 130, 128, 256, 256}, 3);
  // fp16, A from registers, N 256, rank 4.
  ok &= run_case<__half, 256, true, 4>({"fp16 RS n256 rank4", 2, 2, 64, 256, 128, 128}, 4);
  std::printf(ok ? "PASS\n" : "FAILED\n");
  return ok ? 0 : 1;
}
