// Host side of the forward attention kernel: instance choice (head dim x dtype), launch geometry,
// shared-memory opt-in and the checks a kernel cannot report itself.
//
// Build: correct with or without --use_fast_math (CMakeLists.txt uses it). The softmax's fast exp2 is
// explicit (primitives.cuh), softcap's tanh is built from it (score_mods.h), and the positional sin/cos
// reduce their argument themselves (rotary_angles.h: pe_sincos, fp32 fmaf only), so the flag's approximate
// sincosf / tanhf cannot reach them.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_fwd.cuh"
#include "attention_split_merge.cuh"
#include "dispatch.h"
#include "errors.h"
#include "launch.h"

namespace flashattn {
namespace {

// cp.async and the epilogue move 16-byte chunks: every row start must be 16-byte aligned (params.h
// rows_vector_aligned).
void check_vector_aligned(const void* ptr, const Strides& s, int batch, int seqlen, int heads,
                          const char* name) {
  const bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && rows_vector_aligned(s, batch, seqlen, heads);
  if (!ok) {
    throw std::invalid_argument(std::string("flashattn_py CUDA forward: ") + name +
                                " must be 16-byte aligned with batch/seq/head strides that are multiples of 8 "
                                "elements (pass a contiguous copy)");
  }
}

template <typename T, int kHeadDim, bool kLayout, bool kMods>
void launch_forward(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<kHeadDim, kLayout, kMods>;
  const std::string name = std::string("attention_fwd_kernel<") +
                           (p.dtype == DType::kFloat16 ? "fp16" : "bf16") + ", head_dim " +
                           std::to_string(kHeadDim) + (kLayout ? ", per-sequence layout" : "") +
                           (kMods ? ", score mods>" : ">");
  const int64_t tiles = int64_t(p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM * p.num_splits;
  if (tiles > 2147483647) throw std::invalid_argument("flashattn_py CUDA forward: too many query tiles x splits");
  const dim3 grid(unsigned(tiles), p.nheads_q, p.batch);
  const size_t smem = size_t(Cfg::kSmemElems) * sizeof(T);
  auto kernel = attention_fwd_kernel<T, kHeadDim, kLayout, kMods>;
  if (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
               ("cudaFuncSetAttribute(" + name + ", MaxDynamicSharedMemorySize)").c_str());
  }
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(p);
  check_launch(name.c_str());
  if (p.num_splits > 1) {
    const int64_t rows = int64_t(p.batch) * p.nheads_q * p.seqlen_q;
    if ((rows + kMergeWarps - 1) / kMergeWarps > 2147483647) {
      throw std::invalid_argument("flashattn_py CUDA forward: too many rows to merge for split-K");
    }
    attention_split_merge_kernel<T><<<unsigned((rows + kMergeWarps - 1) / kMergeWarps), kMergeWarps * 32, 0, stream>>>(p);
    check_launch("attention_split_merge_kernel");
  }
}

}  // namespace

void run_attention_forward(const AttentionParams& p, cudaStream_t stream, const hopper::Sm90Context& sm90) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.nheads_q == 0) return;  // nothing to write
  check_common(p, "forward");
  check_layout(p, "forward", /*decoding=*/true);
  check_vector_aligned(p.q, p.q_strides, p.batch, p.seqlen_q, p.nheads_q, "q");
  check_vector_aligned(p.out, p.out_strides, p.batch, p.seqlen_q, p.nheads_q, "out");
  if (p.seqlen_k > 0) {
    const int kv_batches = p.block_table ? 2 : p.batch;  // paged: the batch stride is the page stride, always used
    check_vector_aligned(p.k, p.k_strides, kv_batches, p.seqlen_k, p.nheads_kv, "k");
    check_vector_aligned(p.v, p.v_strides, kv_batches, p.seqlen_k, p.nheads_kv, "v");
  }
  if (run_attention_forward_sm90(p, stream, sm90)) return;  // hopper/route.h: the calls the sm_90a kernel takes
  if (p.pe.kind != int(PEKind::kNone) && p.pe.k_encoded) {  // these kernels encode K themselves
    throw std::invalid_argument("flashattn_py CUDA forward: pe.k_encoded (K pre-encoded) is for the Hopper forward, "
                                "which does not take this call (csrc/hopper/route.h)");
  }
  dispatch(p, "forward", [&](auto type, auto head_dim, auto layout, auto mods) {
    launch_forward<typename decltype(type)::type, decltype(head_dim)::value, decltype(layout)::value,
                   decltype(mods)::value>(p, stream);
  });
}

std::vector<KernelLaunchInfo> forward_launch_info() {
  std::vector<KernelLaunchInfo> info;
  auto add = [&](auto head_dim) {
    using Dense = FwdConfig<decltype(head_dim)::value, false>;
    using Layout = FwdConfig<decltype(head_dim)::value, true>;
    using DenseMods = FwdConfig<decltype(head_dim)::value, false, true>;  // the layout instance's are Layout's
    info.push_back({"attention_fwd_kernel", decltype(head_dim)::value, Dense::kThreads,
                    int(Dense::kSmemElems * 2)});  // 2-byte elements (fp16 / bf16)
    info.push_back({"attention_fwd_kernel[layout]", decltype(head_dim)::value, Layout::kThreads,
                    int(Layout::kSmemElems * 2)});
    info.push_back({"attention_fwd_kernel[mods]", decltype(head_dim)::value, DenseMods::kThreads,
                    int(DenseMods::kSmemElems * 2)});
  };
  for_each_head_dim(add);
  info.push_back({"attention_split_merge_kernel", 0, kMergeWarps * 32, 0});  // any head dim (runtime loop)
  return info;
}

}  // namespace flashattn
