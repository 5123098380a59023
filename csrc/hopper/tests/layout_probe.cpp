// Host probe of csrc/hopper/smem_layout.h and csrc/hopper/tma.h, for tests/test_cuda_hopper_primitives.py:
// the 128B swizzle, the wgmma descriptor and the tensor-map arguments, compiled with the host compiler
// (no CUDA) and checked against a Python statement of the PTX ISA / driver rules.
//
// stdin, one command per line; stdout, one line per command (or per element for `swz`):
//   swz ROWS COLS                  -> "swz row col offset" for every element of a ROWS x COLS tile
//   enc START LBO SBO BASE SWIZZLE -> "enc value"          (encode_wgmma_desc, value as unsigned decimal)
//   kdesc ADDRESS ROWS K16         -> "kdesc value"        (sw128_kmajor_desc)
//   mdesc ADDRESS ROWS K16         -> "mdesc value"        (sw128_mnmajor_desc)
//   adv ADDRESS ROWS K16           -> "adv kvalue mvalue"  (desc_advance of step 0 by the k16 step's bytes)
//   bshd TYPE B S H D SB SS SH BOX_ROWS BOX_COLS [SWIZZLE] -> "args ..." or "error message"  (bshd_tile_args)
//   tile TYPE RANK DIMS[RANK] STRIDES[RANK-1] BOX[RANK] [SWIZZLE] -> "args ..." or "error message" (tma_tile_args)
//   addr ADDRESS                   -> "addr ok" or "error message"  (tma_check_address)
// TYPE: 0 fp16, 1 bf16, 2 fp32. SWIZZLE (optional, default 3 = 128B): the TmaSwizzle value, 0 none.
// "args" prints: data_type rank dims[5] strides[4] box[5] element_strides[5] interleave swizzle
// l2_promotion oob_fill box_bytes.
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../smem_layout.h"
#include "../tma.h"

using namespace flashattn::hopper;

static TmaDataType data_type(int type) {
  return type == 2 ? TmaDataType::kFloat32 : type == 1 ? TmaDataType::kBFloat16 : TmaDataType::kFloat16;
}

// The optional trailing swizzle of a command (128B when absent).
static TmaSwizzle read_swizzle(std::istringstream& in) {
  uint32_t swizzle = 3;
  if (!(in >> swizzle)) swizzle = 3;
  return static_cast<TmaSwizzle>(swizzle);
}

static void print_args(const TmaTileArgs& a) {
  std::printf("args %u %u", uint32_t(a.data_type), a.rank);
  for (uint64_t d : a.global_dim) std::printf(" %" PRIu64, d);
  for (uint64_t s : a.global_strides) std::printf(" %" PRIu64, s);
  for (uint32_t b : a.box_dim) std::printf(" %u", b);
  for (uint32_t e : a.element_strides) std::printf(" %u", e);
  std::printf(" %u %u %u %u %u\n", uint32_t(a.interleave), uint32_t(a.swizzle), uint32_t(a.l2_promotion),
              uint32_t(a.oob_fill), a.box_bytes);
}

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    if (!(in >> cmd)) continue;
    try {
      if (cmd == "swz") {
        uint32_t rows, cols;
        in >> rows >> cols;
        for (uint32_t r = 0; r < rows; ++r)
          for (uint32_t c = 0; c < cols; ++c) std::printf("swz %u %u %u\n", r, c, sw128_offset(r, c, rows));
      } else if (cmd == "enc") {
        WgmmaDescFields f;
        uint32_t swizzle;
        in >> f.start_address >> f.leading_byte_offset >> f.stride_byte_offset >> f.base_offset >> swizzle;
        f.swizzle = static_cast<WgmmaSwizzle>(swizzle);
        std::printf("enc %" PRIu64 "\n", encode_wgmma_desc(f));
      } else if (cmd == "kdesc") {
        uint32_t address, rows, k16;
        in >> address >> rows >> k16;
        std::printf("kdesc %" PRIu64 "\n", sw128_kmajor_desc(address, rows, k16));
      } else if (cmd == "mdesc") {
        uint32_t address, rows, k16;
        in >> address >> rows >> k16;
        std::printf("mdesc %" PRIu64 "\n", sw128_mnmajor_desc(address, rows, k16));
      } else if (cmd == "adv") {  // the kernels' descriptor arithmetic: K-major step k16 and MN-major step k16
        uint32_t address, rows, k16;
        in >> address >> rows >> k16;
        std::printf("adv %" PRIu64 " %" PRIu64 "\n",
                    desc_advance(sw128_kmajor_desc(address, rows, 0), sw128_kmajor_step(rows, k16)),
                    desc_advance(sw128_mnmajor_desc(address, rows, 0), sw128_mnmajor_step(k16)));
      } else if (cmd == "dsst") {  // the backward's dS^T stores: every thread, slice and register of a tile
        uint32_t rows, slices;
        in >> rows >> slices;
        for (uint32_t key = 0; key < rows; key += 1)
          for (uint32_t t4 = 0; t4 < 4; ++t4)
            for (uint32_t c = 0; c < slices; ++c)
              for (uint32_t i = 0; i < 4; ++i)
                std::printf("dsst %u %u %u %u %u\n", key, t4, c, i, ds_pair_offset(key, t4, c, i, rows, key % 8));
      } else if (cmd == "dqst") {  // the backward's fp32 dQ-share stores
        for (uint32_t row = 0; row < 64; row += 1)
          for (uint32_t t4 = 0; t4 < 4; ++t4)
            for (uint32_t j = 0; j < 8; ++j)
              for (uint32_t h = 0; h < 2; ++h)
                std::printf("dqst %u %u %u %u %u\n", row, t4, j, h, f32_share_pair_offset(row, t4, j, h, (row % 8) ^ (t4 / 2)));
      } else if (cmd == "bshd") {
        int type;
        int64_t b, s, h, d, sb, ss, sh;
        uint32_t box_rows, box_cols;
        in >> type >> b >> s >> h >> d >> sb >> ss >> sh >> box_rows >> box_cols;
        const TmaSwizzle swizzle = read_swizzle(in);
        print_args(bshd_tile_args(data_type(type), b, s, h, d, sb, ss, sh, box_rows, box_cols, swizzle));
      } else if (cmd == "tile") {
        int type;
        uint32_t rank;
        in >> type >> rank;
        uint64_t dims[kTmaMaxRank] = {}, strides[kTmaMaxRank] = {};
        uint32_t box[kTmaMaxRank] = {};
        const uint32_t n = rank <= uint32_t(kTmaMaxRank) ? rank : 0;
        for (uint32_t i = 0; i < n; ++i) in >> dims[i];
        for (uint32_t i = 0; i + 1 < n; ++i) in >> strides[i];
        for (uint32_t i = 0; i < n; ++i) in >> box[i];
        print_args(tma_tile_args(data_type(type), rank, dims, strides, box, read_swizzle(in)));
      } else if (cmd == "addr") {
        uint64_t address;
        in >> address;
        tma_check_address(address);
        std::printf("addr ok\n");
      } else {
        std::printf("error unknown command %s\n", cmd.c_str());
      }
    } catch (const std::invalid_argument& e) {
      std::printf("error %s\n", e.what());
    }
  }
  return 0;
}
