// Every primitive of csrc/hopper/sm90_primitives.cuh called from one kernel, for
// tests/test_cuda_hopper_primitives.py: compiled for sm_80 (and plain sm_90) it shows that the
// header's architecture guards keep every build of the extension compiling (the calls become traps);
// compiled for sm_90a it shows each call assembling to its instruction. Never launched.
#include <cuda.h>

#include "hopper/sm90_primitives.cuh"

using namespace flashattn::hopper;

template <typename T, int N>
__device__ void all_wgmma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  Wgmma<N, T>::ss(d, desc, desc, scale_d);
  Wgmma<N, T>::template ss<0, 1>(d, desc, desc, 1);
  Wgmma<N, T>::rs(d, a, desc, 1);
  Wgmma<N, T>::template rs<1>(d, a, desc, 1);
}

// One group of wgmma per width (each width in its own branch below: with the three groups in sequence
// ptxas overlapped them, ran out of registers at the 168 of a 384-thread CTA and serialized the wgmma,
// warning C7512). scale_d comes from a kernel argument: with a constant 0 ptxas drops the earlier,
// overwritten, wgmma.
template <int N>
__device__ float wgmma_group(const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  float d[N / 2] = {};
  wgmma_fence_operand(d);
  wgmma_fence();
  all_wgmma<__nv_bfloat16, N>(d, a, desc, scale_d);
  all_wgmma<__half, N>(d, a, desc, scale_d);
  wgmma_commit_group();
  wgmma_wait_group<1>();
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += d[i];
  return s;
}

__global__ void __launch_bounds__(384, 1) guard_probe(const __grid_constant__ CUtensorMap map, float* out,
                                                      int scale_d) {
  __shared__ __align__(1024) uint8_t tile[16384];
  __shared__ uint64_t bar;
  // The sm_90 part first, so that a plain sm_90 build (where the sm_90a calls below trap) keeps it.
  if (threadIdx.x == 0) {
    mbarrier_init(&bar, 1);
    fence_barrier_init();
    tma_prefetch_descriptor(&map);
    mbarrier_arrive_expect_tx(&bar, 3 * 8192);
    tma_load_2d(tile, &map, &bar, 0, 0);
    tma_load_3d(tile, &map, &bar, 0, 0, 0);
    tma_load_4d(tile, &map, &bar, 0, 0, 0, 0);
  }
  __syncthreads();
  mbarrier_wait(&bar, 0);
  fence_proxy_async_shared();
  __syncthreads();
  if (threadIdx.x == 0) {  // shared -> global: stores and reduce-adds, their bulk groups
    tma_store_2d(&map, tile, 0, 0);
    tma_store_3d(&map, tile, 0, 0, 0);
    tma_store_4d(&map, tile, 0, 0, 0, 0);
    bulk_commit_group();
    tma_reduce_add_2d(&map, tile, 0, 0);
    tma_reduce_add_3d(&map, tile, 0, 0, 0);
    tma_reduce_add_4d(&map, tile, 0, 0, 0, 0);
    bulk_commit_group();
    bulk_wait_group_read<1>();
    bulk_wait_group<0>();
  }
  __syncthreads();
  if (warpgroup_index() == 0) {
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) mbarrier_arrive(&bar);
  } else {
    setmaxnreg_inc<240>();
    const uint64_t desc = sw128_kmajor_desc(smem_u32(tile), 64, threadIdx.x % 4);
    const uint32_t a[4] = {threadIdx.x, 2u, 3u, 4u};
    float r;  // one width per CTA: a single accumulator set is live in each branch
    if (blockIdx.x == 0) {
      r = wgmma_group<64>(a, desc, scale_d);
    } else if (blockIdx.x == 1) {
      r = wgmma_group<128>(a, desc, scale_d);
    } else {
      r = wgmma_group<256>(a, desc, scale_d);
    }
    out[threadIdx.x] = r;
  }
}
