// The CPU kernels' library (interface: attention_cpu.h): the kernels of attention_cpu_kernels.inc compiled
// twice, for x86-64's baseline (SSE2) and for AVX2 + FMA + F16C, the latter chosen at run time where the
// CPU has them. Built by setup.py as flashattn_py/_cpu_kernels*.so, loaded by backends/cpu_kernels.py.
#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <type_traits>
#include <vector>

namespace flashattn_cpu {
namespace baseline {
#include "attention_cpu_kernels.inc"
}  // namespace baseline
}  // namespace flashattn_cpu

// GCC's target pragma compiles the second copy for AVX2 (clang would need its own attribute form; it builds
// the baseline copy alone).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FLASHATTN_CPU_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace flashattn_cpu {
namespace avx2 {
#include "attention_cpu_kernels.inc"
}  // namespace avx2
}  // namespace flashattn_cpu
#pragma GCC pop_options
#endif

namespace {

bool use_avx2() {
#ifdef FLASHATTN_CPU_AVX2
  // FLASHATTN_CPU_ISA=baseline runs the baseline copy anyway (the tests check both copies on one machine).
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") &&
                          !(std::getenv("FLASHATTN_CPU_ISA") && std::strcmp(std::getenv("FLASHATTN_CPU_ISA"), "baseline") == 0);
  return has;
#else
  return false;
#endif
}

// torch's OpenMP runtime, when attached (flashattn_cpu_attach_openmp): the kernels' items then run on the
// team torch's own CPU ops run on. A thread pool of our own would fight that team, whose threads spin for
// milliseconds after each parallel op (libgomp's default wait policy) on the same cores (measured: a
// decoding step 1.7x slower right after a torch op than after a pause).
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpQuery = int (*)();
GompParallel gomp_parallel = nullptr;
OmpQuery omp_thread_num = nullptr, omp_num_threads = nullptr;

using Kernel = int (*)(const FlashattnCpuArgs*, int64_t, int64_t);

struct Team {
  Kernel kernel;
  const FlashattnCpuArgs* args;
  const int64_t* bounds;  // chunk c is items bounds[c] .. bounds[c + 1] - 1
  int chunks;
  int status;
};

void team_member(void* data) {
  Team& team = *static_cast<Team*>(data);
  const int members = omp_num_threads();
  for (int c = omp_thread_num(); c < team.chunks; c += members)
    if (team.kernel(team.args, team.bounds[c], team.bounds[c + 1]) != 0) team.status = -1;
}

int run_chunks(Kernel kernel, const FlashattnCpuArgs* args, const int64_t* bounds, int chunks) {
  if (gomp_parallel == nullptr || chunks < 2) {
    for (int c = 0; c < chunks; ++c)
      if (kernel(args, bounds[c], bounds[c + 1]) != 0) return -1;
    return 0;
  }
  Team team{kernel, args, bounds, chunks, 0};
  gomp_parallel(team_member, &team, unsigned(chunks), 0);
  return team.status;
}

}  // namespace

extern "C" {

int flashattn_cpu_attach_openmp(const char* library_path) {
  void* handle = dlopen(library_path, RTLD_NOW | RTLD_NOLOAD);  // the copy torch loaded, not a second one
  if (handle == nullptr) return -1;
  auto parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  auto thread_num = reinterpret_cast<OmpQuery>(dlsym(handle, "omp_get_thread_num"));
  auto num_threads = reinterpret_cast<OmpQuery>(dlsym(handle, "omp_get_num_threads"));
  if (parallel == nullptr || thread_num == nullptr || num_threads == nullptr) return -1;
  omp_thread_num = thread_num;
  omp_num_threads = num_threads;
  gomp_parallel = parallel;
  return 0;
}

int flashattn_cpu_forward_chunks(const FlashattnCpuArgs* args, const int64_t* bounds, int chunks) {
  return run_chunks(flashattn_cpu_forward, args, bounds, chunks);
}

int flashattn_cpu_backward_chunks(const FlashattnCpuArgs* args, const int64_t* bounds, int chunks) {
  return run_chunks(flashattn_cpu_backward, args, bounds, chunks);
}

int flashattn_cpu_forward(const FlashattnCpuArgs* args, int64_t item_begin, int64_t item_end) {
#ifdef FLASHATTN_CPU_AVX2
  if (use_avx2()) return flashattn_cpu::avx2::forward(args, item_begin, item_end);
#endif
  return flashattn_cpu::baseline::forward(args, item_begin, item_end);
}

int flashattn_cpu_backward(const FlashattnCpuArgs* args, int64_t item_begin, int64_t item_end) {
#ifdef FLASHATTN_CPU_AVX2
  if (use_avx2()) return flashattn_cpu::avx2::backward(args, item_begin, item_end);
#endif
  return flashattn_cpu::baseline::backward(args, item_begin, item_end);
}

const char* flashattn_cpu_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

int64_t flashattn_cpu_args_size() { return int64_t(sizeof(FlashattnCpuArgs)); }

void flashattn_cpu_convert_to_float(int32_t dtype, const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = dtype == kCpuBFloat16 ? flashattn_cpu::baseline::bf16_to_float(src[i])
                                   : flashattn_cpu::baseline::half_to_float(src[i]);
}

void flashattn_cpu_convert_from_float(int32_t dtype, const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = dtype == kCpuBFloat16 ? flashattn_cpu::baseline::float_to_bf16(src[i])
                                   : flashattn_cpu::baseline::float_to_half(src[i]);
}

}  // extern "C"
