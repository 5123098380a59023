// Host side of the forward attention kernel: instance choice (head dim x dtype), launch geometry,
// shared-memory opt-in and the checks a kernel cannot report itself.
//
// Build: correct with or without --use_fast_math (CMakeLists.txt uses it). The softmax's fast exp2 is
// explicit (primitives.cuh), and the positional sin/cos reduce their argument themselves
// (positional.cuh: pe_sincos), so the flag's approximate sincosf cannot reach them.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_fwd.cuh"
#include "dispatch.h"
#include "errors.h"
#include "launch.h"

namespace flashattn {
namespace {

// cp.async and the epilogue move 16-byte chunks: every row start must be 16-byte aligned. The stride
// of a dimension of size 1 is never used (torch leaves arbitrary strides there), so it is not checked.
void check_vector_aligned(const void* ptr, const Strides& s, int batch, int seqlen, int heads,
                          const char* name) {
  const bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (batch <= 1 || s.batch % 8 == 0) &&
                  (seqlen <= 1 || s.seq % 8 == 0) && (heads <= 1 || s.head % 8 == 0);
  if (!ok) {
    throw std::invalid_argument(std::string("flashattn_py CUDA forward: ") + name +
                                " must be 16-byte aligned with batch/seq/head strides that are multiples of 8 "
                                "elements (pass a contiguous copy)");
  }
}

template <typename T, int kHeadDim>
void launch_forward(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<kHeadDim>;
  const std::string name = std::string("attention_fwd_kernel<") +
                           (p.dtype == DType::kFloat16 ? "fp16" : "bf16") + ", head_dim " +
                           std::to_string(kHeadDim) + ">";
  const dim3 grid((p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM, p.nheads_q, p.batch);
  const size_t smem = size_t(Cfg::kSmemElems) * sizeof(T);
  auto kernel = attention_fwd_kernel<T, kHeadDim>;
  if (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
               ("cudaFuncSetAttribute(" + name + ", MaxDynamicSharedMemorySize)").c_str());
  }
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(p);
  check_launch(name.c_str());
}

}  // namespace

void run_attention_forward(const AttentionParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.nheads_q == 0) return;  // nothing to write
  check_common(p, "forward");
  check_vector_aligned(p.q, p.q_strides, p.batch, p.seqlen_q, p.nheads_q, "q");
  check_vector_aligned(p.out, p.out_strides, p.batch, p.seqlen_q, p.nheads_q, "out");
  if (p.seqlen_k > 0) {
    check_vector_aligned(p.k, p.k_strides, p.batch, p.seqlen_k, p.nheads_kv, "k");
    check_vector_aligned(p.v, p.v_strides, p.batch, p.seqlen_k, p.nheads_kv, "v");
  }
  dispatch(p, "forward", [&](auto type, auto head_dim) {
    launch_forward<typename decltype(type)::type, decltype(head_dim)::value>(p, stream);
  });
}

std::vector<KernelLaunchInfo> forward_launch_info() {
  std::vector<KernelLaunchInfo> info;
  auto add = [&](auto head_dim) {
    using Cfg = FwdConfig<decltype(head_dim)::value>;
    info.push_back({"attention_fwd_kernel", decltype(head_dim)::value, Cfg::kThreads,
                    int(Cfg::kSmemElems * 2)});  // 2-byte elements (fp16 / bf16)
  };
  for_each_head_dim(add);
  return info;
}

}  // namespace flashattn
