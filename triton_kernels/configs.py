"""Tile sizes per kernel, head-dim block and device.

GPU sizes follow the usual FlashAttention-2 trade-off: large query tiles amortize K/V loads, and the
fp32 accumulator (BLOCK_M x BLOCK_D) must stay in registers, so tiles shrink as head_dim grows. They
were picked by compiling candidates for sm_80 and sm_90 (python -m flashattn_py.static_report) and
keeping the largest tiles with 0 spills on both; tests/test_static_report.py holds them to that.
Not yet tuned on a GPU: the benchmark harness is where timings will move them.
Under the interpreter tiles are small and unequal (BLOCK_M != BLOCK_N) so that short test sequences
cross many tile boundaries and both ends of the causal diagonal land mid-tile.
"""
import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from .common import INTERPRETED


@dataclass(frozen=True)
class TileConfig:
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int  # software-pipelining depth of the K/V (or Q/dO) loads
    # The forward's key loop and the backward key-block kernel's query loop: run the interior blocks
    # through a second, mask-free copy of the loop (more code, often more registers) or every block
    # through the masked one. (The dQ kernel always splits.)
    split_mask: bool = True


_INTERPRETER_FORWARD = TileConfig(32, 16, 4, 1)
_INTERPRETER_DECODE = TileConfig(16, 32, 4, 1)  # decoding lengths: 16 rows, still unequal

# Decoding (a few queries per sequence against a long cache): with 128-row query tiles a one-token
# step computes 128x the useful q k^T and P V: at head_dim 128, 65 kFLOP per key and head against
# 512 bytes of K/V, which at an H100's peak rates takes about as long as the read, so decoding would
# not be memory-bound.
# Queries up to this many per sequence run 16-row tiles, the smallest tl.dot takes.
DECODE_MAX_SEQLEN_Q = 16


def is_decode(seqlen_q: int | None) -> bool:
    return seqlen_q is not None and seqlen_q <= DECODE_MAX_SEQLEN_Q


def packs_gqa(pack_gqa: bool | None, seqlen_q: int, group_size: int, plain: bool) -> bool:
    """Whether the forward packs the group_size query heads of a KV head into one tile's rows
    (FlashAttention 3's pack_gqa; attention_fwd_kernel PACK_GQA). By default at decoding lengths: a
    one-query step then fills group_size rows of the 16-row tile instead of one, and the group
    reads its K/V once instead of group_size times. Only for plain calls (no in-kernel encoding,
    dropout or bias: a decoding step's), the ones the static report checks spill-free; with per-row
    encoding or bias pointers the packed tile spilled 4-20 bytes on sm_80 (head_dim 64). pack_gqa
    True / False overrides (with GQA)."""
    if group_size <= 1:
        return False
    return is_decode(seqlen_q) and plain if pack_gqa is None else bool(pack_gqa)
_INTERPRETER_DKDV = TileConfig(16, 32, 4, 1)
_INTERPRETER_DQ = TileConfig(32, 16, 4, 1)


def forward_config(block_d: int, bias: bool = False, seqlen_q: int | None = None,
                   arch: int | None = None, k_encoded: bool = False) -> TileConfig:
    """bias: an attention-bias tile is loaded too (its 2-D pointer tile costs registers). seqlen_q:
    the call's (longest) query count; decoding lengths get decode tiles (DECODE_MAX_SEQLEN_Q). arch:
    the GPU (launch_arch). split_mask: the key loop's mask-free interior blocks run in a second copy
    of the loop (attention_fwd_kernel SPLIT_MASK), where that compiles without spills. k_encoded: K tiles
    are rotary-/sinusoidal-encoded as they load (pe_strategy), which needs narrower key tiles at head_dim 128."""
    if INTERPRETED:
        return _INTERPRETER_DECODE if is_decode(seqlen_q) else _INTERPRETER_FORWARD
    if is_decode(seqlen_q):  # 4 warps share the 16 rows; K/V tiles as wide as registers allow
        # With a bias too: a 16-row bias tile is small (0 spills, static report "dense-decode-mask"),
        # while the 128-row bias tiles below spilled once split-K's 64-bit offsets were added. At head
        # dim 256 a bias plus softcap and ALiBi spilled 4-12 B with 32-key tiles (4 or 8 warps, sm_80 or
        # sm_90, split or not); 16-key tiles do not.
        if block_d <= 128:
            return TileConfig(16, 64, 4, 3)
        return TileConfig(16, 16, 4, 2) if bias else TileConfig(16, 32, 4, 2)
    if bias and block_d == 128:
        return TileConfig(128, 32, 8, 3)
    if block_d <= 64:  # with a bias (score-mods) the interior loop spilled 32 B on sm_80
        return TileConfig(128, 64, 8, 3, split_mask=not bias or (arch is not None and arch >= 90))
    if block_d <= 128:
        if arch is not None and arch >= 90:
            # K/V through TMA (no pointer tiles): 128 x 128 fits, 254 registers, 0 spills, wgmma
            # m64n128 for both GEMMs (bench/results/static-2026-12-07). K encoded in the kernel: 128 x 128
            # spilled 416 B, 128 x 64 none (238 registers; bench/results/static-2026-12-07/rope-half.txt).
            return TileConfig(128, 64 if k_encoded else 128, 8, 2)
        return TileConfig(128, 64, 8, 3, split_mask=False)  # the interior loop spilled 36 B on sm_80
    return TileConfig(64, 32, 8, 2)


def dkdv_config(block_d: int, bias: bool = False) -> TileConfig:
    """dK/dV kernel: a key tile stays resident while query tiles stream past it."""
    if INTERPRETED:
        return _INTERPRETER_DKDV
    # split_mask=False everywhere on GPUs: the mask-free interior loop is a second copy of the step's
    # code, and it made every default tile spill on sm_80 or sm_90 (8-64 B; bench/results/
    # static-2026-12-07). The interpreter tiles keep it on, so CI tests both loops' logic.
    if bias and block_d <= 128:
        return TileConfig(32, 32, 8 if block_d == 128 else 4, 2, split_mask=False)
    if block_d <= 64:
        return TileConfig(32, 128, 8, 2, split_mask=False)
    if block_d <= 128:
        return TileConfig(32, 64, 8, 2, split_mask=False)
    # Five BLOCK_N x 256 fp32/fp16 tiles live at once (k, v, dk, dv, and the streamed q/dO): every
    # BLOCK_N >= 64 spills on sm_90 (wgmma needs its accumulators in registers), so take 32 and accept
    # mma.sync there (tests/test_static_report.py names this exception).
    return TileConfig(32, 32, 8, 2, split_mask=False)


# The GPU arch the launchers choose tiles for when their tensors are not on a GPU: the static report
# records launches on CPU tensors for each arch it compiles (launching_for); None otherwise.
_cpu_launch_arch: int | None = None


def launch_arch(device) -> int | None:
    """sm_XY of the GPU a launch runs on, as XY (the static report's arch for CPU tensors)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return _cpu_launch_arch


@contextlib.contextmanager
def launching_for(arch: int | None):
    global _cpu_launch_arch
    saved, _cpu_launch_arch = _cpu_launch_arch, arch
    try:
        yield
    finally:
        _cpu_launch_arch = saved


def fused_config(block_d: int, bias: bool = False, arch: int | None = None) -> TileConfig:
    """The fused backward (dK/dV kernel with FUSED_DQ): dkdv_config's key tile, plus a BLOCK_M x
    BLOCK_D fp32 dQ share per step (added to memory by a TMA reduce on sm_90). At head_dim 256 that
    share made 32-query tiles spill on sm_80 (32/20 B); 16 queries do not.
    On sm_90 (no TMA-reduce pointer tile, wgmma accumulators) larger tiles fit without spills
    (bench/results/static-2026-12-07): at head_dim 128, 128 keys per program, so the score GEMMs are
    m64n32 instead of m64n16 and each Q / dO tile serves twice the keys; at head_dim 64 the mask-free
    interior loop. sm_80 keeps the smaller ones (88 B spilled at 128 keys)."""
    if INTERPRETED:
        return _INTERPRETER_DKDV
    if arch is not None and arch >= 90 and not bias:
        if block_d <= 64:
            return TileConfig(32, 128, 8, 2, split_mask=True)
        if block_d <= 128:
            return TileConfig(32, 128, 8, 2, split_mask=False)
    if block_d > 128:  # with a bias, 16 x 32 spilled 4 B on sm_90; 16 x 16 does not
        return TileConfig(16, 16 if bias else 32, 8, 2, split_mask=False)
    if bias:  # with 4 warps at head_dim 64 the dQ share spilled 8 B on sm_80
        return TileConfig(32, 32, 8, 2, split_mask=False)
    return dkdv_config(block_d, bias)


def dq_config(block_d: int, bias: bool = False) -> TileConfig:
    """dQ kernel: a query tile stays resident while key tiles stream past it. bias: a 2-D bias tile
    is loaded too; with it 128 queries at head_dim 64 spilled 16-52 B on sm_80."""
    if INTERPRETED:
        return _INTERPRETER_DQ
    if block_d <= 64 and not bias:
        return TileConfig(128, 32, 8, 3)
    if block_d <= 128:
        return TileConfig(64, 32, 8, 3)
    return TileConfig(64, 16, 8, 2)


# Autotuning candidates (FLASHATTN_AUTOTUNE=1, see autotune.py): the default first, then variants
# that trade tile size against pipelining depth. sm_90 has 228 KB of shared memory per SM (sm_80:
# 164 KB), so it gets the deeper / wider variants; a candidate that does not fit is skipped at run
# time. tests/test_autotune.py checks every candidate against the reference on a GPU.
def forward_candidates(block_d: int, arch: int, bias: bool = False, seqlen_q: int | None = None) -> list[TileConfig]:
    default = forward_config(block_d, bias, seqlen_q, arch)
    if bias:
        return [default]
    if INTERPRETED:
        return [default]
    if is_decode(seqlen_q):
        return [default, TileConfig(16, 128, 4, 2) if block_d <= 64 else TileConfig(16, 32, 4, 3),
                TileConfig(16, 64, 2, 3)]
    if block_d <= 64:
        extra = [TileConfig(128, 128, 8, 2), TileConfig(128, 64, 4, 3), TileConfig(64, 64, 4, 4)]
    elif block_d <= 128:
        extra = [TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 3)]
        extra += [TileConfig(128, 64, 8, 3), TileConfig(128, 128, 8, 2, split_mask=False)] if arch >= 90 else []
    else:
        extra = [TileConfig(64, 64, 8, 2), TileConfig(32, 32, 4, 2)]
    return [default] + extra


def dkdv_candidates(block_d: int, arch: int, bias: bool = False) -> list[TileConfig]:
    default = dkdv_config(block_d, bias)
    if bias:
        return [default]
    if INTERPRETED:
        return [default]
    if block_d <= 64:
        extra = [TileConfig(64, 128, 8, 2), TileConfig(32, 64, 4, 3)]
    elif block_d <= 128:
        extra = [TileConfig(64, 64, 8, 2), TileConfig(32, 128, 8, 2), TileConfig(16, 64, 4, 3)]
    else:
        extra = [TileConfig(16, 32, 4, 2)]
    return [default] + extra


def fused_candidates(block_d: int, arch: int, bias: bool = False) -> list[TileConfig]:
    """The default, dK/dV's candidates, and each with the mask-free interior loop (split_mask)."""
    default = fused_config(block_d, bias, arch)
    if bias or INTERPRETED:
        return [default]
    tiles = [default] + [c for c in dkdv_candidates(block_d, arch) if c != default]
    return tiles + [dataclasses.replace(c, split_mask=True) for c in tiles[:2]]


def dq_candidates(block_d: int, arch: int, bias: bool = False) -> list[TileConfig]:
    default = dq_config(block_d, bias)
    if bias:
        return [default]
    if INTERPRETED:
        return [default]
    if block_d <= 64:
        extra = [TileConfig(128, 64, 8, 2), TileConfig(64, 32, 4, 3)]
    elif block_d <= 128:
        extra = [TileConfig(128, 32, 8, 2), TileConfig(64, 64, 8, 2), TileConfig(64, 32, 4, 3)]
    else:
        extra = [TileConfig(32, 16, 4, 2)]
    return [default] + extra
