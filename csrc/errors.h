// CUDA error checks that name the kernel or call that failed (thrown as std::runtime_error, which
// pybind11 raises in Python as RuntimeError).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace flashattn {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("flashattn_py CUDA error in ") + what + ": " +
                             cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
  }
}

// After a <<<...>>> launch: configuration errors surface from cudaGetLastError, not the launch.
inline void check_launch(const char* kernel_name) { check_cuda(cudaGetLastError(), kernel_name); }

}  // namespace flashattn
