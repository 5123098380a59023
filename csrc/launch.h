// Host entry points of the CUDA kernels: what the pybind11 bindings call.
//
// Each one picks the compiled instance for params.head_dim / params.dtype, launches on `stream`,
// and checks every CUDA call and the launch itself: a failure throws std::runtime_error whose
// message names the kernel (pybind11 turns it into a Python RuntimeError).
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "hopper/route.h"
#include "params.h"

namespace flashattn {

// out, lse from q, k, v (with params.pe applied to q/k tiles after load). `sm90`: the device and build
// facts and the user's opt-in with which hopper/route.h decides whether the sm_90a kernel runs the call.
void run_attention_forward(const AttentionParams& params, cudaStream_t stream,
                           const hopper::Sm90Context& sm90 = hopper::Sm90Context{});

// The Hopper forward (attention_fwd_sm90.cu): runs the call and returns true when hopper/route.h
// sm90_forward_takes() says it takes it, else returns false without launching.
bool run_attention_forward_sm90(const AttentionParams& params, cudaStream_t stream, const hopper::Sm90Context& sm90);

// dq, dk, dv from dout, q, k, v, out, lse (params.delta is scratch the caller allocated).
// dq/dk are gradients w.r.t. the user's (unencoded) q/k: the inverse encoding is applied in-kernel.
// `sm90` and `deterministic` decide with hopper/route.h whether the sm_90a backward runs the call.
void run_attention_backward(const AttentionParams& params, cudaStream_t stream,
                            const hopper::Sm90Context& sm90 = hopper::Sm90Context{}, bool deterministic = false);

// The Hopper backward (attention_bwd_sm90.cu): runs the call and returns true when hopper/route.h
// sm90_backward_takes() says it takes it, else returns false without launching.
bool run_attention_backward_sm90(const AttentionParams& params, cudaStream_t stream, const hopper::Sm90Context& sm90,
                                 bool deterministic);

// What each compiled instance launches with (the same for fp16 and bf16), for the static report's
// occupancy: ptxas reports registers, but threads per block and dynamic shared memory are launch
// parameters. Needs no GPU.
struct KernelLaunchInfo {
  std::string kernel;  // the __global__ function's name
  int head_dim;  // 0: one instance for every head dim
  int threads;
  int dynamic_smem_bytes;
};
std::vector<KernelLaunchInfo> forward_launch_info();
std::vector<KernelLaunchInfo> forward_sm90_launch_info();  // the Hopper forward's (sm_90a builds launch them)
std::vector<KernelLaunchInfo> backward_launch_info();
std::vector<KernelLaunchInfo> backward_sm90_launch_info();  // the Hopper backward's (sm_90a builds launch them)

}  // namespace flashattn
