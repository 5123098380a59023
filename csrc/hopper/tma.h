// Tensor maps for the Hopper TMA copies (cp.async.bulk.tensor loads and stores, cp.reduce.async.bulk.tensor
// reduce-adds): the arguments of the driver's cuTensorMapEncodeTiled for a tile of a bshd bf16/fp16 tensor
// (the operands) or of an fp32 tensor (the backward's dQ accumulator), and the call that encodes them.
//
// Split in two so the index math is testable without CUDA:
//   * TmaTileArgs / tma_tile_args / bshd_tile_args: plain C++ (no CUDA header), compiled by the host
//     compiler in tests/test_cuda_hopper_primitives.py (csrc/hopper/tests/layout_probe.cpp). They
//     check every rule the driver would refuse with a bare CUDA_ERROR_INVALID_VALUE and throw
//     std::invalid_argument naming the rule instead.
//   * encode_tensor_map: the driver call, compiled only under nvcc (or with FLASHATTN_TMA_DRIVER_API
//     defined, for a host compiler that has the CUDA include path). The runtime is linked statically
//     and the extension does not link libcuda, so cuTensorMapEncodeTiled is reached through the
//     runtime's cudaGetDriverEntryPoint(ByVersion), as the CUDA programming guide recommends.
//
// Rules (cuda.h, cuTensorMapEncodeTiled): rank 1..5; global address 16-byte aligned; globalDim[i] in
// [1, 2^32]; globalStrides (bytes, dims 1..rank-1) multiples of 16 and < 2^40; boxDim[i] in [1, 256] with
// boxDim[0] * element size a multiple of 16 and, with a swizzle, <= the swizzle span (128 bytes here);
// elementStrides in [1, 8]. TMA dimension 0 is the innermost (contiguous) one, the reverse of the
// (b, s, h, d) order: a bshd tensor is the rank-4 TMA tensor (d, s, h, b).
// What the kernel gets: each load writes one box of boxDim[1] rows x boxDim[0] elements into shared
// memory with the 128B swizzle of smem_layout.h; out-of-bounds elements (rows past seqlen, columns past
// head_dim) are written as zeros and still count toward the mbarrier's transaction bytes. A store or
// reduce-add reads one box from shared memory (same layout) and writes only its in-bounds elements.
// Element sizes: 2 bytes (bf16/fp16: a 128B-swizzled row is 64 elements), 4 bytes (fp32: 32 elements;
// unswizzled, an fp32 box row may be up to 256 elements = 1024 bytes).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace flashattn {
namespace hopper {

// Values of the driver's enums (cuda.h), restated so this part needs no CUDA header; the driver part
// below static_asserts that they agree.
enum class TmaDataType : uint32_t { kFloat16 = 6, kFloat32 = 7, kBFloat16 = 9 };
enum class TmaInterleave : uint32_t { kNone = 0 };
enum class TmaSwizzle : uint32_t { kNone = 0, k32B = 1, k64B = 2, k128B = 3 };
enum class TmaL2Promotion : uint32_t { kNone = 0, k64B = 1, k128B = 2, k256B = 3 };
enum class TmaOobFill : uint32_t { kZero = 0 };  // CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: zeros

constexpr int kTmaMaxRank = 5;

// The arguments of cuTensorMapEncodeTiled except the output and the global address.
struct TmaTileArgs {
  TmaDataType data_type = TmaDataType::kBFloat16;
  uint32_t rank = 0;
  uint64_t global_dim[kTmaMaxRank] = {};          // elements, innermost first
  uint64_t global_strides[kTmaMaxRank - 1] = {};  // bytes, of dims 1..rank-1
  uint32_t box_dim[kTmaMaxRank] = {};             // elements per load, innermost first
  uint32_t element_strides[kTmaMaxRank] = {};     // all 1: dense boxes
  TmaInterleave interleave = TmaInterleave::kNone;
  TmaSwizzle swizzle = TmaSwizzle::k128B;
  TmaL2Promotion l2_promotion = TmaL2Promotion::k128B;
  TmaOobFill oob_fill = TmaOobFill::kZero;
  uint32_t box_bytes = 0;  // bytes one load writes to shared memory (the mbarrier's expect_tx share)
};

// Bytes per element: 2 for the operands (bf16/fp16), 4 for fp32 (the dQ accumulator of the backward).
constexpr uint32_t tma_element_bytes(TmaDataType type) { return type == TmaDataType::kFloat32 ? 4 : 2; }

inline void tma_require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("flashattn_py TMA tensor map: " + what);
}

// A tiled tensor map of `rank` dims (innermost first): dims in elements, strides_bytes of dims
// 1..rank-1, box in elements; every rule the driver checks, checked here with its reason.
inline TmaTileArgs tma_tile_args(TmaDataType type, uint32_t rank, const uint64_t* dims,
                                 const uint64_t* strides_bytes, const uint32_t* box,
                                 TmaSwizzle swizzle = TmaSwizzle::k128B) {
  tma_require(rank >= 1 && rank <= uint32_t(kTmaMaxRank), "rank must be 1..5, got " + std::to_string(rank));
  TmaTileArgs a;
  a.data_type = type;
  a.rank = rank;
  a.swizzle = swizzle;
  const uint32_t element_bytes = tma_element_bytes(type);
  a.box_bytes = element_bytes;
  for (uint32_t i = 0; i < rank; ++i) {
    const std::string dim = "dim " + std::to_string(i);
    tma_require(dims[i] >= 1 && dims[i] <= (uint64_t(1) << 32),
                dim + " size must be in [1, 2^32], got " + std::to_string(dims[i]));
    tma_require(box[i] >= 1 && box[i] <= 256, dim + " box must be in [1, 256], got " + std::to_string(box[i]));
    a.global_dim[i] = dims[i];
    a.box_dim[i] = box[i];
    a.element_strides[i] = 1;
    a.box_bytes *= box[i];
  }
  for (uint32_t i = 0; i + 1 < rank; ++i) {
    const uint64_t s = strides_bytes[i];
    tma_require(s % 16 == 0, "the stride of dim " + std::to_string(i + 1) + " is " + std::to_string(s) +
                                 " bytes, not a multiple of 16 (TMA needs 16-byte aligned rows: pad the tensor or "
                                 "use the non-TMA kernel)");
    tma_require(s < (uint64_t(1) << 40), "the stride of dim " + std::to_string(i + 1) + " must be < 2^40 bytes");
    a.global_strides[i] = s;
  }
  const uint32_t inner_bytes = box[0] * element_bytes;
  tma_require(inner_bytes % 16 == 0,
              "the inner box is " + std::to_string(inner_bytes) + " bytes, not a multiple of 16");
  const uint32_t span = swizzle == TmaSwizzle::k128B ? 128 : swizzle == TmaSwizzle::k64B ? 64
                        : swizzle == TmaSwizzle::k32B ? 32 : 0;
  tma_require(span == 0 || inner_bytes <= span, "the inner box is " + std::to_string(inner_bytes) +
                                                    " bytes, more than the swizzle span of " + std::to_string(span));
  return a;
}

// The tile of a bshd tensor (batch, seqlen, heads, head_dim) with element strides (stride_b, stride_s,
// stride_h, 1) that one load (store, reduce-add) moves: box_rows consecutive rows (sequence positions) of
// one (b, h) and box_cols consecutive channels (with the 128B swizzle at most 128 bytes: 64 bf16/fp16, 32
// fp32). The kernel's coordinates are then {col, row, head, batch}. Wider tiles are several boxes (panels
// of smem_layout.h). The swizzle is 128B unless asked otherwise (an unswizzled fp32 box of up to 256 columns
// for an accumulator that shared memory holds row-major).
inline TmaTileArgs bshd_tile_args(TmaDataType type, int64_t batch, int64_t seqlen, int64_t heads, int64_t head_dim,
                                  int64_t stride_b, int64_t stride_s, int64_t stride_h, uint32_t box_rows,
                                  uint32_t box_cols = 64, TmaSwizzle swizzle = TmaSwizzle::k128B) {
  tma_require(batch >= 1 && seqlen >= 1 && heads >= 1 && head_dim >= 1, "every bshd extent must be >= 1");
  tma_require(stride_b >= 0 && stride_s >= 0 && stride_h >= 0, "negative strides are not supported");
  const uint64_t dims[4] = {uint64_t(head_dim), uint64_t(seqlen), uint64_t(heads), uint64_t(batch)};
  const uint64_t element_bytes = tma_element_bytes(type);
  const uint64_t strides[3] = {uint64_t(stride_s) * element_bytes, uint64_t(stride_h) * element_bytes,
                               uint64_t(stride_b) * element_bytes};
  const uint32_t box[4] = {box_cols, box_rows, 1, 1};
  return tma_tile_args(type, 4, dims, strides, box, swizzle);
}

// The global address rule, separate because the host tests have no device pointer.
inline void tma_check_address(uint64_t address) {
  tma_require(address % 16 == 0, "the tensor's address is not 16-byte aligned (offset " +
                                     std::to_string(address % 16) + " bytes)");
}

}  // namespace hopper
}  // namespace flashattn

#if defined(__CUDACC__) || defined(FLASHATTN_TMA_DRIVER_API)
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace flashattn {
namespace hopper {

static_assert(uint32_t(TmaDataType::kFloat16) == CU_TENSOR_MAP_DATA_TYPE_FLOAT16, "cuda.h enum");
static_assert(uint32_t(TmaDataType::kBFloat16) == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, "cuda.h enum");
static_assert(uint32_t(TmaDataType::kFloat32) == CU_TENSOR_MAP_DATA_TYPE_FLOAT32, "cuda.h enum");
static_assert(uint32_t(TmaSwizzle::kNone) == CU_TENSOR_MAP_SWIZZLE_NONE, "cuda.h enum");
static_assert(uint32_t(TmaInterleave::kNone) == CU_TENSOR_MAP_INTERLEAVE_NONE, "cuda.h enum");
static_assert(uint32_t(TmaSwizzle::k128B) == CU_TENSOR_MAP_SWIZZLE_128B, "cuda.h enum");
static_assert(uint32_t(TmaSwizzle::k64B) == CU_TENSOR_MAP_SWIZZLE_64B, "cuda.h enum");
static_assert(uint32_t(TmaSwizzle::k32B) == CU_TENSOR_MAP_SWIZZLE_32B, "cuda.h enum");
static_assert(uint32_t(TmaL2Promotion::k128B) == CU_TENSOR_MAP_L2_PROMOTION_L2_128B, "cuda.h enum");
static_assert(uint32_t(TmaL2Promotion::k256B) == CU_TENSOR_MAP_L2_PROMOTION_L2_256B, "cuda.h enum");
static_assert(uint32_t(TmaOobFill::kZero) == CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE, "cuda.h enum");
static_assert(sizeof(CUtensorMap) == 128, "a tensor map is 128 bytes, passed by value as a __grid_constant__");

// cuTensorMapEncodeTiled from the driver the runtime loaded (looked up once per process).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t status = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &found);
#endif
    tma_require(status == cudaSuccess && found == cudaDriverEntryPointSuccess && ptr != nullptr,
                std::string("cuTensorMapEncodeTiled not found in the driver (") + cudaGetErrorString(status) +
                    "): TMA needs a CUDA 12+ driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// Encodes `a` for the tensor at `global_address` (device memory). Needs a GPU and its driver.
inline CUtensorMap encode_tensor_map(const TmaTileArgs& a, const void* global_address) {
  tma_check_address(reinterpret_cast<uint64_t>(global_address));
  CUtensorMap map;
  cuuint64_t dims[kTmaMaxRank], strides[kTmaMaxRank - 1];
  cuuint32_t box[kTmaMaxRank], estrides[kTmaMaxRank];
  for (int i = 0; i < kTmaMaxRank; ++i) {
    dims[i] = a.global_dim[i];
    box[i] = a.box_dim[i];
    estrides[i] = a.element_strides[i];
    if (i < kTmaMaxRank - 1) strides[i] = a.global_strides[i];
  }
  const CUresult r = tensor_map_encoder()(
      &map, static_cast<CUtensorMapDataType>(a.data_type), a.rank, const_cast<void*>(global_address), dims, strides,
      box, estrides, static_cast<CUtensorMapInterleave>(a.interleave), static_cast<CUtensorMapSwizzle>(a.swizzle),
      static_cast<CUtensorMapL2promotion>(a.l2_promotion), static_cast<CUtensorMapFloatOOBfill>(a.oob_fill));
  tma_require(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed with CUresult " + std::to_string(int(r)));
  return map;
}

}  // namespace hopper
}  // namespace flashattn
#endif
