"""csrc/rotary_angles.h — the (cos, sin) of the RoPE / sinusoidal angles p * inv_freq that the CUDA kernels'
encode_rows_in_smem (csrc/positional.cuh) computes in-kernel — against float64, without a GPU: the header
is plain C++ with __host__ __device__ functions using only fp32 fmaf / rintf / * / +, so
csrc/tests/rotary_probe.cpp compiles it with the host compiler (-ffp-contract=off: no fusing the kernels'
nvcc would not do either, every fma is an explicit fmaf) and prints what each thread computes, with the
kernels' work split (128 threads, pair column i = tid % cols, rows tid / cols + k * groups).

Each thread walks its rows: it rotates the previous row's (cos, sin) by the step angle's when the position
advanced by exactly `groups` (row indices, contiguous position ids) and computes it afresh (an anchor:
pe_sincos, the exact angle reduced in fp32) at its first row, where positions jump, and after
AngleWalk::kRun rotations. The rotations' rounding accumulates ~linearly (~6e-8 per step, measured: 6.2e-6
after 127 steps without re-anchoring); with kRun = 16 the worst error measured over every case below is
1.1e-6, anchors alone 1.0e-7. The bounds (2e-6, 3e-7) leave ~2x for cases not listed.

Reference: the exact angle p * inv_freq in float64 (inv_freq the probe's fp32 value: p < 2^24 and a 24-bit
inv_freq make the float64 product exact), as flashattn_py/semantics/positional.py computes in float64.
"""
import math
import re
import subprocess

import numpy as np
import pytest
from host_probe import ROOT, build_probe

THREADS = 128  # the kernels' kThreads
ROTARY_DIMS = (16, 32, 48, 64, 96, 128, 160, 192, 256)  # pe.dim: head dims 32..256 and partial rotary dims
BASES = (10_000.0, 500_000.0)
TILE_ROWS = (128, 32)  # the Q tile (kBlockM) and the shortest K tile (kBlockN = 32..64)
MAX_ERROR = 2e-6
MAX_ANCHOR_ERROR = 3e-7
K_RUN = int(re.search(r"kRun = (\d+);", (ROOT / "csrc" / "rotary_angles.h").read_text())[1])


def _positions(rng):
    """{pattern: (first_row, positions or None)}; None: position = row index (the kernels' pos == nullptr)."""
    n = 192
    jumps = rng.choice([1] * 12 + [0, 2, 7, -40, 3000], size=n)  # mostly contiguous; repeats, gaps, restarts
    return {
        "row_index_0": (0, None),
        "row_index_1e5": (99_950, None),
        "row_index_2^17": (131_040, None),
        "contiguous_1e5": (17, list(range(99_950, 99_950 + n))),
        "contiguous_1e6": (3, list(range(999_970, 999_970 + n))),
        "gaps": (5, (np.cumsum(jumps) + 100_000).tolist()),
        "packed_restarts": (0, [j % 37 for j in range(n)]),  # packed sequences: positions restart at 0
        "arbitrary": (0, rng.integers(0, 200_000, size=n).tolist()),
    }


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """Every case's rows as a float64 array (case, i, r, position, inv_freq, cos, sin, run), and the cases."""
    exe = build_probe(tmp_path_factory, "rotary_probe", "-O2", "-ffp-contract=off")
    cases, lines = [], []
    for pattern, (first_row, pos) in _positions(np.random.default_rng(0)).items():
        for base in BASES:
            log2_base = float(np.float32(math.log2(base)))  # PositionalParams.log2_base is fp32
            for dim in ROTARY_DIMS:
                for rows in TILE_ROWS:
                    cases.append((pattern, base, dim, rows, first_row, pos))
                    pos_text = " ".join(map(str, pos)) if pos is not None else ""
                    lines.append(f"{dim} {log2_base!r} {rows} {first_row} {0 if pos is None else len(pos)} {pos_text}")
    proc = subprocess.run([str(exe)], input="\n".join(lines), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = np.array(proc.stdout.split(), dtype=np.float64).reshape(-1, 8)
    out[:, 4] = out[:, 4].astype(np.float32)  # printed with 9 digits: the exact fp32 inv_freq again
    return out, cases


def _by_case(out, cases):
    """(case index, its rows of `out`) for every case; the probe prints the cases in order."""
    bounds = np.searchsorted(out[:, 0], np.arange(len(cases) + 1))
    return [(c, out[bounds[c]:bounds[c + 1]]) for c in range(len(cases))]


def _errors(out):
    angle = out[:, 3] * out[:, 4]  # exact in float64
    return np.maximum(np.abs(out[:, 5] - np.cos(angle)), np.abs(out[:, 6] - np.sin(angle)))


def test_every_pair_of_every_row_once(walks):
    out, cases = walks
    for c, sel in _by_case(out, cases):
        pattern, _, dim, rows, _, _ = cases[c]
        i, r = sel[:, 1:3].astype(int).T
        assert len(i) == dim // 2 * rows, (pattern, dim, rows)
        assert (np.sort(i * rows + r) == np.arange(dim // 2 * rows)).all(), (pattern, dim, rows)


def test_cos_sin_error_against_float64(walks):
    out, cases = walks
    err = _errors(out)
    case = out[:, 0].astype(int)
    patterns = sorted({c[0] for c in cases})
    worst = {p: err[np.isin(case, [i for i, c in enumerate(cases) if c[0] == p])].max() for p in patterns}
    assert max(worst.values()) <= MAX_ERROR, {p: f"{e:.3g}" for p, e in worst.items()}


def test_anchors_are_accurate_at_any_position(walks):
    """pe_sincos alone (run == 0): the exact angle, reduced in fp32, at positions up to ~1e6."""
    out, _ = walks
    anchors = out[:, 7] == 0
    assert _errors(out[anchors]).max() <= MAX_ANCHOR_ERROR


def test_walks_rotate_while_contiguous_and_anchor_where_positions_jump(walks):
    out, cases = walks
    for c, sel in _by_case(out, cases):
        pattern, _, dim, rows, first_row, pos = cases[c]
        groups = THREADS // min(dim // 2, THREADS)
        for r0 in range(min(groups, rows)):  # one thread's rows (every column walks them alike)
            mine = sel[(sel[:, 1] == 0) & (sel[:, 2] % groups == r0)]
            mine = mine[np.argsort(mine[:, 2])]
            run = 0
            for k, row in enumerate(mine):
                p = first_row + int(row[2]) if pos is None else pos[first_row + int(row[2])]
                prev = None if k == 0 else (first_row + int(mine[k - 1][2]) if pos is None
                                            else pos[first_row + int(mine[k - 1][2])])
                run = run + 1 if prev is not None and p == prev + groups and run < K_RUN else 0
                assert row[7] == run, (pattern, dim, rows, r0, k)


def test_the_fp32_product_angle_would_not_be_the_reference():
    """Why the kernels use the exact angle: fl(p * inv_freq) alone is off by up to ulp(angle) / 2 (~4e-3 rad
    at 1e5), far more than bf16 inputs notice at the rotation but not what the float64 reference computes."""
    p = np.arange(99_000, 101_000, dtype=np.float64)
    inv = np.float32(0.865964353)  # inv_freq of pair 1 at dim 128, base 10000
    fp32_angle = (p.astype(np.float32) * inv).astype(np.float64)
    assert np.abs(np.cos(fp32_angle) - np.cos(p * np.float64(inv))).max() > 1e-3
