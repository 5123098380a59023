"""Static compile report of the attention kernels for sm_80 / sm_90a, no GPU needed.

For each (arch, dtype, head_dim, mask, positional encoding) this compiles every kernel exactly as
the launchers (``attention_forward`` / ``attention_backward``) would launch it on a GPU and reports
what ptxas says (registers, spills) plus shared memory and tensor-core instruction counts (see
:mod:`flashattn_py.tools.kernel_report`).

"Exactly as the launchers would": the launchers are run on small CPU tensors with the kernel objects
swapped for recorders, so the argument list, the constexprs, the tile config and num_warps /
num_stages are the ones the launcher passes (a kernel launched without them, the preprocess kernel,
gets Triton's defaults, 4 warps and 3 stages, as at run time). Argument types are Triton's own
(``triton.runtime.jit.mangle_type`` of each value: tensors ``*fp16`` / ``*bf16`` / ``*fp32`` /
``*i64`` by dtype, ints ``i32``, floats ``fp32``). Which ints count as multiples of 16: see
``divisible_by_16``. Adding an argument or a constexpr to a kernel and its launcher needs no change
here.

Run with TRITON_INTERPRET unset (the tile configs and ``triton.jit`` both depend on it)::

    python -m flashattn_py.tools.static_report --arch 80 90 --dtype fp16 bf16 --head-dim 64 128 256 \
        --json report.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton

from .kernel_report import KernelFacts, compile_facts, theoretical_occupancy

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FWD_MODULE = "flashattn_py.triton_kernels.attention_fwd"
BWD_MODULE = "flashattn_py.triton_kernels.attention_bwd"
PE_MODULE = "flashattn_py.triton_kernels.positional"
MERGE_MODULE = "flashattn_py.triton_kernels.split_merge"
ATTENTION_KERNELS = (  # (module, name), in report order
    (FWD_MODULE, "attention_fwd_kernel"),
    (BWD_MODULE, "attention_bwd_preprocess_kernel"),
    (BWD_MODULE, "attention_bwd_dkdv_kernel"),
    (BWD_MODULE, "attention_bwd_dq_kernel"),
)
# The dK/dV kernel compiled with FUSED_DQ (the default backward: dQ by atomics, no dQ kernel) is
# reported under its own name; the three kernels above are the deterministic=True backward's.
FUSED_BWD = "attention_bwd_fused_kernel"
# The encoding pre-pass (pe_k_strategy="prepass") launches this one too; decoding with split-K the
# merge of the partial results.
KERNELS = ATTENTION_KERNELS + ((PE_MODULE, "encode_kernel"), (MERGE_MODULE, "merge_splits_kernel"))
DECODE_KERNELS = ("attention_fwd_kernel", "merge_splits_kernel")
# Inference calls: the forward (and merge) only.
DECODING_VARIANTS = ("decode", "paged-varlen", "dense-decode", "dense-decode-mask")
# Positional-encoding variants. Encoded ones force pe_k_strategy="in_kernel" (every kernel encodes
# its q and k tiles itself: the most code and registers), except "rope-prepass", the path "auto"
# takes at training lengths (streamed operands encoded by encode_kernel beforehand). "decode" is not
# an encoding: one decoding step through flash_attn_with_kvcache (one query per sequence, a paged
# cache, split-K, left padding), which launches the forward with its decode tiles and the merge kernel only;
# "paged-varlen" one flash_attn_varlen_func(block_table=) call (packed decode and prefill rows against
# a paged cache, split-K): the same two kernels, with the packed-batch layout. "dense-decode" is a
# one-query dense call (flashattn_py.attention as a transformers model's decoding step makes it)
# split as split_k.py splits it on a GPU (GQA packed); "dense-decode-mask" the same with the padding
# mask, softcap and ALiBi such a step may carry (which turn packing off).
# "sinks": attention sinks (GPT-OSS) in the forward; "bias-grad": a learned T5-style (1, heads, sq, sk)
# float bias whose gradient the dK/dV kernel adds up (fp32 atomics, DBIAS_ADD).
PE_VARIANTS = ("none", "rope", "rope-interleaved", "rope-table", "sinusoidal", "rope-prepass", "softcap", "attn-bias",
               "score-mods", "key-padding", "sinks", "bias-grad", "decode", "paged-varlen", "dense-decode",
               "dense-decode-mask")
# Representative launch: GQA (group_size 4, not 1: Triton would turn an int arg equal to 1 into a
# constexpr) and seqlens that are not multiples of 16. Sizes do not matter otherwise.
_BATCH, _SEQLEN_Q, _SEQLEN_K, _NHEADS_Q, _NHEADS_KV = 2, 77, 93, 8, 2
_LAUNCH_OPTIONS = {"num_warps": 4, "num_stages": 3}  # Triton's defaults (CUDAOptions) when not passed


def _check_not_interpreted() -> None:
    if triton.knobs.runtime.interpret or os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError(
            "flashattn_py.tools.static_report must run with TRITON_INTERPRET unset: with TRITON_INTERPRET=1 "
            "the kernels are interpreter functions (nothing to compile) and triton_kernels/configs.py "
            "returns the small interpreter tile configs, not the GPU ones. Run it in a process "
            "without that variable, e.g. `env -u TRITON_INTERPRET python -m flashattn_py.tools.static_report`.")


def _kernel_modules():
    _check_not_interpreted()
    from ..triton_kernels import common, configs
    if common.INTERPRETED or configs.INTERPRETED:  # imported earlier in this process under TRITON_INTERPRET=1
        raise RuntimeError("flashattn_py.triton_kernels was imported with TRITON_INTERPRET=1; "
                           "run the static report in a fresh process without it")
    return importlib.import_module(FWD_MODULE), importlib.import_module(BWD_MODULE)


def divisible_by_16(signature: dict[str, str], head_dim: int) -> list[str]:
    """Args to specialise as multiples of 16, as Triton's launcher would for the usual call.

    At launch Triton marks a pointer whose address, and an int whose value, is a multiple of 16.
    What we assume (contiguous or packed bshd q/k/v with head_dim 64/128/256):
    - every pointer: torch allocations are 256-byte aligned (q/k/v, outputs, lse/delta, positions,
      cos/sin tables, and the placeholder pointers when there is no encoding);
    - the q/k/v/o/do/dq/dk/dv strides (``stride_*``): each is head_dim times something (d, h*d,
      s*h*d, or 3*h*d for a packed qkv), so a multiple of 16 whatever seqlen and nheads are;
    - head_dim itself when it is a multiple of 16 (the launcher would mark it too, and it matters:
      the ``offs_d < head_dim`` column mask is what lets loads vectorise);
    NOT marked, since user values are arbitrary: seqlen_q / seqlen_k, nheads_q, group_size, window
    sizes, and the encoding's ints: position strides (``qpos_stride_s`` is 1 for contiguous
    positions, ``qpos_stride_b`` is seqlen), cos/sin table row stride (rotary_dim / 2) and pe_dim.
    A launch where some of these happen to be multiples of 16 only gets a better-or-equal variant.
    """
    marked = [n for n, ty in signature.items() if ty.startswith("*") or n.startswith("stride_")]
    if head_dim % 16 == 0 and "head_dim" in signature:
        marked.append("head_dim")
    return marked


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel as a launcher would compile it: what compile_facts needs, and the tile config."""
    module: str
    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int

    @property
    def label(self) -> str:
        """The name the report lists it under: the kernel's, FUSED_BWD for the fused backward."""
        return FUSED_BWD if self.constexprs.get("FUSED_DQ") else self.kernel


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn, module: str, calls: list):
        self.fn, self.module, self.calls = fn, module, calls

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs):
        from triton.runtime.jit import mangle_type
        options = {k: kwargs.pop(k, v) for k, v in _LAUNCH_OPTIONS.items()}
        if len(args) > len(self.fn.arg_names):
            raise TypeError(f"{self.fn.__name__} got {len(args)} positional args")
        bound = dict(zip(self.fn.arg_names, args))
        overlap = set(bound) & set(kwargs)
        unknown = set(kwargs) - set(self.fn.arg_names)
        if overlap or unknown:
            raise TypeError(f"{self.fn.__name__}: args given twice {sorted(overlap)}, unknown {sorted(unknown)}")
        bound.update(kwargs)
        missing = [p.name for p in self.fn.params if p.name not in bound and not p.has_default]
        if missing:
            raise TypeError(f"{self.fn.__name__}: launcher passes no value for {missing}")
        signature, constexprs = {}, {}
        for p in self.fn.params:
            value = bound[p.name] if p.name in bound else p.default
            ty = "constexpr" if p.is_constexpr else mangle_type(value)
            if ty == "constexpr":  # also what Triton makes of a None argument
                constexprs[p.name] = value
            else:
                signature[p.name] = ty
        self.calls.append(KernelLaunch(self.module, self.fn.__name__, signature, constexprs,
                                       options["num_warps"], options["num_stages"]))


@contextlib.contextmanager
def _recording(calls: list):
    """Swap the kernels for recorders in the launchers' modules (this process only)."""
    saved = []
    try:
        for module_name, name in KERNELS:
            module = importlib.import_module(module_name)
            fn = getattr(module, name)
            saved.append((module, name, fn))
            setattr(module, name, _Recorder(fn, module_name, calls))
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def _encoding_options(pe: str, head_dim: int) -> dict:
    from ..params import Rotary, Sinusoidal
    if pe == "none":
        return {}
    if pe == "rope-prepass":
        return dict(rotary=Rotary(), pe_k_strategy="prepass")
    if pe == "softcap":  # not encodings: score modifications (score_mods.py), one or all at once
        return dict(softcap=30.0)
    if pe == "attn-bias":
        return dict(attn_bias=torch.zeros(_BATCH, 1, _SEQLEN_Q, _SEQLEN_K))
    if pe == "sinks":
        return dict(sinks=torch.zeros(_NHEADS_Q))
    if pe == "bias-grad":  # kernel_launches passes the backward a gradient buffer for it
        return dict(attn_bias=torch.zeros(1, _NHEADS_Q, _SEQLEN_Q, _SEQLEN_K))
    if pe == "key-padding":  # a boolean (batch, 1, 1, seqlen_k) mask: one row for every query (BIAS_*_PER_KEY)
        return dict(softcap=30.0, alibi_slopes=torch.ones(_NHEADS_Q),
                    attn_bias=torch.ones(_BATCH, 1, 1, _SEQLEN_K, dtype=torch.bool))
    if pe == "score-mods":
        return dict(softcap=30.0, alibi_slopes=torch.ones(_NHEADS_Q),
                    attn_bias=torch.zeros(_BATCH, 1, _SEQLEN_Q, _SEQLEN_K))
    if pe == "rope":
        spec = dict(rotary=Rotary())
    elif pe == "rope-interleaved":
        spec = dict(rotary=Rotary(interleaved=True))
    elif pe == "rope-table":
        rows = max(_SEQLEN_Q, _SEQLEN_K)
        spec = dict(rotary=Rotary(cos=torch.ones(rows, head_dim // 2), sin=torch.zeros(rows, head_dim // 2)))
    elif pe == "sinusoidal":
        spec = dict(sinusoidal=Sinusoidal())
    else:
        raise ValueError(f"pe must be one of {PE_VARIANTS}, got {pe!r}")
    return dict(spec, pe_k_strategy="in_kernel")


def kernel_launches(dtype: str, head_dim: int, has_window: bool = True, pe: str = "none",
                    arch: int | None = None) -> list[KernelLaunch]:
    """The kernel launches of one forward and both backwards (fused; deterministic), as the
    launchers make them on a GPU.

    ``has_window``: causal (HAS_WINDOW=True; more code, the mask arithmetic) or a dense call.
    ``arch``: the GPU the launchers choose tiles for (configs.launching_for).
    """
    from ..triton_kernels import configs
    from ..validation.attention import attention_params
    fwd, bwd = _kernel_modules()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    q = torch.zeros(_BATCH, _SEQLEN_Q, _NHEADS_Q, head_dim, dtype=torch_dtype)
    k = torch.zeros(_BATCH, _SEQLEN_K, _NHEADS_KV, head_dim, dtype=torch_dtype)
    v = torch.zeros_like(k)
    calls: list[KernelLaunch] = []
    if pe in DECODING_VARIANTS:
        call = {"decode": _decode_step, "paged-varlen": _paged_varlen_call,
                "dense-decode": functools.partial(_dense_decode_call, masked=False),
                "dense-decode-mask": functools.partial(_dense_decode_call, masked=True)}[pe]
        with _recording(calls), configs.launching_for(arch):
            call(fwd, torch_dtype, head_dim, has_window)
        expected = list(DECODE_KERNELS)
    else:
        params = attention_params(q, k, v, causal=has_window, **_encoding_options(pe, head_dim))
        dbias = torch.zeros(params.mods.bias_source.shape) if pe == "bias-grad" else None
        with _recording(calls), configs.launching_for(arch):
            out, lse, scratch = fwd.attention_forward(q, k, v, params)
            for deterministic in (False, True):  # the fused backward, then the atomic-free one
                bwd.attention_backward(torch.zeros_like(out), q, k, v, out, lse, scratch,
                                       dataclasses.replace(params, deterministic=deterministic), dbias=dbias)
        names = [name for _, name in ATTENTION_KERNELS]
        expected = names[:2] + [FUSED_BWD] + names[2:]
    # A broadcast bias's gradient launches the dK/dV kernel once per sequence (attention_bwd.dbias_launches),
    # and both backwards launch the preprocess kernel: the same compiled kernel, listed once.
    calls[:] = [c for i, c in enumerate(calls) if all(c.label != d.label for d in calls[:i])]
    names = [c.label for c in calls if c.kernel != "encode_kernel"]
    if names != expected:
        raise RuntimeError(f"expected the launchers to launch {expected}, they launched {names}")
    return calls


def _decode_step(fwd, dtype: torch.dtype, head_dim: int, causal: bool) -> None:
    """One decoding step as flash_attn_with_kvcache launches it on the Triton backend (decoding.py; that
    entry point itself refuses CPU tensors without the interpreter): a query per sequence against a
    paged cache (page size 16) with _SEQLEN_K used tokens after some left padding (cache_leftpad),
    split-K forced (3 splits): the decoding forward with every option it can take."""
    from ..backends import triton_backend
    from ..decoding import step_params
    page_size, pages = 16, -(-_SEQLEN_K // 16)
    q = torch.zeros(_BATCH, 1, _NHEADS_Q, head_dim, dtype=dtype)
    cache = torch.zeros(_BATCH * pages, page_size, _NHEADS_KV, head_dim, dtype=dtype)
    table = torch.arange(_BATCH * pages, dtype=torch.int32).reshape(_BATCH, pages)
    params = step_params(q, cache, torch.full((_BATCH,), _SEQLEN_K, dtype=torch.int32), capacity=pages * page_size,
                         page_size=page_size, block_table=table, cache_batch_idx=None,
                         cache_leftpad=torch.full((_BATCH,), 5, dtype=torch.int32), num_splits=3, pack_gqa=None,
                         impl=triton_backend.BACKEND, causal=causal)
    fwd.attention_forward(q, cache, cache, params)


def _paged_varlen_call(fwd, dtype: torch.dtype, head_dim: int, causal: bool) -> None:
    """One flash_attn_varlen_func(block_table=) call as it launches on the Triton backend (varlen_paged.py
    builds its params): three packed sequences of 1, 9 and 1 queries against 93, 77 and 40 keys in a
    paged cache (page size 16), split-K forced (3 splits)."""
    from ..backends import triton_backend
    from ..varlen_paged import paged_varlen_params
    page_size, lens_q, lens_k = 16, [1, 9, 1], [_SEQLEN_K, 77, 40]
    pages = -(-_SEQLEN_K // page_size)
    q = torch.zeros(sum(lens_q), _NHEADS_Q, head_dim, dtype=dtype)
    cache = torch.zeros(len(lens_q) * pages, page_size, _NHEADS_KV, head_dim, dtype=dtype)
    table = torch.arange(len(lens_q) * pages, dtype=torch.int32).reshape(len(lens_q), pages)
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32) for n in (lens_q, lens_k))
    params, _ = paged_varlen_params(q, cache, cache, cu_q, cu_k, max(lens_q), max(lens_k), table, num_splits=3,
                                    pack_gqa=None, seqused_k=None, dropout_p=0.0, rotary=None, sinusoidal=None,
                                    impl=triton_backend.BACKEND, causal=causal)
    fwd.attention_forward(q[None], cache, cache, params)


def _dense_decode_call(fwd, dtype: torch.dtype, head_dim: int, causal: bool, masked: bool) -> None:
    """A one-query dense forward as the attention op launches it on the Triton backend, split-K forced
    (3 splits; ops.attention_forward decides the count on a GPU); masked: with a boolean key-padding
    mask, softcap and ALiBi."""
    from ..validation.attention import attention_params
    q = torch.zeros(_BATCH, 1, _NHEADS_Q, head_dim, dtype=dtype)
    k = torch.zeros(_BATCH, _SEQLEN_K, _NHEADS_KV, head_dim, dtype=dtype)
    mods = dict(attn_bias=torch.ones(_BATCH, 1, 1, _SEQLEN_K, dtype=torch.bool), softcap=30.0,
                alibi_slopes=torch.ones(_NHEADS_Q)) if masked else {}
    params = dataclasses.replace(attention_params(q, k, k, causal=causal, **mods), num_splits=3)
    fwd.attention_forward(q, k, k, params)


@dataclass(frozen=True)
class KernelRow:
    """One line of the report: a kernel instance, how it was compiled, and its static facts."""
    kernel: str
    arch: int
    dtype: str
    head_dim: int
    has_window: bool | None  # the HAS_WINDOW constexpr; None for a kernel without one (preprocess)
    pe: str | None  # positional-encoding variant; None for a kernel without PE_KIND (preprocess)
    block_m: int
    block_n: int | None  # None for a kernel without a key tile (preprocess)
    block_d: int
    num_warps: int
    num_stages: int
    facts: KernelFacts


def _compile(launch: KernelLaunch, arch: int, head_dim: int, loops: bool = False) -> KernelFacts:
    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    return compile_facts(fn, launch.signature, launch.constexprs, arch, num_warps=launch.num_warps,
                         num_stages=launch.num_stages,
                         divisible_by_16=divisible_by_16(launch.signature, head_dim), loops=loops)


def _row(launch: KernelLaunch, arch: int, dtype: str, head_dim: int, has_window: bool, pe: str,
         facts: KernelFacts) -> KernelRow:
    c = launch.constexprs
    return KernelRow(launch.label, arch, dtype, head_dim,
                     has_window if "HAS_WINDOW" in c else None, pe if "Q_PE_KIND" in c or "PE_KIND" in c else None,
                     c.get("BLOCK_M", c.get("BLOCK_S")), c.get("BLOCK_N"), c["BLOCK_D"], launch.num_warps,
                     launch.num_stages, facts)


def attention_kernel_rows(arch: int, dtype: str, head_dim: int, has_window: bool = True, pe: str = "none",
                          jobs: int = 1) -> list[KernelRow]:
    """Report rows of the forward, preprocess, fused backward, dK/dV and dQ kernels, in that order."""
    return report_rows([(arch, dtype, head_dim, has_window, pe)], jobs)


def attention_kernel_facts(arch: int, dtype: str, head_dim: int, has_window: bool = True,
                           pe: str = "none") -> list[KernelFacts]:
    """Static facts of the forward, preprocess, fused backward, dK/dV and dQ kernels for sm_{arch}, in that order."""
    return [r.facts for r in attention_kernel_rows(arch, dtype, head_dim, has_window, pe)]


def report_rows(cases, jobs: int = 1, loops: bool = False) -> list[KernelRow]:
    """Rows for each (arch, dtype, head_dim, has_window, pe) case; kernels that a case's mask or
    encoding does not change (the preprocess kernel) are compiled and listed once per (arch, dtype,
    head_dim). ``jobs`` > 1 compiles in that many worker processes."""
    todo, seen = [], set()
    for arch, dtype, head_dim, has_window, pe in cases:
        for launch in kernel_launches(dtype, head_dim, has_window, pe, arch):
            key = (launch.label, arch, dtype, head_dim,
                   has_window if "HAS_WINDOW" in launch.constexprs else None,
                   pe if "Q_PE_KIND" in launch.constexprs or "PE_KIND" in launch.constexprs else None)
            if key not in seen:
                seen.add(key)
                todo.append((launch, arch, dtype, head_dim, has_window, pe))
    if jobs > 1 and len(todo) > 1:
        # spawn, not fork: this process has imported torch (threads); workers only compile.
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            facts = list(pool.map(_compile, *zip(*[(t[0], t[1], t[3], loops) for t in todo])))
    else:
        facts = [_compile(launch, arch, head_dim, loops) for launch, arch, _, head_dim, _, _ in todo]
    return [_row(*t, f) for t, f in zip(todo, facts)]


def alu_per_score(r: KernelRow) -> list[float]:
    """Each innermost loop's non-MMA, non-memory SASS instructions (KernelFacts.loops) per score
    element a thread computes in one iteration (BLOCK_M x BLOCK_N scores over the program's threads):
    the mask, softmax, conversion and address work a tile pair costs besides its matmuls. Static
    counts: a loop's body once, whatever its trip count."""
    if r.block_n is None:
        return []
    scores = r.block_m * r.block_n / (32 * r.num_warps)
    return [loop["alu"] / scores for loop in r.facts.loops]


def _row_json(r: KernelRow) -> dict:
    d = asdict(r)
    d["alu_per_score"] = alu_per_score(r)
    d["facts"] = asdict(r.facts)
    d["occupancy"] = theoretical_occupancy(r.arch, r.facts.registers, r.facts.shared_bytes, r.num_warps)
    return d


def format_table(rows: list[KernelRow]) -> str:
    head = ("kernel", "arch", "dtype", "hdim", "causal", "pe", "M", "N", "D", "warps", "stages", "regs",
            "spill st/ld", "smem", "occ", "mma.sync", "wgmma", "ldmatrix", "tma", "alu/score by loop", "wgmma shapes")
    lines = []
    for r in rows:
        f, mma = r.facts, r.facts.mma_instructions
        lines.append((r.kernel.removeprefix("attention_"), f"sm_{r.arch}", r.dtype, str(r.head_dim),
                      {True: "y", False: "n", None: "-"}[r.has_window], r.pe or "-", str(r.block_m),
                      "-" if r.block_n is None else str(r.block_n), str(r.block_d), str(r.num_warps),
                      str(r.num_stages), str(f.registers), f"{f.spill_stores}/{f.spill_loads}",
                      str(f.shared_bytes),
                      f"{theoretical_occupancy(r.arch, f.registers, f.shared_bytes, r.num_warps):.0%}",
                      str(mma.get("mma.sync", 0)), str(mma.get("wgmma.mma_async", 0)),
                      str(mma.get("ldmatrix", 0)), str(f.tma_instructions),
                      " ".join(f"{x:.1f}" for x in alu_per_score(r)) or "-",
                      " ".join(f"{shape}x{n}" for shape, n in f.wgmma_shapes.items()) or "-"))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in (0, 5, len(head) - 1) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashattn_py.tools.static_report",
                                description="Compile the attention kernels for sm_80 / sm_90a (no GPU) and "
                                            "report registers, spills, shared memory and tensor-core use.")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    p.add_argument("--dtype", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--causal", choices=["yes", "no", "both"], default="yes",
                   help="HAS_WINDOW variants (default: yes, the kernel with the mask arithmetic)")
    p.add_argument("--pe", nargs="+", choices=PE_VARIANTS, default=["none"],
                   help="positional-encoding variants; encoded ones are compiled with every q/k tile "
                        "encoded in-kernel (default: none)")
    p.add_argument("--jobs", type=int, default=_default_jobs(), help="parallel compiles (default: CPUs)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.add_argument("--loops", action="store_true",
                   help="also count the SASS of each kernel's innermost loops (alu/score column; slower)")
    args = p.parse_args(argv)
    try:
        _check_not_interpreted()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    windows = {"yes": [True], "no": [False], "both": [True, False]}[args.causal]
    cases = [(arch, dtype, head_dim, has_window, pe) for arch in args.arch for dtype in args.dtype
             for head_dim in args.head_dim for has_window in windows for pe in args.pe]
    rows = report_rows(cases, args.jobs, loops=args.loops)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([_row_json(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
