// Host-side pieces the forward and backward share: the checks a kernel cannot report itself (GQA
// ratio, grid limits, positional-encoding fields) and the dispatch of (dtype, head_dim) to one of the
// compiled instances. Invalid input throws std::invalid_argument (pybind11: ValueError) naming `pass`.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "params.h"
#include "score_mods.h"
#include "sequence.h"

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
  if (!(p.mods.softcap >= 0.f) || std::isinf(p.mods.softcap)) {
    throw std::invalid_argument(who + "softcap must be finite and >= 0 (0: off), got " +
                                std::to_string(p.mods.softcap));
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

// The variable-length, paged and split-K fields (params.h) describe layouts the kernels trust: what
// they cannot check themselves is checked here. (Lengths and block-table entries are device data:
// flashattn_py/validation/sequences.py and caches.py check their values before the call.) decoding: the pass
// takes paged K/V, split-K and leftpad_k (the forward); the backward does not.
inline void check_layout(const AttentionParams& p, const char* pass, bool decoding) {
  const std::string who = std::string("flashattn_py CUDA ") + pass + ": ";
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr)) {
    throw std::invalid_argument(who + "cu_seqlens_q and cu_seqlens_k go together");
  }
  const bool packed = p.cu_seqlens_q != nullptr;
  if (packed && p.seqused_k != nullptr) throw std::invalid_argument(who + "seqused_k is for dense batches");
  if (p.leftpad_k != nullptr && !decoding) {  // the backward kernels do not read it
    throw std::invalid_argument(who + "leftpad_k is forward-only (decoding)");
  }
  if (p.leftpad_k != nullptr && (packed || p.seqused_k == nullptr)) {
    throw std::invalid_argument(who + "leftpad_k needs a dense batch with seqused_k");
  }
  if (packed && p.total_q < 0) throw std::invalid_argument(who + "total_q must be the packed row count of q");
  if (!decoding && (p.block_table != nullptr || p.num_splits != 1)) {
    throw std::invalid_argument(who + "paged K/V and split-K are forward-only (decoding)");
  }
  // A packed batch may read paged K/V (flash_attn_varlen_func(block_table=)): its cu_seqlens_k give
  // each sequence's key count, and its keys are rows 0.. of its pages (kv_row_offset ignores k_row0).
  if (p.block_table != nullptr && (p.page_size <= 0 || p.block_table_stride < 0)) {
    throw std::invalid_argument(who + "a paged K/V needs page_size > 0 and a block table stride");
  }
  if (p.num_splits < 1 || p.num_splits > 256) {
    throw std::invalid_argument(who + "num_splits must be in [1, 256], got " + std::to_string(p.num_splits));
  }
  if (p.num_splits > 1 && (packed || p.out_accum == nullptr || p.lse_accum == nullptr)) {
    throw std::invalid_argument(who + "split-K needs a dense batch and the out_accum / lse_accum scratch");
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

// launch(TypeTag<T>{}, std::integral_constant<int, kHeadDim>{}, std::bool_constant<kLayout>{},
// std::bool_constant<kMods>{}) for the instance of p.dtype / p.head_dim; the per-sequence layout
// instance when the call uses a layout field (sequence.h has_sequence_layout), the dense one
// otherwise; the score-modification instance when it has a softcap or ALiBi (score_mods.h
// has_score_mods), the plain one otherwise.
template <typename Launch>
void dispatch(const AttentionParams& p, const char* pass, Launch&& launch) {
  auto by_mods = [&](auto type, auto head_dim, auto layout) {
    if (has_score_mods(p)) return launch(type, head_dim, layout, std::true_type{});
    return launch(type, head_dim, layout, std::false_type{});
  };
  auto by_layout = [&](auto type, auto head_dim) {
    if (has_sequence_layout(p)) return by_mods(type, head_dim, std::true_type{});
    return by_mods(type, head_dim, std::false_type{});
  };
  auto by_head_dim = [&](auto type) {
    switch (p.head_dim) {
      case 32: return by_layout(type, std::integral_constant<int, 32>{});
      case 64: return by_layout(type, std::integral_constant<int, 64>{});
      case 96: return by_layout(type, std::integral_constant<int, 96>{});
      case 128: return by_layout(type, std::integral_constant<int, 128>{});
      case 256: return by_layout(type, std::integral_constant<int, 256>{});
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
