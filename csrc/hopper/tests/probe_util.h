// What the Hopper GPU probes (wgmma_tma_probe.cu, tma_reduce_probe.cu) share: the check that device 0 is
// an sm_90 GPU, which they need and without which they exit with status 2 (not a failure: nothing ran).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>

// True when device 0 is an sm_90 GPU (printing its name); otherwise prints why not and returns false.
inline bool require_sm90_gpu() {
  int devices = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0 ||
      cudaGetDeviceProperties(&prop, 0) != cudaSuccess || prop.major != 9) {
    std::printf("no sm_90 GPU: the probe needs a Hopper GPU (H100/H200)\n");
    return false;
  }
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  return true;
}
