// Host side of the Hopper backward (hopper/attention_bwd_sm90.cuh): the routing decision (hopper/route.h),
// the five TMA tensor maps (hopper/tma.h: Q, K, V, dO and the fp32 dQ accumulator), the delta preprocess
// (shared with the mma.sync backward), the instance for (dtype, head dim), and the dQ conversion.
//
// As for the forward, the kernel's body exists only in nvcc's sm_90a pass; route.h never launches it
// where the build has no sm_90a code or the device is not sm_90.
#include <cuda.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention_bwd_preprocess.cuh"
#include "dispatch.h"
#include "errors.h"
#include "hopper/attention_bwd_sm90.cuh"
#include "hopper/dq_convert.cuh"
#include "hopper/route.h"
#include "hopper/tensor_maps.h"
#include "launch.h"

namespace flashattn {
namespace {

template <typename T, int kHeadDim>
void launch_sm90_backward(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = hopper::Sm90BwdConfig<kHeadDim>;
  const std::string name = std::string("attention_bwd_sm90_kernel<") + (p.dtype == DType::kFloat16 ? "fp16" : "bf16") +
                           ", head_dim " + std::to_string(kHeadDim) + ">";
  const bool packed = p.cu_seqlens_q != nullptr;
  const int64_t batches = packed ? 1 : p.batch;
  const int64_t q_rows = packed ? p.total_q : p.seqlen_q, k_rows = packed ? p.total_k : p.seqlen_k;
  CUtensorMap map_q, map_k, map_v, map_do, map_dq;
  try {
    map_q = hopper::bshd_tensor_map<T>(p.q, p.q_strides, batches, q_rows, p.nheads_q, kHeadDim, Cfg::kBlockM);
    map_do = hopper::bshd_tensor_map<T>(p.dout, p.dout_strides, batches, q_rows, p.nheads_q, kHeadDim, Cfg::kBlockM);
    map_k = hopper::bshd_tensor_map<T>(p.k, p.k_strides, batches, k_rows, p.nheads_kv, kHeadDim, Cfg::kBlockN);
    map_v = hopper::bshd_tensor_map<T>(p.v, p.v_strides, batches, k_rows, p.nheads_kv, kHeadDim, Cfg::kBlockN);
    // The reduce-adds: boxes of 64 rows x 32 fp32 channels (128 bytes, the swizzle's span).
    map_dq = hopper::bshd_tensor_map<float>(p.dq_accum, p.dq_accum_strides, batches, q_rows, p.nheads_q, kHeadDim, 64, 32);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("flashattn_py CUDA backward (") + name + "): " + e.what());
  }
  bwd::launch_attention_bwd_preprocess<T, kHeadDim, true>(p, stream);
  {
    const dim3 grid(unsigned((p.seqlen_k + Cfg::kBlockN - 1) / Cfg::kBlockN), p.nheads_kv, p.batch);
    auto kernel = hopper::attention_bwd_sm90_kernel<T, kHeadDim>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes)),
               ("cudaFuncSetAttribute(" + name + ", MaxDynamicSharedMemorySize)").c_str());
    kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, map_q, map_k, map_v, map_do, map_dq);
    check_launch(name.c_str());
  }
  {
    const dim3 grid(unsigned((p.seqlen_q + hopper::kDqConvertRows - 1) / hopper::kDqConvertRows), p.nheads_q, p.batch);
    hopper::attention_bwd_dq_convert_kernel<T, kHeadDim><<<grid, hopper::kDqConvertThreads, 0, stream>>>(p);
    check_launch("attention_bwd_dq_convert_kernel");
  }
}

}  // namespace

bool run_attention_backward_sm90(const AttentionParams& p, cudaStream_t stream, const hopper::Sm90Context& sm90,
                                 bool deterministic) {
  if (!hopper::sm90_backward_takes(p, sm90, deterministic)) return false;
  dispatch(p, "backward (sm_90a)", [&](auto type, auto head_dim, auto, auto) {
    constexpr int kD = decltype(head_dim)::value;
    if constexpr (kD == 64 || kD == 128 || kD == 256) {
      launch_sm90_backward<typename decltype(type)::type, kD>(p, stream);
    } else {
      throw std::logic_error("flashattn_py CUDA backward: hopper/route.h let head_dim " + std::to_string(kD) +
                             " through");
    }
  });
  return true;
}

std::vector<KernelLaunchInfo> backward_sm90_launch_info() {
  std::vector<KernelLaunchInfo> info;
  auto add = [&](auto head_dim) {
    using Cfg = hopper::Sm90BwdConfig<decltype(head_dim)::value>;
    info.push_back({"attention_bwd_sm90_kernel", decltype(head_dim)::value, Cfg::kThreads, int(Cfg::kSmemBytes)});
    info.push_back({"attention_bwd_dq_convert_kernel", decltype(head_dim)::value, hopper::kDqConvertThreads, 0});
  };
  add(std::integral_constant<int, 64>{});
  add(std::integral_constant<int, 128>{});
  add(std::integral_constant<int, 256>{});
  return info;
}

}  // namespace flashattn
