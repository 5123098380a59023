// Shared-memory tile layout of the Hopper (sm_90a) kernels: the 128-byte swizzle that TMA writes and
// wgmma reads, and the wgmma shared-memory matrix descriptor that points wgmma at such a tile.
//
// Plain C++ with no CUDA header: the functions are FLASHATTN_HOST_DEVICE (as in csrc/sequence.h), so
// tests/test_cuda_hopper_primitives.py compiles this file with the host compiler
// (csrc/hopper/tests/layout_probe.cpp) and checks it against a Python statement of the PTX ISA rules.
//
// ---- The 128-byte swizzle (PTX ISA "Tensor Swizzling Modes" in the Tensors chapter, and the
//      canonical layouts of "Asynchronous Warpgroup Level Matrix Shared Memory Layout") -----------------
// A tile of 16-bit elements (bf16/fp16) is stored as rows of 64 elements = 128 bytes. Eight rows form a
// 1024-byte "swizzle atom". Within a row, the 16-byte chunk c (elements 8c..8c+7, c = 0..7) is stored at
// chunk position c ^ (row % 8):
//     byte(row, col) = row * 128 + ((col * 2 / 16) ^ (row % 8)) * 16 + (col * 2) % 16
// Why: TMA (CU_TENSOR_MAP_SWIZZLE_128B) writes exactly this pattern, and wgmma with layout type 1 in its
// descriptor reads it, so neither side pays bank conflicts: the 8 rows of one 8x8 core matrix (same
// chunk column) land in 8 distinct 16-byte bank groups. The hardware computes the XOR from address
// bits [4:6] ^ [7:9], so every tile must start on a 1024-byte boundary (then "row % 8" of the tile and
// address bits [7:9] agree, and the descriptor's base offset is 0).
// Tiles wider than 64 elements (head_dim 128, 256) are stored as 64-column panels one after another:
// panel p = col / 64 of a tile of `rows` rows starts at byte p * rows * 128 (one TMA box per panel).
//
// ---- The wgmma matrix descriptor (PTX ISA "Matrix Descriptor Format" under "Asynchronous Warpgroup
//      Level Matrix Shared Memory Layout", wgmma section) ---------------------------------------------
// A 64-bit value:  bits  0-13 start address >> 4        (shared-window address, 18 bits used)
//                  bits 16-29 leading-dim byte offset >> 4
//                  bits 32-45 stride-dim byte offset >> 4
//                  bits 49-51 matrix base offset         (0 when the swizzle pattern starts 1024-aligned)
//                  bits 62-63 layout (swizzle) type      (0 none, 1 128B, 2 64B, 3 32B)
// For a K-major operand (A of m64 x k16 as [m][k], or B of n x k16 as [n][k] — the Q K^T case) with the
// 128B swizzle: the stride-dim offset is the distance between consecutive 8-row core-matrix groups
// along M/N = 8 * 128 = 1024 bytes; the leading-dim offset is unused for swizzled K-major layouts (the
// 16 K elements of one k16 step lie inside one 128-byte row) and is set to 1 (encoded), as is usual.
// The k16 step j (j = 0..3) inside a 64-element panel starts 32 * j bytes into the row: the descriptor's
// start address advances by 32 bytes and the hardware applies the swizzle to the resulting addresses.
#pragma once

#include <cstdint>

#ifndef FLASHATTN_HOST_DEVICE  // the same definition as csrc/params.h (an identical redefinition is legal)
#ifdef __CUDACC__
#define FLASHATTN_HOST_DEVICE __host__ __device__
#else
#define FLASHATTN_HOST_DEVICE
#endif
#endif

namespace flashattn {
namespace hopper {

constexpr uint32_t kSwizzleRowBytes = 128;   // one row of a 128B-swizzled tile
constexpr uint32_t kSwizzleChunkBytes = 16;  // the unit that moves
constexpr uint32_t kSwizzleRows = 8;         // rows per swizzle atom
constexpr uint32_t kSwizzleAtomBytes = kSwizzleRowBytes * kSwizzleRows;  // 1024: tile alignment
constexpr uint32_t kPanelCols16 = kSwizzleRowBytes / 2;                  // 64 elements of 16 bits per row

// Byte offset of byte `byte_in_row` (0..127) of row `row` in a 128B-swizzled panel.
FLASHATTN_HOST_DEVICE constexpr uint32_t sw128_byte_offset(uint32_t row, uint32_t byte_in_row) {
  return row * kSwizzleRowBytes +
         (((byte_in_row / kSwizzleChunkBytes) ^ (row % kSwizzleRows)) * kSwizzleChunkBytes) +
         byte_in_row % kSwizzleChunkBytes;
}

// Byte offset of 16-bit element (row, col) of a tile of `rows` rows stored as 64-column panels
// (col may exceed 63: panel col / 64 follows the previous one).
FLASHATTN_HOST_DEVICE constexpr uint32_t sw128_offset(uint32_t row, uint32_t col, uint32_t rows) {
  return (col / kPanelCols16) * rows * kSwizzleRowBytes + sw128_byte_offset(row, (col % kPanelCols16) * 2);
}

// ---- the backward's register-to-shared stores, by (row base, chunk XOR) ------------------------------
// The Hopper backward stores two tiles from wgmma accumulator registers (thread lane = 4 g + t4 of warp w):
// dS^T (16-bit, [key][query], panels of `rows` keys) and its fp32 dQ share (64 rows, 32-column panels, the
// TMA box layout). Its addresses are a per-thread row base plus a constant plus a 16-byte chunk XORed with a
// per-thread value `sw`, which the kernel recomputes inside its tile loop (as pointers the compiler hoisted
// every address and spilled them). tests/test_cuda_hopper_primitives.py checks both against sw128_offset.

// dS^T element pair of register i (0..3) of k16 slice c: key `key` + 8 (i % 2), queries 16c + 8 (i / 2) + 2 t4
// (+1): = sw128_offset(key + 8 (i % 2), 16c + 8 (i / 2) + 2 t4, rows) when sw = key % 8.
FLASHATTN_HOST_DEVICE constexpr uint32_t ds_pair_offset(uint32_t key, uint32_t t4, uint32_t c, uint32_t i,
                                                        uint32_t rows, uint32_t sw) {
  return key * kSwizzleRowBytes + 4 * t4 + (c / 4) * rows * kSwizzleRowBytes + (i % 2) * kSwizzleAtomBytes +
         (((2 * (c % 4) + i / 2) ^ sw) * kSwizzleChunkBytes);
}

// fp32 dQ-share element pair (row, 8j + 2 t4 (+1)), h = 0, 1 for rows row, row + 8, in 32-column panels of 64
// rows (128B-swizzled fp32: 32 elements a row): = panel (8j + 2 t4) / 32, row (row + 8h), byte 4 ((8j + 2 t4)
// % 32) under the swizzle, when sw = (row % 8) ^ (t4 / 2). (The pair's chunk is 2 (j % 4) + t4 / 2, and
// (2 (j % 4) + t4 / 2) ^ (row % 8) = 2 (j % 4) ^ sw since the two terms share no bit.)
FLASHATTN_HOST_DEVICE constexpr uint32_t f32_share_pair_offset(uint32_t row, uint32_t t4, uint32_t j, uint32_t h,
                                                               uint32_t sw) {
  return row * kSwizzleRowBytes + 8 * (t4 % 2) + (j / 4) * 64 * kSwizzleRowBytes + h * kSwizzleAtomBytes +
         (((2 * (j % 4)) ^ sw) * kSwizzleChunkBytes);
}

// ---- wgmma descriptor ------------------------------------------------------------------------------

enum class WgmmaSwizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// The descriptor's fields in bytes (the encoder drops the 4 low bits, which must be 0).
struct WgmmaDescFields {
  uint32_t start_address = 0;       // shared-window byte address of the operand's first core matrix
  uint32_t leading_byte_offset = 0;  // bytes between core matrices along K (unused: swizzled K-major)
  uint32_t stride_byte_offset = 0;   // bytes between 8-row core-matrix groups along M or N
  uint32_t base_offset = 0;          // 3 bits; 0 when the swizzle pattern starts 1024-aligned
  WgmmaSwizzle swizzle = WgmmaSwizzle::kNone;
};

FLASHATTN_HOST_DEVICE constexpr uint64_t encode_wgmma_desc(const WgmmaDescFields& f) {
  return (uint64_t((f.start_address & 0x3FFFF) >> 4) << 0) |
         (uint64_t((f.leading_byte_offset & 0x3FFFF) >> 4) << 16) |
         (uint64_t((f.stride_byte_offset & 0x3FFFF) >> 4) << 32) |
         (uint64_t(f.base_offset & 0x7) << 49) |
         (uint64_t(static_cast<uint32_t>(f.swizzle) & 0x3) << 62);
}

// Bytes from a K-major operand's k16 step 0 to its step k16 (sw128_kmajor_desc's start address), and
// from an MN-major operand's step 0 to its step k16 (sw128_mnmajor_desc's).
FLASHATTN_HOST_DEVICE constexpr uint32_t sw128_kmajor_step(uint32_t rows, uint32_t k16) {
  return (k16 / 4) * rows * kSwizzleRowBytes + (k16 % 4) * 32;
}
FLASHATTN_HOST_DEVICE constexpr uint32_t sw128_mnmajor_step(uint32_t k16) { return k16 * 16 * kSwizzleRowBytes; }

// The descriptor of the same operand `bytes` further on: the start address (bits 0-13, >> 4) plus
// bytes >> 4. No carry leaves the field as long as the end address stays below 2^18 (shared memory is
// 228 KB), so a kernel may add a constant instead of re-encoding.
FLASHATTN_HOST_DEVICE constexpr uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Descriptor of the K-major, 128B-swizzled operand whose k16 step `k16` (0-based, any panel) starts
// in the tile at shared address `tile_address` (1024-aligned) with `rows` rows (M or N) per panel.
FLASHATTN_HOST_DEVICE constexpr uint64_t sw128_kmajor_desc(uint32_t tile_address, uint32_t rows, uint32_t k16) {
  WgmmaDescFields f;
  f.start_address = tile_address + sw128_kmajor_step(rows, k16);
  f.leading_byte_offset = 16;  // encoded 1: ignored by the hardware for this layout
  f.stride_byte_offset = kSwizzleAtomBytes;
  f.base_offset = 0;
  f.swizzle = WgmmaSwizzle::k128B;
  return encode_wgmma_desc(f);
}

// Descriptor of the MN-major, 128B-swizzled operand (B of O = P V: V stored [key][channel], key = the
// GEMM's K, channel = its N) whose k16 step `k16` starts in the tile at `tile_address` (1024-aligned),
// `rows` rows (keys) per 64-channel panel. A row holds 64 consecutive N elements (one swizzled
// 128-byte row); 8 rows along K form an atom, so the stride-dim offset (next 8 keys) is 1024 bytes and
// a k16 step (16 keys) starts 2048 bytes later; the leading-dim offset is the distance between the
// 64-wide N panels, rows * 128 bytes (the PTX ISA's canonical MN-major swizzled layout: "leading
// dimension byte offset" = stride between repeating patterns along MN, "stride dimension byte offset"
// = stride between 8-row groups along K).
FLASHATTN_HOST_DEVICE constexpr uint64_t sw128_mnmajor_desc(uint32_t tile_address, uint32_t rows, uint32_t k16) {
  WgmmaDescFields f;
  f.start_address = tile_address + sw128_mnmajor_step(k16);
  f.leading_byte_offset = rows * kSwizzleRowBytes;
  f.stride_byte_offset = kSwizzleAtomBytes;
  f.base_offset = 0;
  f.swizzle = WgmmaSwizzle::k128B;
  return encode_wgmma_desc(f);
}

}  // namespace hopper
}  // namespace flashattn
