// What the standalone CUDA self-tests share: a CUDA-call check that exits, fp16/bf16 <-> float conversions
// on the host (tensors are kept as raw 16-bit words), and the --sm90 mode's Hopper context.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../hopper/route.h"
#include "../params.h"

#define CK(x)                                                                               \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                         \
    }                                                                                       \
  } while (0)

static inline uint16_t to_bits(float x, flashattn::DType t) {
  uint16_t b;
  if (t == flashattn::DType::kFloat16) {
    const __half h = __float2half_rn(x);
    std::memcpy(&b, &h, 2);
  } else {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    std::memcpy(&b, &h, 2);
  }
  return b;
}

static inline float from_bits(uint16_t b, flashattn::DType t) {
  if (t == flashattn::DType::kFloat16) {
    __half h;
    std::memcpy(&h, &b, 2);
    return __half2float(h);
  }
  __nv_bfloat16 h;
  std::memcpy(&h, &b, 2);
  return __bfloat162float(h);
}

// --sm90 in a self-test: the Hopper context of its calls (requested and compiled, this device's compute
// capability), or exit status 2 where the device is not sm_90 (the Hopper kernels cannot run, and the mode
// would prove nothing).
static inline flashattn::hopper::Sm90Context sm90_selftest_context(const char* kernels) {
  flashattn::hopper::Sm90Context c;
  c.requested = c.compiled = true;
  int dev;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&c.cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  CK(cudaDeviceGetAttribute(&c.cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (c.cc_major != 9 || c.cc_minor != 0) {
    std::printf("--sm90: the device is sm_%d%d, not sm_90: the Hopper %s cannot run here\n", c.cc_major, c.cc_minor,
                kernels);
    std::exit(2);
  }
  return c;
}
