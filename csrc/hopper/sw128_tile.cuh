// A tile accessor (positional.cuh's Tile concept: Elem, at(r, c)) for the Hopper kernels' 128B-swizzled
// shared-memory tiles (smem_layout.h): the forward encodes its Q rows and the backward its K block in place.
#pragma once

#include <cstdint>

#include "smem_layout.h"

namespace flashattn {
namespace hopper {

// Element (r, c) of a 128B-swizzled tile of `rows` rows per panel, from row `row0` on.
template <typename T>
struct Sw128Tile {
  using Elem = T;
  unsigned char* base;
  int rows, row0;
  __device__ __forceinline__ T& at(int r, int c) const {
    return *reinterpret_cast<T*>(base + sw128_offset(uint32_t(row0 + r), uint32_t(c), uint32_t(rows)));
  }
};

}  // namespace hopper
}  // namespace flashattn
