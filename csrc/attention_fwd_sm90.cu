// Host side of the Hopper forward (hopper/attention_fwd_sm90.cuh): the routing decision (hopper/route.h),
// the three TMA tensor maps (hopper/tma.h), the instance for (dtype, head dim) and the launch.
//
// The kernel's body exists only in the sm_90a pass of nvcc (FLASHATTN_SM90A_ENABLED); every other
// arch of the build compiles it to a trap, so it costs them nothing, and route.h never launches it
// where the build has no sm_90a code or the device is not sm_90.
#include <cuda.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "dispatch.h"
#include "errors.h"
#include "hopper/attention_fwd_sm90.cuh"
#include "hopper/route.h"
#include "hopper/tensor_maps.h"
#include "launch.h"

namespace flashattn {
namespace {

template <typename T, int kHeadDim>
void launch_sm90_forward(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = hopper::Sm90FwdConfig<kHeadDim>;
  const std::string name = std::string("attention_fwd_sm90_kernel<") + (p.dtype == DType::kFloat16 ? "fp16" : "bf16") +
                           ", head_dim " + std::to_string(kHeadDim) + ">";
  const bool packed = p.cu_seqlens_q != nullptr;
  const int64_t batches = packed ? 1 : p.batch;
  const int64_t q_rows = packed ? p.total_q : p.seqlen_q, k_rows = packed ? p.total_k : p.seqlen_k;
  CUtensorMap map_q, map_k, map_v;
  try {
    map_q = hopper::bshd_tensor_map<T>(p.q, p.q_strides, batches, q_rows, p.nheads_q, kHeadDim, Cfg::kBlockM);
    map_k = hopper::bshd_tensor_map<T>(p.k, p.k_strides, batches, k_rows, p.nheads_kv, kHeadDim, Cfg::kBlockN);
    map_v = hopper::bshd_tensor_map<T>(p.v, p.v_strides, batches, k_rows, p.nheads_kv, kHeadDim, Cfg::kBlockN);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("flashattn_py CUDA forward (") + name + "): " + e.what());
  }
  const dim3 grid(unsigned((p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM), p.nheads_q, p.batch);
  auto kernel = hopper::attention_fwd_sm90_kernel<T, kHeadDim>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes)),
             ("cudaFuncSetAttribute(" + name + ", MaxDynamicSharedMemorySize)").c_str());
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, map_q, map_k, map_v);
  check_launch(name.c_str());
}

}  // namespace

bool run_attention_forward_sm90(const AttentionParams& p, cudaStream_t stream, const hopper::Sm90Context& sm90) {
  if (!hopper::sm90_forward_takes(p, sm90)) return false;
  dispatch(p, "forward (sm_90a)", [&](auto type, auto head_dim, auto, auto) {
    constexpr int kD = decltype(head_dim)::value;
    if constexpr (kD == 64 || kD == 128 || kD == 256) {
      launch_sm90_forward<typename decltype(type)::type, kD>(p, stream);
    } else {
      throw std::logic_error("flashattn_py CUDA forward: hopper/route.h let head_dim " + std::to_string(kD) +
                             " through");
    }
  });
  return true;
}

std::vector<KernelLaunchInfo> forward_sm90_launch_info() {
  std::vector<KernelLaunchInfo> info;
  auto add = [&](auto head_dim) {
    using Cfg = hopper::Sm90FwdConfig<decltype(head_dim)::value>;
    info.push_back({"attention_fwd_sm90_kernel", decltype(head_dim)::value, Cfg::kThreads, int(Cfg::kSmemBytes)});
  };
  add(std::integral_constant<int, 64>{});
  add(std::integral_constant<int, 128>{});
  add(std::integral_constant<int, 256>{});
  return info;
}

}  // namespace flashattn
