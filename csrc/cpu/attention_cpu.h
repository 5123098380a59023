// The CPU kernels' C interface (flashattn_py/backends/cpu_kernels.py loads it with ctypes): attention over
// sequences of per-sequence lengths (packed cu_seqlens batches, seqused_k, KV-cache decoding) read in place,
// forward and backward, for the calls where torch's fused CPU attention would need one call per sequence.
//
// Plain C++ with no torch or Python header: the library is a few seconds of g++, and the same build serves
// every torch. The Python side owns the semantics: it validates the call, computes each query row's visible
// key range with flashattn_py/semantics/masks.py (row_key_ranges) and passes it here; the kernels read
// those ranges and never decide what a query sees.
#pragma once

#include <cstdint>

extern "C" {

enum FlashattnCpuDtype : int32_t { kCpuFloat32 = 0, kCpuFloat16 = 1, kCpuBFloat16 = 2 };

// Strides in elements; the head dim of every tensor is contiguous (stride 1), checked by the caller.
struct FlashattnCpuStrides {
  int64_t batch, row, head;
};

struct FlashattnCpuArgs {
  int32_t dtype;        // FlashattnCpuDtype of q, k, v, out (and dout, dq, dk, dv)
  int32_t head_dim;     // 1 .. 256
  int32_t group_size;   // query heads per KV head (GQA); query head = kv head * group_size + member
  int32_t nheads_kv;
  float softmax_scale;
  int32_t num_sequences;
  // Per sequence s, six int64: q batch entry, first q row, end q row, k batch entry, first k row, end k row
  // (flashattn_py/backends/spans.py); rows index the bshd tensors (packed: rows of batch entry 0).
  const int64_t* spans;
  // Visible keys of query i of sequence s: [key_lo[row0[s] + i], key_hi[...]), sequence-relative key rows.
  const int64_t* row0;
  const int32_t* key_lo;
  const int32_t* key_hi;
  // Forward: q, k, v in; out, lse out. Backward: dout, q, k, v, out, lse in; dq, dk, dv out.
  const void *q, *k, *v, *dout;
  void *out, *dq, *dk, *dv;
  float* lse;  // natural log, written by the forward, read by the backward; -inf for a row that sees no key
  FlashattnCpuStrides q_strides, k_strides, v_strides, out_strides, dout_strides, dq_strides, dk_strides,
      dv_strides;
  FlashattnCpuStrides lse_strides;  // (batch, row, head): packed lse (heads, rows) has batch stride 0
};

// Work item w = sequence (w / nheads_kv) x KV head (w % nheads_kv), with every query head of its group;
// items [item_begin, item_end) of the call, so callers split a call over threads (the items write disjoint
// rows). Returns 0, or -1 for an unknown dtype / head dim out of range.
int flashattn_cpu_forward(const FlashattnCpuArgs* args, int64_t item_begin, int64_t item_end);
// dk, dv rows of a sequence's keys that no query sees are written as 0; rows outside every span are left alone.
int flashattn_cpu_backward(const FlashattnCpuArgs* args, int64_t item_begin, int64_t item_end);

// The same over chunks of items (chunk c: items bounds[c] .. bounds[c + 1] - 1), one per thread: on torch's
// OpenMP team once flashattn_cpu_attach_openmp succeeded, else one after the other on the calling thread.
int flashattn_cpu_forward_chunks(const FlashattnCpuArgs* args, const int64_t* bounds, int chunks);
int flashattn_cpu_backward_chunks(const FlashattnCpuArgs* args, const int64_t* bounds, int chunks);

// Attach the OpenMP runtime torch has loaded (its path, e.g. torch/lib/libgomp.so.1; never loads a second
// one): 0, or -1 when it is not loaded or lacks GOMP_parallel (the chunks then run on the calling thread).
int flashattn_cpu_attach_openmp(const char* library_path);

// The instruction set the kernels run with on this machine: "avx2+fma" or "baseline".
const char* flashattn_cpu_isa();

// sizeof(FlashattnCpuArgs), so the loader checks that its mirror of the struct has the same layout.
int64_t flashattn_cpu_args_size();

// The fp16 / bf16 conversions the kernels use, for tests (round to nearest even, NaN and inf kept).
void flashattn_cpu_convert_to_float(int32_t dtype, const uint16_t* src, float* dst, int64_t n);
void flashattn_cpu_convert_from_float(int32_t dtype, const float* src, uint16_t* dst, int64_t n);

}  // extern "C"
