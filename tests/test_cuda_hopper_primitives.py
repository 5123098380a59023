"""csrc/hopper/ — the Hopper (sm_90a) primitives of issue 17 — without a GPU.

1. Index math, host-compiled (csrc/hopper/tests/layout_probe.cpp with the host C++ compiler, as
   tests/test_cuda_sequence.py does for csrc/sequence.h) and checked against an independent Python
   statement of the rules:
   * the 128-byte swizzle as the PTX ISA states it on addresses ("Tensor Swizzling Modes": byte-address
     bits [4:6] XOR bits [7:9] within a 1024-byte-aligned tile), not as smem_layout.h computes it;
   * the wgmma matrix descriptor ("Matrix Descriptor Format"), decoded bit field by bit field;
   * cuTensorMapEncodeTiled's arguments for bshd tiles, and the driver's refusals (cuda.h).
2. Static facts of the sm_90a probe kernel (csrc/hopper/tests/wgmma_tma_probe.cu, compiled by nvcc):
   0 spills, HGMMA / UTMALDG / SYNCS (mbarrier) / USETMAXREG in its SASS, shared memory within 227 KB,
   setmaxnreg honoured (no C7508) and within the CTA's registers.
3. The architecture guards: csrc/hopper/tests/guard_probe.cu (every primitive) compiles for sm_80 and
   plain sm_90 with no Hopper-only instruction in the SASS.
4. The backward's groundwork (issue 18): fp32 tensor maps (the dQ accumulator), and the static facts of
   csrc/hopper/tests/tma_reduce_probe.cu (TMA reduce-add UTMAREDG and store UTMASTG, bulk groups, 0 spills).
Nothing here runs on a GPU: `wgmma_tma_probe` and `tma_reduce_probe` check the numbers there (docs/hopper.md).
"""
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from host_probe import build_probe

from flashattn_py.tools.cuda_report import find_cuobjdump, parse_ptxas

ROOT = Path(__file__).resolve().parents[1]
HOPPER = ROOT / "csrc" / "hopper"
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one sm_90 CTA may use
CTA_REGISTERS = 64 * 1024  # registers of one SM, all a 1-CTA-per-SM kernel may hold
SM90A = "-gencode=arch=compute_90a,code=sm_90a"

# ---- 1. host-compiled index math ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    exe = build_probe(tmp_path_factory, "layout_probe", "-O1", "-Wextra", source=HOPPER / "tests" / "layout_probe.cpp")

    def run(*commands):
        out = subprocess.run([str(exe)], input="\n".join(commands) + "\n", capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    return run


def ptx_swizzle_128b(byte_offset):
    """PTX ISA, 128B swizzle mode: within a 1024-byte-aligned pattern, the 16-byte chunk bits [4:6] of
    the address are XORed with bits [7:9] (the row of 128 bytes within the 8-row atom)."""
    return byte_offset ^ (((byte_offset >> 7) & 7) << 4)


def swizzled(probe, rows, cols):
    offsets = {}
    for line in probe(f"swz {rows} {cols}"):
        _, r, c, off = line.split()
        offsets[int(r), int(c)] = int(off)
    assert len(offsets) == rows * cols
    return offsets


@pytest.mark.parametrize("rows,cols", [(8, 64), (64, 64), (128, 128), (64, 256), (176, 128)])
def test_swizzle_is_the_ptx_address_rule(probe, rows, cols):
    # Tiles wider than 64 elements are 64-column panels of `rows` rows, one after another.
    for (r, c), off in swizzled(probe, rows, cols).items():
        panel, linear = divmod(c, 64)
        assert off == panel * rows * 128 + ptx_swizzle_128b(r * 128 + linear * 2), (r, c)


def test_swizzle_is_a_bijection_within_each_atom(probe):
    rows, cols = 64, 128
    offsets = swizzled(probe, rows, cols)
    for panel in range(cols // 64):
        for atom in range(rows // 8):
            base = panel * rows * 128 + atom * 1024
            rows_of_atom, cols_of_panel = range(8 * atom, 8 * atom + 8), range(64 * panel, 64 * panel + 64)
            got = sorted(offsets[r, c] for r in rows_of_atom for c in cols_of_panel)
            assert got == list(range(base, base + 1024, 2)), (panel, atom)


def test_chunks_stay_contiguous_and_move_by_row_xor(probe):
    rows = 32
    offsets = swizzled(probe, rows, 64)
    for r in range(rows):
        for chunk in range(8):
            first = offsets[r, 8 * chunk]
            assert [offsets[r, 8 * chunk + i] for i in range(8)] == list(range(first, first + 16, 2))
            assert first % 16 == 0 and first // 128 == r
            assert (first % 128) // 16 == chunk ^ (r % 8)


def test_core_matrix_rows_hit_distinct_bank_groups(probe):
    # Why the swizzle: the 8 rows of one 8 x 8 core matrix (same chunk column) are 8 distinct 16-byte
    # groups of the 32 banks, so TMA writes and wgmma reads are conflict-free.
    offsets = swizzled(probe, 16, 64)
    for atom in range(2):
        for chunk in range(8):
            groups = {(offsets[r, 8 * chunk] // 16) % 8 for r in range(8 * atom, 8 * atom + 8)}
            assert len(groups) == 8


def decode_descriptor(value):
    """The wgmma shared-memory matrix descriptor's fields (PTX ISA "Matrix Descriptor Format")."""
    field = lambda lo, bits: (value >> lo) & ((1 << bits) - 1)
    used = (((1 << 14) - 1) << 0) | (((1 << 14) - 1) << 16) | (((1 << 14) - 1) << 32) | (7 << 49) | (3 << 62)
    return {"start": field(0, 14) << 4, "lbo": field(16, 14) << 4, "sbo": field(32, 14) << 4,
            "base": field(49, 3), "swizzle": field(62, 2), "reserved": value & ~used & ((1 << 64) - 1)}


def test_descriptor_fields_round_trip(probe):
    rng = random.Random(17)
    cases = [(0, 0, 0, 0, 0), (0x3FFF0, 0x3FFF0, 0x3FFF0, 7, 3), (1024, 16, 1024, 0, 1)]
    cases += [(16 * rng.randrange(1 << 14), 16 * rng.randrange(1 << 14), 16 * rng.randrange(1 << 14),
               rng.randrange(8), rng.randrange(4)) for _ in range(200)]
    out = probe(*(f"enc {' '.join(map(str, c))}" for c in cases))
    for (start, lbo, sbo, base, swz), line in zip(cases, out, strict=True):
        d = decode_descriptor(int(line.split()[1]))
        assert d == {"start": start, "lbo": lbo, "sbo": sbo, "base": base, "swizzle": swz, "reserved": 0}


@pytest.mark.parametrize("rows", [64, 128, 176, 256])
def test_kmajor_128b_descriptor(probe, rows):
    # K-major operand, 128B swizzle: 8-row groups 1024 bytes apart (SBO), LBO unused (encoded 1), the k16
    # step j of a 64-wide panel 32 * j bytes into the row, panels rows * 128 bytes apart.
    cases = [(address, k16) for address in (0, 1024, 50176, 7 * 8192) for k16 in range(16)]
    out = probe(*(f"kdesc {a} {rows} {k}" for a, k in cases))
    for (address, k16), line in zip(cases, out, strict=True):
        d = decode_descriptor(int(line.split()[1]))
        assert d == {"start": address + (k16 // 4) * rows * 128 + (k16 % 4) * 32, "lbo": 16, "sbo": 1024,
                     "base": 0, "swizzle": 1, "reserved": 0}


@pytest.mark.parametrize("rows, slices", [(128, 4), (128, 8)])
def test_backward_ds_stores_are_the_swizzled_layout(probe, rows, slices):
    # The Hopper backward's dS^T stores (smem_layout.h ds_pair_offset, kBlockM = 16 * slices queries): the 4-byte
    # pair of each thread's register i of slice c lands where the 128B swizzle (PTX rule) puts element
    # (key + 8 (i % 2), 16c + 8 (i / 2) + 2 t4) of a [key][query] tile of 64-query panels; every pair exactly once.
    seen = {}
    for line in probe(f"dsst {rows} {slices}"):
        key, t4, c, i, off = map(int, line.split()[1:])
        if key % 16 >= 8:
            continue  # a thread's base key is 16 w + g (its second row is + 8)
        row, query = key + 8 * (i % 2), 16 * c + 8 * (i // 2) + 2 * t4
        panel, col = divmod(query, 64)
        assert off == panel * rows * 128 + ptx_swizzle_128b(row * 128 + col * 2), (key, t4, c, i)
        seen[off] = seen.get(off, 0) + 1
    assert len(seen) == rows * 16 * slices // 2 and set(seen.values()) == {1}


def test_backward_dq_share_stores_are_the_fp32_box_layout(probe):
    # The fp32 dQ share (f32_share_pair_offset): element pair (row + 8h, 8j + 2 t4) of a 64 x 64 share lands
    # in 32-column panels of 64 rows, 128B-swizzled as TMA reads a box of 32 fp32 (PTX rule); each 8-byte pair once.
    seen = {}
    for line in probe("dqst"):
        row, t4, j, h, off = map(int, line.split()[1:])
        if row % 16 >= 8:
            continue
        r, col = row + 8 * h, 8 * j + 2 * t4
        panel, within = divmod(col, 32)
        assert off == panel * 64 * 128 + ptx_swizzle_128b(r * 128 + within * 4), (row, t4, j, h)
        seen[off] = seen.get(off, 0) + 1
    assert len(seen) == 64 * 64 // 2 and set(seen.values()) == {1}


@pytest.mark.parametrize("rows", [64, 128])
def test_mnmajor_128b_descriptor(probe, rows):
    # MN-major operand (V in O = P V: rows are keys = the GEMM's K, 64-channel panels along N), 128B
    # swizzle: the PTX ISA's canonical MN-major layout has LBO = the stride between 64-wide panels along
    # N (rows * 128 bytes) and SBO = the stride between 8-row groups along K (1024); a k16 step is 16 rows.
    cases = [(address, k16) for address in (0, 1024, 65536, 7 * 8192) for k16 in range(rows // 16)]
    out = probe(*(f"mdesc {a} {rows} {k}" for a, k in cases))
    for (address, k16), line in zip(cases, out, strict=True):
        d = decode_descriptor(int(line.split()[1]))
        assert d == {"start": address + k16 * 2048, "lbo": rows * 128, "sbo": 1024, "base": 0, "swizzle": 1,
                     "reserved": 0}


@pytest.mark.parametrize("rows", [64, 128])
def test_descriptor_advance_equals_encoding_each_step(probe, rows):
    # The Hopper forward forms each k16 step's descriptor as step 0's plus a constant (desc_advance): the
    # same 64-bit value as encoding the step, for every tile address the kernel uses (< 228 KB).
    cases = [(address, k16) for address in (0, 16384, 98304, 196608) for k16 in range(16)]
    out = probe(*(f"adv {a} {rows} {k}" for a, k in cases))
    expected = probe(*(f"kdesc {a} {rows} {k}" for a, k in cases))
    expected_mn = probe(*(f"mdesc {a} {rows} {k}" for a, k in cases))
    for line, kd, md in zip(out, expected, expected_mn, strict=True):
        _, k_value, m_value = line.split()
        assert (k_value, m_value) == (kd.split()[1], md.split()[1])


# cuda.h: CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, _BFLOAT16 = 9; INTERLEAVE_NONE = 0; SWIZZLE_128B = 3;
# L2_PROMOTION_L2_128B = 2; FLOAT_OOB_FILL_NONE = 0 (zeros).
DTYPE = {0: 6, 1: 9}


def parse_args(line):
    v = list(map(int, line.split()[1:]))
    return {"dtype": v[0], "rank": v[1], "dims": v[2:7], "strides": v[7:11], "box": v[11:16],
            "estrides": v[16:21], "interleave": v[21], "swizzle": v[22], "l2": v[23], "oob": v[24], "bytes": v[25]}


BSHD = [  # (batch, seqlen, heads, head_dim, strides (b, s, h) in elements, box_rows, box_cols)
    (2, 4096, 32, 128, None, 128, 64),       # contiguous
    (3, 100, 3, 96, (100 * 3 * 104, 3 * 104, 104), 64, 64),  # rows padded to 104 elements
    (1, 77, 8, 64, None, 176, 64),           # seqlen shorter than the box: OOB rows read as 0
    (4, 1000, 2, 256, (1000 * 6 * 256, 6 * 256, 256), 128, 64),  # k of a packed qkv (stride_s = 3 heads * 2)
    (2, 513, 1, 80, None, 128, 40),          # head_dim 80 as 40-wide boxes (80 bytes)
]


@pytest.mark.parametrize("dtype", [0, 1])
@pytest.mark.parametrize("case", BSHD)
def test_bshd_tensor_map_arguments(probe, case, dtype):
    b, s, h, d, strides, box_rows, box_cols = case
    sb, ss, sh = strides or (s * h * d, h * d, d)
    (line,) = probe(f"bshd {dtype} {b} {s} {h} {d} {sb} {ss} {sh} {box_rows} {box_cols}")
    a = parse_args(line)
    # TMA dim 0 is the contiguous one: (d, s, h, b); strides of dims 1..3 in bytes.
    assert a == {"dtype": DTYPE[dtype], "rank": 4, "dims": [d, s, h, b, 0], "strides": [2 * ss, 2 * sh, 2 * sb, 0],
                 "box": [box_cols, box_rows, 1, 1, 0], "estrides": [1, 1, 1, 1, 0], "interleave": 0, "swizzle": 3,
                 "l2": 2, "oob": 0, "bytes": 2 * box_cols * box_rows}


def test_generic_tile_arguments(probe):
    (line,) = probe("tile 1 2 96 300 192 64 128")
    assert parse_args(line) == {"dtype": 9, "rank": 2, "dims": [96, 300, 0, 0, 0], "strides": [192, 0, 0, 0],
                                "box": [64, 128, 0, 0, 0], "estrides": [1, 1, 0, 0, 0], "interleave": 0,
                                "swizzle": 3, "l2": 2, "oob": 0, "bytes": 64 * 128 * 2}


@pytest.mark.parametrize("command,reason", [
    ("bshd 1 2 100 3 97 29100 291 97 64 64", "stride of dim 1 is 582 bytes, not a multiple of 16"),   # head_dim 97
    ("bshd 1 2 100 1 64 6404 64 64 64 64", "stride of dim 3 is 12808 bytes, not a multiple of 16"),  # batch stride
    ("bshd 0 1 10 4 64 2560 256 68 64 64", "stride of dim 2 is 136 bytes, not a multiple of 16"),    # head stride
    ("bshd 1 1 10 1 256 2560 256 256 64 128", "more than the swizzle span of 128"),                 # 256-byte box
    ("bshd 1 1 10 1 64 640 64 64 257 64", "box must be in [1, 256]"),
    ("bshd 1 1 10 1 64 640 64 64 64 4", "inner box is 8 bytes, not a multiple of 16"),
    ("bshd 1 0 10 1 64 640 64 64 64 64", "every bshd extent must be >= 1"),
    ("tile 1 6 1 1 1 1 1 1", "rank must be 1..5"),
    ("tile 1 2 64 4294967297 128 64 64", "size must be in [1, 2^32]"),
    ("tile 1 2 64 10 1099511627776 64 8", "must be < 2^40 bytes"),
    ("addr 8", "address is not 16-byte aligned"),
])
def test_refusals_name_the_rule(probe, command, reason):
    (line,) = probe(command)
    assert line.startswith("error flashattn_py TMA tensor map: ") and reason in line, line


def test_aligned_address_passes(probe):
    assert probe("addr 0", "addr 4096") == ["addr ok", "addr ok"]


# ---- fp32 tensor maps (issue 18: the backward's dQ accumulator, TMA reduce-add / store) ---------------------
# cuda.h: CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7 (4-byte elements); CU_TENSOR_MAP_SWIZZLE_NONE = 0. The layout
# probe's TYPE 2 is fp32; its optional last argument is the swizzle (default 3 = 128B).
FP32 = 7

FP32_BSHD = [  # (batch, seqlen, heads, head_dim, strides (b, s, h) in elements or None, box_rows, box_cols, swizzle)
    (1, 4096, 32, 128, None, 64, 32, 3),     # a dQ accumulator: 128B swizzle, 32 fp32 = 128-byte box rows
    (2, 130, 2, 64, (144 * 2 * 72, 2 * 72, 72), 64, 32, 3),  # rows padded to 72 floats (288 bytes), batch gaps
    (1, 300, 1, 64, (320 * 68, 68, 68), 64, 64, 0),  # unswizzled, 64 columns = 256-byte box rows, 272-byte rows
    (2, 1000, 4, 128, None, 128, 128, 0),    # unswizzled, 512-byte box rows
    (1, 77, 2, 256, None, 16, 256, 0),       # unswizzled, the widest box (256 elements = 1024 bytes)
    (3, 50, 5, 4, None, 64, 4, 3),           # head_dim 4: 16-byte rows (too narrow for 16-bit types)
]


@pytest.mark.parametrize("case", FP32_BSHD)
def test_fp32_bshd_tensor_map_arguments(probe, case):
    b, s, h, d, strides, box_rows, box_cols, swizzle = case
    sb, ss, sh = strides or (s * h * d, h * d, d)
    (line,) = probe(f"bshd 2 {b} {s} {h} {d} {sb} {ss} {sh} {box_rows} {box_cols} {swizzle}")
    a = parse_args(line)
    assert a == {"dtype": FP32, "rank": 4, "dims": [d, s, h, b, 0], "strides": [4 * ss, 4 * sh, 4 * sb, 0],
                 "box": [box_cols, box_rows, 1, 1, 0], "estrides": [1, 1, 1, 1, 0], "interleave": 0,
                 "swizzle": swizzle, "l2": 2, "oob": 0, "bytes": 4 * box_cols * box_rows}


def test_fp32_dq_accumulator_tile_arguments(probe):
    # The (seqlen, heads, head_dim) accumulator as a rank-3 map (d, s, h), and one head as rank 2 (d, s).
    (rank3,) = probe("tile 2 3 128 200 3 1536 512 32 64 1")
    assert parse_args(rank3) == {"dtype": FP32, "rank": 3, "dims": [128, 200, 3, 0, 0], "strides": [1536, 512, 0, 0],
                                 "box": [32, 64, 1, 0, 0], "estrides": [1, 1, 1, 0, 0], "interleave": 0,
                                 "swizzle": 3, "l2": 2, "oob": 0, "bytes": 32 * 64 * 4}
    (rank2,) = probe("tile 2 2 64 300 272 64 64 0")
    assert parse_args(rank2) == {"dtype": FP32, "rank": 2, "dims": [64, 300, 0, 0, 0], "strides": [272, 0, 0, 0],
                                 "box": [64, 64, 0, 0, 0], "estrides": [1, 1, 0, 0, 0], "interleave": 0,
                                 "swizzle": 0, "l2": 2, "oob": 0, "bytes": 64 * 64 * 4}


def test_element_size_comes_from_the_type(probe):
    # A head stride of 68 elements is 272 bytes in fp32 (accepted) but 136 in bf16 (refused); 4-column rows
    # are 16 bytes in fp32 and 8 in bf16; the same 64-column box fits the 128B swizzle in bf16, not in fp32.
    fp32, bf16 = probe("bshd 2 1 10 2 64 1360 136 68 64 32", "bshd 1 1 10 2 64 1360 136 68 64 32")
    assert parse_args(fp32)["strides"][:3] == [544, 272, 5440]
    assert "stride of dim 2 is 136 bytes, not a multiple of 16" in bf16
    fp32, bf16 = probe("bshd 2 1 10 1 4 40 4 4 8 4", "bshd 1 1 10 1 4 40 4 4 8 4")
    assert parse_args(fp32)["bytes"] == 8 * 4 * 4 and "not a multiple of 16" in bf16
    fp32, bf16 = probe("bshd 2 1 10 1 64 640 64 64 64 64", "bshd 1 1 10 1 64 640 64 64 64 64")
    assert "the inner box is 256 bytes, more than the swizzle span of 128" in fp32
    assert parse_args(bf16)["bytes"] == 64 * 64 * 2


@pytest.mark.parametrize("command,reason", [
    ("bshd 2 1 100 3 66 19800 198 66 64 32", "stride of dim 1 is 792 bytes, not a multiple of 16"),  # head_dim 66
    ("bshd 2 1 100 2 64 12800 128 66 64 32", "stride of dim 2 is 264 bytes, not a multiple of 16"),  # head stride
    ("bshd 2 2 100 1 64 6402 64 64 64 32", "stride of dim 3 is 25608 bytes, not a multiple of 16"),  # batch stride
    ("bshd 2 1 10 1 64 640 64 64 64 40", "the inner box is 160 bytes, more than the swizzle span of 128"),
    ("bshd 2 1 10 1 64 640 64 64 64 64 3", "the inner box is 256 bytes, more than the swizzle span of 128"),
    ("bshd 2 1 10 1 64 640 64 64 64 6 0", "the inner box is 24 bytes, not a multiple of 16"),
    ("bshd 2 1 10 1 512 5120 512 512 64 257 0", "box must be in [1, 256]"),
    ("tile 2 2 64 10 1099511627776 32 8", "must be < 2^40 bytes"),
])
def test_fp32_refusals_name_the_rule(probe, command, reason):
    (line,) = probe(command)
    assert line.startswith("error flashattn_py TMA tensor map: ") and reason in line, line


# ---- 2. and 3. nvcc: static facts and guards ------------------------------------------------------------


def find_nvcc():
    for home in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        if (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_compile(tmp_path, source, gencode, output, extra=()):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA_HOME / PATH / /usr/local/cuda): the sm_90a probe is compiled in CI")
    cmd = [nvcc, "-std=c++17", "-O3", gencode, "-Xptxas", "-v", f"-I{ROOT / 'csrc'}", *extra, str(source),
           "-o", str(tmp_path / output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return nvcc, tmp_path / output, proc.stdout + proc.stderr


_SASS_FUNCTION = re.compile(r"Function : (\S+)")
_OPCODE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)")


def sass_opcodes(nvcc, binary):
    """{mangled kernel: {opcode with modifiers: count}} from cuobjdump -sass."""
    cuobjdump = find_cuobjdump(nvcc)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or Triton's bundled one) to read the probe's SASS")
    text = subprocess.run([cuobjdump, "-sass", str(binary)], capture_output=True, text=True, check=True).stdout
    kernels, current = {}, None
    for line in text.splitlines():
        if m := _SASS_FUNCTION.search(line):
            current = kernels.setdefault(m[1], {})
        elif current is not None and (m := _OPCODE.match(line)):
            current[m[1]] = current.get(m[1], 0) + 1
    return kernels


def count(opcodes, prefix):
    return sum(n for op, n in opcodes.items() if op == prefix or op.startswith(prefix + "."))


@pytest.fixture(scope="module")
def wgmma_probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wgmma_probe")
    nvcc, exe, log = nvcc_compile(tmp, HOPPER / "tests" / "wgmma_tma_probe.cu", SM90A, "wgmma_tma_probe")
    config = subprocess.run([str(exe), "--config"], capture_output=True, text=True, check=True).stdout
    return {"ptxas": parse_ptxas(log), "log": log, "sass": sass_opcodes(nvcc, exe), "config": config}


# (template arguments in the mangled name, wgmma N): the probe's four variants.
VARIANTS = {"I13__nv_bfloat16Li128ELb0ELi4E": 128, "I6__halfLi64ELb0ELi3E": 64,
            "I13__nv_bfloat16Li128ELb1ELi2E": 128, "I6__halfLi256ELb1ELi4E": 256}


def by_tag(table, kernel, tags):
    """{tag: value} of the instances of `kernel` in a ptxas / SASS table keyed by (mangled) names, one per
    tag (template arguments in the mangled name); every tag must be found."""
    found = {}
    for key, value in table.items():
        name = key[0] if isinstance(key, tuple) else key
        for tag in tags:
            if kernel in name and tag in name:
                found[tag] = value
    assert set(found) == set(tags), sorted(table)
    return found


def by_variant(table):
    return by_tag(table, "gemm_abt_probe", VARIANTS)


@pytest.mark.cuda_build
def test_probe_ptxas_no_spills_and_smem_within_227kb(wgmma_probe):
    assert "C7508" not in wgmma_probe["log"], "ptxas ignored setmaxnreg:\n" + wgmma_probe["log"]
    assert "C7512" not in wgmma_probe["log"], "ptxas serialized the wgmma:\n" + wgmma_probe["log"]
    cfg = dict(re.findall(r"(\w+) (\d+)", wgmma_probe["config"]))
    dynamic = {64: int(cfg["N64"]), 128: int(cfg["N128"]), 256: int(cfg["N256"])}
    threads, producer, consumer = int(cfg["threads"]), int(cfg["producer_regs"]), int(cfg["consumer_regs"])
    for tag, r in by_variant(wgmma_probe["ptxas"]).items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (tag, r)
        assert r["smem"] + dynamic[VARIANTS[tag]] <= SMEM_LIMIT, (tag, r)
        # setmaxnreg moves registers inside the CTA's pool: what the CTA is launched with must fit the SM,
        # and the producer's release must cover the consumer's request.
        assert threads * r["registers"] <= CTA_REGISTERS, (tag, r)
        assert 128 * (producer + consumer) <= threads * r["registers"], (tag, r)


@pytest.mark.cuda_build
def test_probe_sass_has_hgmma_utmaldg_mbarriers_and_setmaxnreg(wgmma_probe):
    for tag, ops in by_variant(wgmma_probe["sass"]).items():
        n = VARIANTS[tag]
        hgmma = [op for op in ops if op.startswith("HGMMA.")]
        assert hgmma and all(op.startswith(f"HGMMA.64x{n}x16.F32") for op in hgmma), (tag, hgmma)
        assert count(ops, "HGMMA") == 4, (tag, ops)  # 4 k16 steps per 64-wide chunk, the loop unrolled
        assert count(ops, "UTMALDG") == 2, (tag, ops)  # A and B tiles
        assert count(ops, "SYNCS") >= 4, (tag, ops)  # mbarrier init / arrive(.expect_tx) / try_wait
        assert count(ops, "USETMAXREG") == 2, (tag, ops)  # dec (producer) and inc (consumer)
        assert count(ops, "HMMA") == 0 and count(ops, "LDL") == 0 and count(ops, "STL") == 0, (tag, ops)
    rank = {tag: int(tag[-2]) for tag in VARIANTS}
    for tag, ops in by_variant(wgmma_probe["sass"]).items():
        assert count(ops, f"UTMALDG.{rank[tag]}D") == 2, (tag, ops)


@pytest.mark.cuda_build
@pytest.mark.parametrize("gencode,hopper", [("-gencode=arch=compute_80,code=sm_80", False),
                                            ("-gencode=arch=compute_90,code=sm_90", False), (SM90A, True)])
def test_guards_compile_for_every_arch(tmp_path, gencode, hopper):
    # sm_80: every primitive compiles to a trap. Plain sm_90: the TMA and mbarrier ones are there, wgmma and
    # setmaxnreg (sm_90a only) trap. sm_90a: each call is its instruction, 4 wgmma per (type, N).
    nvcc, obj, log = nvcc_compile(tmp_path, HOPPER / "tests" / "guard_probe.cu", gencode, "guard.o", ("-c",))
    (ops,) = sass_opcodes(nvcc, obj).values()
    if hopper:
        assert count(ops, "HGMMA") == 24 and count(ops, "USETMAXREG") == 2 and count(ops, "BPT") == 0, ops
        for n in (64, 128, 256):
            assert ops.get(f"HGMMA.64x{n}x16.F32.BF16") == 4 and ops.get(f"HGMMA.64x{n}x16.F32") == 4, ops
        assert "C7508" not in log and "C7512" not in log, log
    else:
        assert count(ops, "HGMMA") == 0 and count(ops, "USETMAXREG") == 0 and count(ops, "BPT") >= 1, ops
    sm90 = "compute_90" in gencode
    assert count(ops, "UTMALDG") == (3 if sm90 else 0) and (count(ops, "SYNCS") >= 4) == sm90, ops
    assert all(count(ops, f"UTMALDG.{rank}D") == int(sm90) for rank in (2, 3, 4)), ops
    # The shared -> global primitives (sm_90, no sm_90a feature): a store and a reduce-add per rank, one
    # UTMACMDFLUSH per bulk commit_group; traps on sm_80.
    for rank in (2, 3, 4):
        assert ops.get(f"UTMASTG.{rank}D", 0) == int(sm90) and ops.get(f"UTMAREDG.{rank}D.ADD", 0) == int(sm90), ops
    assert count(ops, "UTMACMDFLUSH") == (2 if sm90 else 0), ops


# ---- 4. the TMA reduce-add / store probe (issue 18) ----------------------------------------------------------


@pytest.fixture(scope="module")
def reduce_probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tma_reduce_probe")
    nvcc, exe, log = nvcc_compile(tmp, HOPPER / "tests" / "tma_reduce_probe.cu", SM90A, "tma_reduce_probe")
    config = subprocess.run([str(exe), "--config"], capture_output=True, text=True, check=True).stdout
    return {"ptxas": parse_ptxas(log), "log": log, "sass": sass_opcodes(nvcc, exe), "config": config}


# Template arguments <rank, head_dim, swizzle, reduce> in the mangled name: (rank, boxes per tile, reduce,
# dynamic shared memory key of --config). A 128B-swizzled fp32 box is 32 columns: head_dim / 32 boxes.
REDUCE_VARIANTS = {"ILi3ELi128ELb1ELb1E": (3, 4, True, "d128_sw128"), "ILi4ELi64ELb1ELb1E": (4, 2, True, "d64_sw128"),
                   "ILi2ELi64ELb0ELb1E": (2, 1, True, "d64_none"), "ILi3ELi128ELb1ELb0E": (3, 4, False, "d128_sw128"),
                   "ILi4ELi64ELb0ELb0E": (4, 1, False, "d64_none")}


def by_reduce_variant(table):
    return by_tag(table, "tma_reduce_probe", REDUCE_VARIANTS)


@pytest.mark.cuda_build
def test_reduce_probe_ptxas_no_spills_and_smem_within_227kb(reduce_probe):
    cfg = dict(re.findall(r"(\w+) (\d+)", reduce_probe["config"]))
    threads = int(cfg["threads"])
    for tag, r in by_reduce_variant(reduce_probe["ptxas"]).items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (tag, r)
        assert r["smem"] + int(cfg[REDUCE_VARIANTS[tag][3]]) <= SMEM_LIMIT, (tag, r)
        assert threads * r["registers"] <= CTA_REGISTERS, (tag, r)


@pytest.mark.cuda_build
def test_reduce_probe_sass_has_utmaredg_utmastg_and_bulk_groups(reduce_probe):
    # nvcc 13 / sm_90a: cp.reduce.async.bulk.tensor.Nd...add -> UTMAREDG.ND.ADD, cp.async.bulk.tensor.Nd
    # .global.shared::cta -> UTMASTG.ND, cp.async.bulk.commit_group -> UTMACMDFLUSH, the two wait_group
    # (.read 1 in the loop, 0 at the end) -> DEPBAR.LE SB0, fence.proxy.async.shared::cta -> FENCE.VIEW.ASYNC.S.
    for tag, ops in by_reduce_variant(reduce_probe["sass"]).items():
        rank, boxes, reduce, _ = REDUCE_VARIANTS[tag]
        assert ops.get(f"UTMAREDG.{rank}D.ADD", 0) == (boxes if reduce else 0), (tag, ops)
        assert ops.get(f"UTMASTG.{rank}D", 0) == (0 if reduce else boxes), (tag, ops)
        assert count(ops, "UTMAREDG") + count(ops, "UTMASTG") == boxes and count(ops, "UTMALDG") == 0, (tag, ops)
        assert count(ops, "UTMACMDFLUSH") == 1 and count(ops, "DEPBAR") == 2, (tag, ops)
        assert count(ops, "FENCE.VIEW.ASYNC") >= 1, (tag, ops)
        assert count(ops, "LDL") == 0 and count(ops, "STL") == 0 and count(ops, "BPT") == 0, (tag, ops)
