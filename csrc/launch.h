// Host entry points of the CUDA kernels: what the pybind11 bindings call.
//
// Each one picks the compiled instance for params.head_dim / params.dtype, launches on `stream`,
// and checks every CUDA call and the launch itself: a failure throws std::runtime_error whose
// message names the kernel (pybind11 turns it into a Python RuntimeError).
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace flashattn {

// out, lse from q, k, v (with params.pe applied to q/k tiles after load).
void run_attention_forward(const AttentionParams& params, cudaStream_t stream);

// dq, dk, dv from dout, q, k, v, out, lse (params.delta is scratch the caller allocated).
// dq/dk are gradients w.r.t. the user's (unencoded) q/k: the inverse encoding is applied in-kernel.
void run_attention_backward(const AttentionParams& params, cudaStream_t stream);

}  // namespace flashattn
