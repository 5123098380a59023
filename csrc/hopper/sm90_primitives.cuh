// Hopper (sm_90 / sm_90a) building blocks of the warp-specialized kernels: mbarriers, TMA tensor loads,
// TMA tensor stores and reduce-adds (shared -> global) with their bulk async-groups, the async-proxy
// fence, wgmma (warpgroup MMA) with its fence/commit/wait, and setmaxnreg.
//
// Each is inline PTX written once here, no CUTLASS/CuTe; the PTX ISA section it follows is named at
// each group (PTX ISA 8.x titles; the section numbers move between releases). The shared-memory
// layout wgmma and TMA agree on, and the descriptors, are in smem_layout.h; tensor maps in tma.h.
//
// Architecture guards: this header compiles in every build of the extension. The sm_90 instructions
// (mbarrier transaction counts, cp.async.bulk.tensor, cp.reduce.async.bulk.tensor, cp.async.bulk
// commit/wait_group, fence.proxy.async) are emitted for
// __CUDA_ARCH__ >= 900; wgmma and setmaxnreg only exist in the arch-specific target sm_90a
// (-gencode=arch=compute_90a,code=sm_90a, which defines __CUDA_ARCH_FEAT_SM90_ALL). Elsewhere (sm_80
// builds, plain sm_90 PTX) the functions compile to a trap: only sm_90a kernels may call them, and a
// kernel that is not built for sm_90a must not be launched.
//
// wgmma in one paragraph (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions"): a warpgroup = 4 consecutive warps starting at a warp index divisible by 4 (128
// threads) computes D(64 x N, f32) (+)= A(64 x 16) * B(16 x N) per instruction, asynchronously.
// B is always in shared memory (descriptor); A in shared memory (descriptor, "SS") or in registers
// ("RS"). For C = A B^T with A [m][k] and B [n][k] both row-major in smem, both are K-major:
// trans-a = trans-b = 0. Sequence: wgmma_fence() (orders prior register/smem writes before the async
// reads), the wgmma calls, wgmma_commit_group(), and wgmma_wait_group<N>() before reading D or
// overwriting the smem/registers the group read.
// Accumulator layout (m64nNk16, f32; per thread N/2 floats): warp w = (thread % 128) / 32 owns rows
// 16w..16w+15; with lane = thread % 32, g = lane / 4, t = lane % 4, for each n8 slice j = 0..N/8-1:
//     d[4j + 0], d[4j + 1] = D[16w + g    ][8j + 2t, 8j + 2t + 1]
//     d[4j + 2], d[4j + 3] = D[16w + g + 8][8j + 2t, 8j + 2t + 1]
// (the mma.sync m16n8 C layout of primitives.cuh, repeated over n8 slices and stacked over 4 warps).
// A from registers (k16 slice, 4 x .b32, two 16-bit elements each, lower column in the low half):
//     a[0] = A[16w + g][2t, 2t+1]   a[1] = A[16w + g + 8][2t, 2t+1]
//     a[2] = A[16w + g][2t+8, 2t+9] a[3] = A[16w + g + 8][2t+8, 2t+9]
// which is the mma.sync A fragment again: the packed accumulators of n8 slices 2c, 2c+1 are the A
// registers of k16 slice c (accum_to_a_frag in primitives.cuh), so P never leaves registers for P V.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../primitives.cuh"
#include "smem_layout.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FLASHATTN_SM90_ENABLED 1
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLASHATTN_SM90A_ENABLED 1
#endif

namespace flashattn {
namespace hopper {

// Reached only when an instruction of a newer arch is called from a build without it.
__device__ __forceinline__ void unsupported_arch() {
#if defined(__CUDA_ARCH__)
  __trap();
#endif
}

#if defined(FLASHATTN_SM90_ENABLED)
#define FLASHATTN_SM90_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FLASHATTN_SM90_ASM(...) ::flashattn::hopper::unsupported_arch()
#endif
#if defined(FLASHATTN_SM90A_ENABLED)
#define FLASHATTN_SM90A_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FLASHATTN_SM90A_ASM(...) ::flashattn::hopper::unsupported_arch()
#endif

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The warpgroup of this thread, read from lane 0 so the compiler knows it is warp-uniform (role
// branches on it then stay free of divergence, which setmaxnreg and wgmma's .aligned require).
__device__ __forceinline__ int warpgroup_index() { return __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0); }

// ---- mbarrier (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier") ------------
// A 64-bit shared-memory barrier with a phase bit. A phase completes when `count` arrivals have been
// made AND the transaction count (bytes announced by arrive.expect_tx, decremented by TMA's
// complete_tx) is back to 0; then the phase flips. Waiters wait for the phase with a given parity to
// complete: the producer/consumer ring uses parity (use / stages) & 1, and a fresh barrier counts its
// "previous" phase (parity 1) as complete, so the first wait on an empty slot with parity 1 passes.

// One thread initialises; then fence_barrier_init() and a CTA barrier before any other thread uses it.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  FLASHATTN_SM90_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}

// Makes the initialisation visible to the async proxy (TMA's complete_tx) and other threads.
__device__ __forceinline__ void fence_barrier_init() {
  FLASHATTN_SM90_ASM("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Arrive (count 1) and announce `bytes` transaction bytes for this phase (the producer, before its loads).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  FLASHATTN_SM90_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                     : "memory");
}

// Plain arrive (count 1): a consumer releasing a ring slot.
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  FLASHATTN_SM90_ASM("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// True once the phase of parity `parity` has completed (try_wait may suspend the thread for a
// hardware-chosen time before returning false, so the loop below does not spin hot).
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  FLASHATTN_SM90_ASM(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait(bar, parity)) {
  }
}

// ---- TMA (PTX ISA "Data Movement and Conversion Instructions: cp.async.bulk.tensor") ------------------
// One thread issues the load of one box (tma.h) of the tensor map `map` (the address of a
// __grid_constant__ CUtensorMap kernel parameter) at element coordinates c0 (innermost) .. into shared
// memory at `dst` (1024-aligned for the 128B swizzle); completion decrements `bar`'s transaction count
// by the box's bytes (complete_tx). The .shared::cluster destination is this CTA's own shared memory
// when the kernel is not launched as a cluster.

__device__ __forceinline__ void tma_prefetch_descriptor(const void* map) {
  FLASHATTN_SM90_ASM("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

__device__ __forceinline__ void tma_load_2d(void* dst, const void* map, uint64_t* bar, int32_t c0, int32_t c1) {
  FLASHATTN_SM90_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_load_3d(void* dst, const void* map, uint64_t* bar, int32_t c0, int32_t c1,
                                            int32_t c2) {
  FLASHATTN_SM90_ASM(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void tma_load_4d(void* dst, const void* map, uint64_t* bar, int32_t c0, int32_t c1,
                                            int32_t c2, int32_t c3) {
  FLASHATTN_SM90_ASM(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// ---- TMA store and reduce-add, shared -> global (PTX ISA "Data Movement and Conversion Instructions:
//      cp.async.bulk.tensor" (the .global.shared::cta direction) and "cp.reduce.async.bulk.tensor") ------------
// One thread issues the copy of one box of the tensor map `map` at element coordinates c0 (innermost) ..
// from shared memory at `src` (the box laid out as a load would write it: 128-byte aligned, 1024 for the
// 128B swizzle). Elements of the box outside the tensor's bounds are not written (a tail tile is clipped).
// The store overwrites global memory; the reduce-add adds each element to global memory, the operation
// and element type coming from the instruction (.add) and the tensor map (fp32 for the dQ accumulator).
// Each element's reduction is performed atomically (as red.global.add), so boxes of different CTAs that
// overlap accumulate; the order of the adds, hence the fp32 rounding of the sum, is not fixed.
// Ordering: the shared memory being copied was written by ordinary stores (the generic proxy), so every
// writing thread executes fence_proxy_async_shared() and then a barrier orders them before the issuing
// thread. Completion is tracked per thread by bulk async-groups, not mbarriers: bulk_commit_group() closes
// the copies this thread issued since the previous commit into a group; bulk_wait_group_read<N>() returns
// when at most N of its groups are still reading their shared memory (the buffer may then be rewritten),
// bulk_wait_group<N>() when at most N are incomplete (their global writes performed). A CTA must not exit
// while a group still reads its shared memory: wait (at least .read<0>) before the end of the kernel.

__device__ __forceinline__ void tma_store_2d(const void* map, const void* src, int32_t c0, int32_t c1) {
  FLASHATTN_SM90_ASM("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                         reinterpret_cast<uint64_t>(map)),
                     "r"(smem_u32(src)), "r"(c0), "r"(c1)
                     : "memory");
}

__device__ __forceinline__ void tma_store_3d(const void* map, const void* src, int32_t c0, int32_t c1, int32_t c2) {
  FLASHATTN_SM90_ASM("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
                         reinterpret_cast<uint64_t>(map)),
                     "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
                     : "memory");
}

__device__ __forceinline__ void tma_store_4d(const void* map, const void* src, int32_t c0, int32_t c1, int32_t c2,
                                             int32_t c3) {
  FLASHATTN_SM90_ASM("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                         reinterpret_cast<uint64_t>(map)),
                     "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
                     : "memory");
}

__device__ __forceinline__ void tma_reduce_add_2d(const void* map, const void* src, int32_t c0, int32_t c1) {
  FLASHATTN_SM90_ASM("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                         reinterpret_cast<uint64_t>(map)),
                     "r"(smem_u32(src)), "r"(c0), "r"(c1)
                     : "memory");
}

__device__ __forceinline__ void tma_reduce_add_3d(const void* map, const void* src, int32_t c0, int32_t c1,
                                                  int32_t c2) {
  FLASHATTN_SM90_ASM(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void tma_reduce_add_4d(const void* map, const void* src, int32_t c0, int32_t c1,
                                                  int32_t c2, int32_t c3) {
  FLASHATTN_SM90_ASM(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// (PTX ISA "cp.async.bulk.commit_group", "cp.async.bulk.wait_group")
__device__ __forceinline__ void bulk_commit_group() {
  FLASHATTN_SM90_ASM("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Waits until at most kPending of this thread's bulk groups still read their shared-memory source.
template <int kPending>
__device__ __forceinline__ void bulk_wait_group_read() {
  static_assert(kPending >= 0, "cp.async.bulk.wait_group takes a non-negative integer constant");
  FLASHATTN_SM90_ASM("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// Waits until at most kPending of this thread's bulk groups are incomplete (writes to global memory done).
template <int kPending>
__device__ __forceinline__ void bulk_wait_group() {
  static_assert(kPending >= 0, "cp.async.bulk.wait_group takes a non-negative integer constant");
  FLASHATTN_SM90_ASM("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- proxy fence (PTX ISA "Parallel Synchronization and Communication Instructions: membar/fence",
//      proxy kinds) ---------------------------------------------------------------------------------
// Shared memory written by ordinary stores (st.shared, stmatrix) and read next by wgmma or TMA (the
// "async proxy") needs this fence in each writing thread, before the barrier that orders them.
__device__ __forceinline__ void fence_proxy_async_shared() {
  FLASHATTN_SM90_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- named barriers (PTX ISA "bar.sync / bar.arrive") --------------------------------------------------
// Barrier `id` (1..15; 0 is __syncthreads) completes when `threads` threads (a multiple of 32) have
// arrived; bar.sync arrives and waits, bar.arrive only arrives. Warpgroups use them to order work among
// themselves without stopping the producer (the ping-pong between consumer warpgroups, a warpgroup's
// own shared-memory handoffs). Plain sm_70+ instructions: no guard needed.
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- shared-memory stores by 32-bit address, and a value the compiler must not hoist ---------------------
// The Hopper kernels compute swizzled store addresses from a few per-thread bits; written as pointers, the
// compiler hoisted all of a tile's 64-bit addresses out of the tile loop and spilled them.
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_shared_v2_f32(uint32_t addr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(x), "f"(y) : "memory");
}
// x, as a value the compiler cannot see through: what is computed from it inside a loop stays inside.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// ---- wgmma ordering (PTX ISA "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group") ------------------

// Before the first wgmma of a batch, and whenever the accumulators or the A registers were written by
// other instructions since the previous wgmma.
__device__ __forceinline__ void wgmma_fence() { FLASHATTN_SM90A_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// Closes the batch of wgmma issued since the previous commit into one group.
__device__ __forceinline__ void wgmma_commit_group() {
  FLASHATTN_SM90A_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed groups are still running (0: all done).
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(kPending >= 0 && kPending <= 7, "wgmma.wait_group takes 0..7");
  FLASHATTN_SM90A_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving reads/writes of the accumulator registers across the asynchronous
// wgmma (the asm statements do not tell it that the registers are in use until wait_group).
template <int kRegs>
__device__ __forceinline__ void wgmma_fence_operand(float (&d)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int kRegs>
__device__ __forceinline__ void wgmma_fence_operand(uint32_t (&r)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// The A registers of k16 slice c (a wgmma from registers) from an accumulator's n8 slices 2c and 2c + 1,
// rounded to T (the layouts in the header comment): P for O = P V in the forward, P^T and dS^T for dV, dK
// in the backward, which never leave registers.
template <typename T, int kRegs>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&acc)[kRegs], int c) {
  a[0] = pack2<T>(acc[8 * c + 0], acc[8 * c + 1]);
  a[1] = pack2<T>(acc[8 * c + 2], acc[8 * c + 3]);
  a[2] = pack2<T>(acc[8 * c + 4], acc[8 * c + 5]);
  a[3] = pack2<T>(acc[8 * c + 6], acc[8 * c + 7]);
}

// ---- setmaxnreg (PTX ISA "Miscellaneous Instructions: setmaxnreg") ---------------------------------------
// Moves registers between the warpgroups of a CTA: a producer warpgroup that only issues TMA gives
// registers back (dec), the consumer warpgroups that hold accumulators take them (inc). kRegs is per
// thread, a multiple of 8 in [24, 256]; every warp of the warpgroup must execute the same one. ptxas
// honours it only when the kernel has a register cap at entry (__launch_bounds__(threads, 1) or
// -maxrregcount); otherwise it warns (C7508) and ignores it. inc blocks until the registers released by
// dec are available: sum over warpgroups of 128 * kRegs must fit what the CTA was launched with.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg: multiple of 8 in [24, 256]");
  FLASHATTN_SM90A_ASM("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg: multiple of 8 in [24, 256]");
  FLASHATTN_SM90A_ASM("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma.mma_async m64nNk16, f32 += {bf16, f16} (PTX ISA "wgmma.mma_async") ---------------------------
// Wgmma<N, T>::ss(d, desc_a, desc_b, scale_d): D (+)= A B with A and B from shared memory;
// Wgmma<N, T>::rs(d, a, desc_b, scale_d): A from registers (layout in the header comment).
// scale_d = 0 overwrites D (first k16 step), 1 accumulates. kTransA / kTransB = 0 for K-major operands
// (row-major [m][k] A, [n][k] B), 1 for MN-major ([k][m], [k][n]; e.g. V in O = P V). d holds N/2 floats.
// The operand lists are spelled out below (inline asm takes no loops): FLASHATTN_WGMMA_ACC_<N> is the
// "{%0, ..., %(N/2-1)}" accumulator list, FLASHATTN_WGMMA_OUT_<N>(d) the matching "+f" operands.
template <int N, typename T>
struct Wgmma;

#define FLASHATTN_WGMMA_ACC_64 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
  "}"
#define FLASHATTN_WGMMA_OUT_64(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

#define FLASHATTN_WGMMA_ACC_128 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
  "}"
#define FLASHATTN_WGMMA_OUT_128(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

#define FLASHATTN_WGMMA_ACC_256 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
  "}"
#define FLASHATTN_WGMMA_OUT_256(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// One specialization of Wgmma<N, CTYPE>; I0..I6 are the asm operand numbers after the N/2 accumulators
// (N/2 .. N/2 + 6), spelled as literals because they are pasted into the instruction text.
#define FLASHATTN_WGMMA_SPECIALIZE(N, CTYPE, PTX_TYPE, I0, I1, I2, I3, I4, I5, I6)                              \
  template <>                                                                                                 \
  struct Wgmma<N, CTYPE> {                                                                                    \
    static constexpr int kRegs = N / 2;                                                                       \
    template <int kTransA = 0, int kTransB = 0>                                                               \
    static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,            \
                                              int scale_d) {                                                  \
      FLASHATTN_SM90A_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" #I2 ", 0;\n"                                   \
                          "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "          \
                          FLASHATTN_WGMMA_ACC_##N ", %" #I0 ", %" #I1 ", p, 1, 1, %" #I3 ", %" #I4 ";\n}\n"   \
                          : FLASHATTN_WGMMA_OUT_##N(d)                                                        \
                          : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB));              \
    }                                                                                                         \
    template <int kTransB = 0>                                                                                \
    static __device__ __forceinline__ void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,     \
                                              int scale_d) {                                                  \
      FLASHATTN_SM90A_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %" #I5 ", 0;\n"                                   \
                          "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "          \
                          FLASHATTN_WGMMA_ACC_##N ", {%" #I0 ", %" #I1 ", %" #I2 ", %" #I3 "}, %" #I4         \
                          ", p, 1, 1, %" #I6 ";\n}\n"                                                         \
                          : FLASHATTN_WGMMA_OUT_##N(d)                                                        \
                          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d),            \
                            "n"(kTransB));                                                                    \
    }                                                                                                         \
  };

FLASHATTN_WGMMA_SPECIALIZE(64, __nv_bfloat16, "bf16", 32, 33, 34, 35, 36, 37, 38)
FLASHATTN_WGMMA_SPECIALIZE(64, __half, "f16", 32, 33, 34, 35, 36, 37, 38)
FLASHATTN_WGMMA_SPECIALIZE(128, __nv_bfloat16, "bf16", 64, 65, 66, 67, 68, 69, 70)
FLASHATTN_WGMMA_SPECIALIZE(128, __half, "f16", 64, 65, 66, 67, 68, 69, 70)
FLASHATTN_WGMMA_SPECIALIZE(256, __nv_bfloat16, "bf16", 128, 129, 130, 131, 132, 133, 134)
FLASHATTN_WGMMA_SPECIALIZE(256, __half, "f16", 128, 129, 130, 131, 132, 133, 134)

#undef FLASHATTN_WGMMA_SPECIALIZE

}  // namespace hopper
}  // namespace flashattn
