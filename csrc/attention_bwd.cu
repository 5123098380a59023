// Attention backward on tensor cores (mma.sync): launches the delta preprocess, the dK/dV kernel and
// the dQ kernel (attention_bwd_*.cuh) for params.head_dim / params.dtype. Same algorithm as
// triton_kernels/attention_bwd.py: P is recomputed from Q, K and lse, nothing of size
// seqlen_q x seqlen_k is stored, and every gradient is written by exactly one CTA (deterministic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention_bwd_dkdv.cuh"
#include "attention_bwd_dq.cuh"
#include "attention_bwd_preprocess.cuh"
#include "dispatch.h"
#include "errors.h"
#include "launch.h"
#include "params.h"

namespace flashattn {
namespace {

// Tile sizes. Budget per thread: the dK/dV kernel keeps two 16 x (head_dim / kWarpsD) fp32
// accumulators plus S^T and dP^T (16 x kBlockM each), the dQ kernel one 16 x head_dim accumulator
// plus S and dP (16 x kBlockN each); both must stay under 255 registers without spilling. Shared
// memory (resident tiles + stages x streamed tiles, rows of head_dim + 8 elements) stays under
// 99 KB, the most an sm_86/sm_89 block may have (sm_80 and sm_90 allow more); two stages (the next
// streamed tile loads while this one is used) wherever that fits. Picked by compiling (ptxas -v),
// not yet tuned on a GPU.
// DkdvMods: the dK/dV tiles of the score-mods instance (softcap / ALiBi, score_mods.h), the same except
// where the modifications' few registers made the per-sequence instance spill (head_dim 96: 4 bytes on
// sm_80; 256: 16 bytes on sm_90): there it streams query tiles half as tall.
template <int kHeadDim>
struct BwdTiles;
//                     dK/dV: <D, key strips, D slices, BLOCK_M, stages>   dQ: <D, warps, BLOCK_N, stages>
template <>
struct BwdTiles<32> {
  using Dkdv = bwd::DkdvConfig<32, 4, 1, 64, 2>;
  using DkdvMods = Dkdv;
  using Dq = bwd::DqConfig<32, 4, 64, 2>;
};
template <>
struct BwdTiles<64> {
  using Dkdv = bwd::DkdvConfig<64, 4, 1, 64, 2>;
  using DkdvMods = Dkdv;
  using Dq = bwd::DqConfig<64, 4, 64, 2>;
};
template <>
struct BwdTiles<96> {
  using Dkdv = bwd::DkdvConfig<96, 4, 1, 64, 2>;
  using DkdvMods = bwd::DkdvConfig<96, 4, 1, 32, 2>;
  using Dq = bwd::DqConfig<96, 4, 64, 2>;
};
// head_dim 128: the two 16 x 128 dK/dV accumulators take 128 registers, so the streamed query
// tile is 32 rows (64 spilled). dQ streams 32-key tiles, which leaves room for two stages.
template <>
struct BwdTiles<128> {
  using Dkdv = bwd::DkdvConfig<128, 4, 1, 32, 2>;
  using DkdvMods = Dkdv;
  using Dq = bwd::DqConfig<128, 4, 32, 2>;
};
// head_dim 256: dK and dV of 16 keys x 256 would take 256 accumulator registers per thread, so two
// warps split the columns of each 16-key strip (kWarpsD = 2). dQ streams 16-key tiles: with 32 the
// dQ accumulator (128 registers) plus S and dP spilled on sm_90. Single stage: a second Q/dO (or
// K/V) buffer of 256-wide rows would pass 99 KB.
template <>
struct BwdTiles<256> {
  using Dkdv = bwd::DkdvConfig<256, 2, 2, 32, 1>;
  using DkdvMods = bwd::DkdvConfig<256, 2, 2, 16, 1>;
  using Dq = bwd::DqConfig<256, 4, 16, 1>;
};

// Allow `bytes` of dynamic shared memory (needed above the 48 KB default).
template <typename Kernel>
void allow_smem(Kernel kernel, int bytes, const char* name) {
  if (bytes > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), name);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, int kHeadDim, bool kLayout, bool kMods>
void launch_backward(const AttentionParams& p, cudaStream_t stream) {
  using Tiles = BwdTiles<kHeadDim>;
  using Dkdv = std::conditional_t<kMods, typename Tiles::DkdvMods, typename Tiles::Dkdv>;
  using Dq = typename Tiles::Dq;

  bwd::launch_attention_bwd_preprocess<T, kHeadDim, kLayout>(p, stream);
  // With seqlen_q == 0 every key block sees no query: the kernel still runs and writes dK = dV = 0.
  if (p.seqlen_k > 0) {
    auto kernel = bwd::attention_bwd_dkdv_kernel<T, Dkdv, kLayout, kMods>;
    allow_smem(kernel, Dkdv::kSmemBytes, "cudaFuncSetAttribute(attention_bwd_dkdv_kernel)");
    const dim3 grid(static_cast<unsigned>(ceil_div(p.seqlen_k, Dkdv::kBlockN)), p.nheads_kv, p.batch);
    kernel<<<grid, Dkdv::kThreads, Dkdv::kSmemBytes, stream>>>(p);
    check_launch("attention_bwd_dkdv_kernel");
  }
  // With seqlen_k == 0 no key block is visited and dQ = 0 is written.
  if (p.seqlen_q > 0) {
    auto kernel = bwd::attention_bwd_dq_kernel<T, Dq, kLayout, kMods>;
    allow_smem(kernel, Dq::kSmemBytes, "cudaFuncSetAttribute(attention_bwd_dq_kernel)");
    const dim3 grid(static_cast<unsigned>(ceil_div(p.seqlen_q, Dq::kBlockM)), p.nheads_q, p.batch);
    kernel<<<grid, Dq::kThreads, Dq::kSmemBytes, stream>>>(p);
    check_launch("attention_bwd_dq_kernel");
  }
}

}  // namespace

std::vector<KernelLaunchInfo> backward_launch_info() {
  std::vector<KernelLaunchInfo> info;
  auto add = [&](auto head_dim) {
    constexpr int kD = decltype(head_dim)::value;
    using Tiles = BwdTiles<kD>;
    info.push_back({"attention_bwd_preprocess_kernel", kD, bwd::kPreprocessThreads, 0});
    info.push_back({"attention_bwd_dkdv_kernel", kD, Tiles::Dkdv::kThreads, Tiles::Dkdv::kSmemBytes});
    info.push_back({"attention_bwd_dkdv_kernel[mods]", kD, Tiles::DkdvMods::kThreads, Tiles::DkdvMods::kSmemBytes});
    info.push_back({"attention_bwd_dq_kernel", kD, Tiles::Dq::kThreads, Tiles::Dq::kSmemBytes});
  };
  for_each_head_dim(add);
  return info;
}

void run_attention_backward(const AttentionParams& p, cudaStream_t stream, const hopper::Sm90Context& sm90,
                            bool deterministic) {
  // Nothing to write: dq/dk/dv are empty tensors. (seqlen_q == 0 or seqlen_k == 0 alone still
  // launches the kernel that zero-fills the non-empty gradients.)
  if (p.batch == 0 || p.nheads_q == 0) return;
  check_common(p, "backward");
  check_layout(p, "backward", /*decoding=*/false);
  // hopper/route.h: the calls the sm_90a kernel takes (the mma.sync kernels below never read dq_accum).
  if (run_attention_backward_sm90(p, stream, sm90, deterministic)) return;
  if (p.pe.kind != int(PEKind::kNone) && p.pe.q_encoded) {  // these kernels encode q themselves
    throw std::invalid_argument("flashattn_py CUDA backward: pe.q_encoded (q pre-encoded) is for the Hopper backward, "
                                "which does not take this call (csrc/hopper/route.h)");
  }
  dispatch(p, "backward", [&](auto type, auto head_dim, auto layout, auto mods) {
    launch_backward<typename decltype(type)::type, decltype(head_dim)::value, decltype(layout)::value,
                    decltype(mods)::value>(p, stream);
  });
}

}  // namespace flashattn
