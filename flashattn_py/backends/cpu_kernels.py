"""The CPU kernels (csrc/cpu/, built by setup.py as flashattn_py/_cpu_kernels*.so, loaded with ctypes):
attention over sequences of per-sequence lengths read in place, forward and backward, one call for the whole
batch, its work items (sequence x KV head) cut into one chunk per torch thread and run on torch's own OpenMP
team (the library attaches the OpenMP runtime torch loaded). Where that runtime is not found the chunks run
on sequence_pool.py's workers (ctypes releases the GIL during the call).

They serve what torch's fused CPU kernel can only do with a call per sequence (torch_fused.forward_sequences
asks here first): packed batches of many short sequences and KV-cache decoding steps, where thousands of
calls, or one call per sequence of a decoding batch, cost more than the attention itself. The semantics stay
in Python: the spans (spans.py) and each query row's visible keys (masks.row_key_ranges) are computed here
and passed; the kernels only read them.

Without the library (no C++ compiler at install time, or FLASHATTN_CPU_KERNELS=0) `available()` is False
and every call takes the torch paths.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path

import torch

from .. import buffers
from ..params import AttentionParams
from ..semantics import masks
from . import sequence_pool
from .spans import Spans

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Which calls the kernels take (measured, docs/design.md "The CPU kernels"): every sequence has at most
# MAX_DECODE_QUERIES queries (decoding, any cache length: the kernels stream its keys once for the GQA
# group, against a torch call per sequence), or at most MAX_PAIRS queries x keys (the torch calls' fixed
# cost outweighs their faster blocked products). Past it a torch call per sequence is as fast or faster
# (measured, 2 threads: causal self-attention 64 x 1..512 71 / 249 ms here against 75 / 243 there, fwd /
# fwd+bwd; 8 x 64 queries on 2048 keys 28.4 here against 26.9; 32 queries on 2048 keys 12.8 against 13.7).
MAX_DECODE_QUERIES = 8
MAX_PAIRS = 256 * 256


class _Strides(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("row", ctypes.c_int64), ("head", ctypes.c_int64)]


class _Args(ctypes.Structure):
    """Mirror of FlashattnCpuArgs (csrc/cpu/attention_cpu.h); its size is checked against the library's."""
    _fields_ = ([("dtype", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("group_size", ctypes.c_int32),
                 ("nheads_kv", ctypes.c_int32), ("softmax_scale", ctypes.c_float), ("num_sequences", ctypes.c_int32),
                 ("spans", ctypes.c_void_p), ("row0", ctypes.c_void_p), ("key_lo", ctypes.c_void_p),
                 ("key_hi", ctypes.c_void_p)]
                + [(name, ctypes.c_void_p) for name in ("q", "k", "v", "dout", "out", "dq", "dk", "dv", "lse")]
                + [(f"{name}_strides", _Strides) for name in ("q", "k", "v", "out", "dout", "dq", "dk", "dv", "lse")])


def _find_library() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_cpu_kernels{suffix}"
        if path.exists():
            return path
    return None


def _load():
    if os.environ.get("FLASHATTN_CPU_KERNELS", "1") == "0":
        return None
    path = _find_library()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    for name in ("flashattn_cpu_forward", "flashattn_cpu_backward"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
    for name in ("flashattn_cpu_forward_chunks", "flashattn_cpu_backward_chunks"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p, ctypes.c_int]
        fn.restype = ctypes.c_int
    lib.flashattn_cpu_attach_openmp.argtypes = [ctypes.c_char_p]
    lib.flashattn_cpu_isa.restype = ctypes.c_char_p
    lib.flashattn_cpu_args_size.restype = ctypes.c_int64
    if lib.flashattn_cpu_args_size() != ctypes.sizeof(_Args):
        raise ImportError(f"{path}: FlashattnCpuArgs is {lib.flashattn_cpu_args_size()} bytes but its mirror in "
                          f"{__name__} is {ctypes.sizeof(_Args)}: the library and the package are out of step "
                          "(rebuild: pip install -e .)")
    return lib


def _torch_openmp() -> str | None:
    """Path of the OpenMP runtime this process has loaded (torch's: torch/lib/libgomp*.so*, or the system's;
    Intel's and LLVM's export the same GOMP_parallel), read from the process's memory map; None where there
    is none (or no /proc)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if Path(p).name.startswith(("libgomp", "libiomp5", "libomp")))
    return found[0] if found else None


LIBRARY = _load()
_OPENMP = None if LIBRARY is None else _torch_openmp()
ON_TORCH_TEAM = _OPENMP is not None and LIBRARY.flashattn_cpu_attach_openmp(_OPENMP.encode()) == 0


def available() -> bool:
    return LIBRARY is not None


def isa() -> str | None:
    """The instruction set the kernels run with here ("avx2+fma" or "baseline"), None without the library."""
    return None if LIBRARY is None else LIBRARY.flashattn_cpu_isa().decode()


def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AttentionParams, spans: Spans) -> bool:
    """Whether the kernels run this call: the library is there, a CPU batch with per-sequence lengths and
    no score modification, dropout, encoding (the torch paths slice positions per sequence) or paged cache,
    each head dim contiguous, and sequences short enough (MAX_DECODE_QUERIES, MAX_PAIRS)."""
    if LIBRARY is None or params.lengths is None or q.device.type != "cpu" or q.dtype not in _DTYPES:
        return False
    if params.has_dropout or params.mods.active or params.encoding is not None or params.paged is not None:
        return False
    if any(t.stride(-1) != 1 for t in (q, k, v)) or len(spans) == 0:
        return False
    queries, keys = spans.lengths
    return int(queries.max()) <= MAX_DECODE_QUERIES or int((queries * keys).max()) <= MAX_PAIRS


def _strides(t: torch.Tensor, packed: bool) -> _Strides:
    """bshd t's (batch, row, head) strides; a packed tensor's batch stride is unused (every row is in entry 0)."""
    return _Strides(0 if packed else t.stride(0), t.stride(1), t.stride(2))


def _lse_strides(lse: torch.Tensor, packed: bool) -> _Strides:
    if packed:  # (heads, total rows)
        return _Strides(0, lse.stride(1), lse.stride(0))
    return _Strides(lse.stride(0), lse.stride(2), lse.stride(1))  # (batch, heads, seqlen_q)


class _Call:
    """One call's arguments (kept alive until the kernels return) and its work items split over threads."""

    def __init__(self, q, k, v, params: AttentionParams, spans: Spans):
        sq, sk = spans.lengths
        row0 = torch.cumsum(sq, 0) - sq  # each sequence's first row in the key-range arrays
        total = int(row0[-1] + sq[-1])
        sequence = torch.repeat_interleave(torch.arange(len(sq)), sq, output_size=total)  # of each row
        key_lo, key_hi = masks.row_key_ranges(torch.arange(total) - row0[sequence], sq[sequence], sk[sequence],
                                              params.window)
        self.keep = [spans.table.contiguous(), row0, key_lo.to(torch.int32), key_hi.to(torch.int32)]
        self.packed = params.is_varlen
        self.args = _Args(dtype=_DTYPES[q.dtype], head_dim=params.head_dim, group_size=params.group_size,
                          nheads_kv=params.nheads_kv, softmax_scale=params.softmax_scale, num_sequences=len(spans),
                          spans=self.keep[0].data_ptr(), row0=row0.data_ptr(), key_lo=self.keep[2].data_ptr(),
                          key_hi=self.keep[3].data_ptr())
        self.set(q=q, k=k, v=v)
        # Items (sequence x KV head) cut into one range per thread of about equal work: a sequence's rows
        # times its keys, plus a fixed cost per item.
        cost = torch.repeat_interleave(sq * sk * params.group_size + 64, params.nheads_kv).cumsum(0)
        threads = min(torch.get_num_threads(), len(cost))
        bounds = torch.searchsorted(cost, cost[-1] * torch.arange(1, threads) / threads, right=True).tolist()
        self.edges = list(dict.fromkeys([0, *bounds, len(cost)]))  # chunk c: items edges[c] .. edges[c + 1] - 1

    def set(self, **tensors) -> None:
        for name, t in tensors.items():
            self.keep.append(t)
            setattr(self.args, name, t.data_ptr())
            if name == "lse":
                self.args.lse_strides = _lse_strides(t, self.packed)
            else:
                setattr(self.args, f"{name}_strides", _strides(t, self.packed))

    def run(self, backward: bool) -> None:
        def refused():
            return ValueError(f"the CPU kernels refused dtype code {self.args.dtype} / head_dim {self.args.head_dim}")

        if ON_TORCH_TEAM:
            chunks = LIBRARY.flashattn_cpu_backward_chunks if backward else LIBRARY.flashattn_cpu_forward_chunks
            edges = torch.tensor(self.edges, dtype=torch.int64)
            if chunks(ctypes.byref(self.args), edges.data_ptr(), len(self.edges) - 1) != 0:
                raise refused()
            return
        kernel = LIBRARY.flashattn_cpu_backward if backward else LIBRARY.flashattn_cpu_forward

        def one(item_range):
            if kernel(ctypes.byref(self.args), *item_range) != 0:
                raise refused()
        sequence_pool.run(list(zip(self.edges, self.edges[1:])), one, lambda _: 1, min_items=2)


def forward(q, k, v, params: AttentionParams, spans: Spans) -> tuple[torch.Tensor, torch.Tensor]:
    """(out like q, lse params.lse_shape fp32) of a call `takes` accepts."""
    out = buffers.empty_like(q)  # NaN-filled under fa.poisoned_outputs(), so a row the kernels miss shows
    lse = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    call = _Call(q, k, v, params, spans)
    call.set(out=out, lse=lse)
    call.run(backward=False)
    return out, lse


def backward(dout, q, k, v, out, lse, params: AttentionParams, spans: Spans):
    """(dq, dk, dv) like q, k, v of forward's call; key rows outside every span (past seqused_k) get 0."""
    dq = buffers.empty_like(q)
    new = buffers.empty_like if params.is_varlen else torch.zeros_like  # packed sequences cover every key row
    dk, dv = new(k), new(v)
    call = _Call(q, k, v, params, spans)
    call.set(dout=dout if dout.stride(-1) == 1 else dout.contiguous(), out=out, lse=lse, dq=dq, dk=dk, dv=dv)
    call.run(backward=True)
    return dq, dk, dv
