// Host-side pieces the forward and backward share: the checks a kernel cannot report itself (GQA
// ratio, grid limits, positional-encoding fields) and the dispatch of (dtype, head_dim) to one of the
// compiled instances. Invalid input throws std::invalid_argument (pybind11: ValueError) naming `pass`.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "params.h"

namespace flashattn {

template <typename T>
struct TypeTag {
  using type = T;
};

inline void check_common(const AttentionParams& p, const char* pass) {
  const std::string who = std::string("flashattn_py CUDA ") + pass + ": ";
  if (p.nheads_kv <= 0 || p.nheads_q % p.nheads_kv != 0) {
    throw std::invalid_argument(who + "nheads_q (" + std::to_string(p.nheads_q) +
                                ") must be a positive multiple of nheads_kv (" + std::to_string(p.nheads_kv) + ")");
  }
  // Heads and batch ride grid axes 1 and 2 (at most 65535 each); sequence tiles use axis 0.
  if (p.batch > 65535 || p.nheads_q > 65535) {
    throw std::invalid_argument(who + "batch and nheads must be <= 65535, got batch " + std::to_string(p.batch) +
                                ", nheads " + std::to_string(p.nheads_q));
  }
  if (p.pe.kind != int(PEKind::kNone)) {  // the kernels index smem tiles by pe.dim: keep it inside
    if (p.pe.kind != int(PEKind::kRotary) && p.pe.kind != int(PEKind::kSinusoidal)) {
      throw std::invalid_argument(who + "unknown positional encoding kind " + std::to_string(p.pe.kind));
    }
    if (p.pe.dim <= 0 || p.pe.dim % 2 != 0 || p.pe.dim > p.head_dim) {
      throw std::invalid_argument(who + "positional dim " + std::to_string(p.pe.dim) +
                                  " must be even and in [2, head_dim = " + std::to_string(p.head_dim) + "]");
    }
    if ((p.pe.cos == nullptr) != (p.pe.sin == nullptr)) {
      throw std::invalid_argument(who + "rotary cos and sin tables go together");
    }
  }
}

// f(std::integral_constant<int, kHeadDim>{}) for every compiled head dim.
template <typename F>
void for_each_head_dim(F&& f) {
  f(std::integral_constant<int, 32>{});
  f(std::integral_constant<int, 64>{});
  f(std::integral_constant<int, 96>{});
  f(std::integral_constant<int, 128>{});
  f(std::integral_constant<int, 256>{});
}

// launch(TypeTag<T>{}, std::integral_constant<int, kHeadDim>{}) for the instance of p.dtype / p.head_dim.
template <typename Launch>
void dispatch(const AttentionParams& p, const char* pass, Launch&& launch) {
  auto by_head_dim = [&](auto type) {
    switch (p.head_dim) {
      case 32: return launch(type, std::integral_constant<int, 32>{});
      case 64: return launch(type, std::integral_constant<int, 64>{});
      case 96: return launch(type, std::integral_constant<int, 96>{});
      case 128: return launch(type, std::integral_constant<int, 128>{});
      case 256: return launch(type, std::integral_constant<int, 256>{});
      default:
        throw std::invalid_argument(std::string("flashattn_py CUDA ") + pass + ": head_dim " +
                                    std::to_string(p.head_dim) +
                                    " has no compiled kernel (32, 64, 96, 128, 256; pad to the next one)");
    }
  };
  switch (p.dtype) {
    case DType::kFloat16: return by_head_dim(TypeTag<__half>{});
    case DType::kBFloat16: return by_head_dim(TypeTag<__nv_bfloat16>{});
  }
  throw std::invalid_argument(std::string("flashattn_py CUDA ") + pass + ": dtype must be float16 or bfloat16");
}

}  // namespace flashattn
