"""backend="cuda": the CUDA C++ kernels (csrc/, the extension flashattn_py._cuda).

The backend interface (interface.py): ``forward(q, k, v, params) -> (out, lse, scratch)``
and ``backward(dout, q, k, v, out, lse, scratch, params) -> (dq, dk, dv)``. This module turns the
normalized call (params.AttentionParams) into the extension's params struct (csrc/params.h):
device pointers, element strides, the stream, and the positional encoding as
triton_kernels/positional.py ``kernel_encoding`` gives it to the Triton kernels.

What the kernels support, and what this module does about the rest:
- fp16 / bf16 on an sm_80+ GPU. fp32 raises ValueError (use backend="triton"); dropout_p > 0, an
  attention bias / mask and attention sinks raise NotImplementedError (csrc/params.h has no field for
  them; `select` runs calls with sinks on the Triton kernels). Softcap and ALiBi run in the kernels
  (csrc/score_mods.h, the formulas of semantics/score_mods.py), forward and backward, in instances
  compiled for them, so a plain call keeps its own.
- Variable lengths run natively (csrc/sequence.h): packed batches (cu_seqlens; tensors (1, total, h, d),
  lse (nheads, total_q)) and seqused_k, forward and backward; leftpad_k (a first visible key per
  sequence), a paged K/V (block_table, any page size; dense or packed batches) and split-K
  (num_splits > 1, merged by attention_split_merge.cuh; dense batches: a packed one runs unsplit) in
  the forward, for decoding.py and varlen_paged.py. Those calls run the kernels' per-sequence layout
  instance. pack_gqa is a Triton scheduling hint; these kernels ignore it.
- Head dims 32, 64, 96, 128, 256 are compiled. Any other in [1, 256] (odd ones included) is zero-padded
  here to the next compiled one, and outputs / gradients are sliced back: zero channels add nothing
  to q k^T and produce zero output channels, and softmax_scale (from the original head_dim) and
  rotary_dim are passed unchanged (rotary leaves channels past rotary_dim alone, so the padding
  stays zero). Sinusoidal PE would be added to the padded channels too, so with a padded head dim
  q and k are encoded here first (x * scale + PE over the original head_dim channels, fp32 math, one
  rounding, as the kernels do), then padded, and the kernels run without encoding; their dq / dk
  (w.r.t. the encoded q / k) are mapped back by the inverse, i.e. times scale.
  The padded tensors are copies the kernels only read: a KV cache is never written by these kernels
  (decoding.append_to_cache writes the new tokens into the user's cache before the forward), so a
  padded cache stays correct, but a decoding step at such a head dim copies the whole cache (slow:
  use a compiled head dim, or backend="triton", which masks its tile instead).
- RoPE / sinusoidal: pe_k_strategy and the rule of the Triton backend (`_pre_encoded`,
  triton_kernels/pe_strategy.py prepass_chosen): at a few query tiles the kernels encode q and k tiles
  as they load them; past that (every query tile would re-encode every K tile: 0.40x of the speed
  without encoding at head_dim 128, seqlen 4096 on an H200) q and k are encoded once by the standalone
  encode kernel, the kernels run without encoding, and the backward, which keeps no scratch, encodes
  them again and maps dq, dk back through the encoding's inverse. Packed batches always pre-encode.
- The standalone ops (apply_rotary, add_sinusoidal) have no CUDA kernel: `encode` runs the Triton one.
- Before the first launch on each device, require_runnable checks that the extension has code for the
  GPU's arch (SASS, or PTX to JIT) and that the driver supports its CUDA version (cuda_compat.py), so
  a mismatched build fails with what to do instead of "no kernel image is available"; once per device.
"""
from __future__ import annotations

import dataclasses
import math
import os

import torch
import torch.nn.functional as F

from .. import buffers
from ..params import MAX_HEAD_DIM, AttentionParams
from . import cuda_compat
from .interface import Backend

KERNEL_HEAD_DIMS = (32, 64, 96, 128, 256)
BUILD_HINT = "build it with `FLASHATTN_BUILD_CUDA=1 pip install .` (needs nvcc, CUDA 12+) or use backend='triton'"

_ext = None


def extension():
    """The compiled module flashattn_py._cuda; RuntimeError saying how to build it when it is missing."""
    global _ext
    if _ext is None:
        try:
            from .. import _cuda
        except ImportError as err:
            raise RuntimeError(
                f"backend='cuda' needs the CUDA extension flashattn_py._cuda, which is not built ({err}); "
                f"{BUILD_HINT}"
            ) from err
        _ext = _cuda
    return _ext


def is_built() -> bool:
    try:
        extension()
    except RuntimeError:
        return False
    return True


def build_info() -> dict:
    """What the extension was compiled with: cuda_version (CUDART_VERSION, e.g. 13000), sass_archs and
    ptx_archs (tuples like ('80', '90a')). RuntimeError when it is not built."""
    info = dict(extension().build_info())
    info["sass_archs"] = cuda_compat.arch_list(info["sass_archs"])
    info["ptx_archs"] = cuda_compat.arch_list(info["ptx_archs"])
    return info


def driver_version() -> int:
    """The newest CUDA version the installed driver supports (12040 = 12.4); 0 without a driver."""
    return extension().driver_version()


def device_facts(index: int) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of CUDA device `index`."""
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


# device index -> why the extension cannot run there (None: it can). Filled at the first launch on
# each device: the facts do not change while the process lives, and a launch must stay cheap.
_runnable: dict[int, str | None] = {}


def runnable_problem(index: int) -> str | None:
    """Why the extension cannot run on CUDA device `index` (its arch, or the driver), None when it can."""
    if index not in _runnable:
        info = build_info()
        name, capability = device_facts(index)
        problem = cuda_compat.arch_problem(name, capability, info["sass_archs"], info["ptx_archs"])
        if problem is None:
            via_ptx = cuda_compat.coverage(capability, info["sass_archs"], info["ptx_archs"]).kind == "ptx"
            problem = cuda_compat.driver_problem(driver_version(), info["cuda_version"], via_ptx,
                                                 cuda_compat.driver_release())
        _runnable[index] = problem
    return _runnable[index]


def require_runnable(index: int) -> None:
    """RuntimeError naming what is wrong and what to do, before a launch that would fail obscurely
    (no kernel image for the GPU, or a driver too old for the runtime linked into the extension)."""
    problem = runnable_problem(index)
    if problem is not None:
        raise RuntimeError(problem)


def kernel_head_dim(head_dim: int) -> int:
    """The compiled head dim that runs `head_dim` (itself, or the next one up, zero-padded)."""
    return next(d for d in KERNEL_HEAD_DIMS if d >= head_dim)


def encode(x, enc, positions, *, inverse=False, out=None):
    """Standalone positional encoding (pe_ops): the Triton kernel, as backend='triton' runs it."""
    # Imported here: importing the Triton kernels reads TRITON_INTERPRET, which a CUDA-only user never sets.
    from ..triton_kernels.positional import encode as triton_encode

    return triton_encode(x, enc, positions, inverse=inverse, out=out)


def check_supported(params: AttentionParams) -> None:
    if params.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"backend='cuda' supports float16 and bfloat16, got {params.dtype}; use backend='triton' for float32"
        )
    if params.has_dropout:
        raise NotImplementedError(
            f"backend='cuda' does not implement attention dropout (dropout_p={params.dropout_p}); "
            "use backend='triton' or dropout_p=0"
        )
    # What csrc/params.h cannot express: refused here rather than computed wrongly.
    mods = params.mods
    names = [n for n, on in (("attn_mask / bias", mods.bias is not None), ("sinks", mods.sinks is not None)) if on]
    if names:
        raise NotImplementedError(f"backend='cuda' does not implement {', '.join(names)}; use backend='triton'")
    offset = params.diagonal_offset
    # Variable lengths always align bottom-right per sequence (csrc/sequence.h; validation/attention.py refuses others).
    if params.lengths is None and offset is not None and offset not in (0, params.seqlen_k - params.seqlen_q):
        raise NotImplementedError(
            f"backend='cuda' aligns causal/window masks bottom-right or top-left; this call aligns them at key "
            f"{offset}; use backend='triton'"
        )
    if params.num_splits > 256:
        raise ValueError(f"backend='cuda' takes num_splits <= 256, got {params.num_splits}")


def _strides(ext, t: torch.Tensor, params: AttentionParams, paged: bool = False):
    """Element strides as csrc/params.h takes them; a packed batch is one sequence of rows (batch stride
    unused, passed as 0 as the Triton launcher does). paged: t is a paged K/V, whose first stride is
    the page stride, packed batch or not."""
    assert t.stride(-1) == 1, "the kernels read the head dim with unit stride"
    return ext.Strides(0 if params.is_varlen and not paged else t.stride(0), t.stride(1), t.stride(2))


def _pad(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return t if t.shape[-1] == head_dim else F.pad(t, (0, head_dim - t.shape[-1]))


def _query_tiles(params: AttentionParams) -> int:
    """Query tiles of the forward, each of which loads every K tile (csrc/attention_fwd.cuh: 128 rows, 64 at
    head dim 256; the per-sequence layout instance 64)."""
    rows = 64 if params.lengths is not None or kernel_head_dim(params.head_dim) == 256 else 128
    return -(-params.seqlen_q // rows)


def _pre_encoded(params: AttentionParams) -> bool:
    """Whether q and k are encoded before the kernels, which then run without encoding. Sinusoidal PE with a
    padded head dim always (module docstring); otherwise pe_k_strategy and the rule the Triton backend
    uses too (triton_kernels/pe_strategy.py prepass_chosen): in the kernels every query tile re-encodes
    every K tile it reads, so past a few query tiles K (and q, one launch for both) is encoded once. These
    kernels encode any head dim without spilling (0 spills in ptxas' report), so only the reads decide."""
    enc = params.encoding
    if enc is None:
        return False
    if not enc.is_rotary and kernel_head_dim(params.head_dim) != params.head_dim:
        return True
    # Imported here: importing the Triton kernels reads TRITON_INTERPRET, which a CUDA-only user never sets.
    from ..triton_kernels.pe_strategy import prepass_chosen

    return prepass_chosen(params, _query_tiles(params), max_head_dim=MAX_HEAD_DIM)


def _kernel_params(ext, params: AttentionParams, head_dim: int, with_encoding: bool):
    """The struct fields every launch shares: shapes, scale, mask window, positional encoding."""
    p = ext.AttentionParams()
    p.dtype = ext.DType.float16 if params.dtype == torch.float16 else ext.DType.bfloat16
    p.batch, p.seqlen_q, p.seqlen_k = params.batch, params.seqlen_q, params.seqlen_k
    p.nheads_q, p.nheads_kv, p.head_dim = params.nheads_q, params.nheads_kv, head_dim
    p.softmax_scale = params.softmax_scale  # from the original head_dim: padding must not change it
    p.window_left, p.window_right = params.window
    # csrc/params.h diagonal_offset: bottom-right (seqlen_k - seqlen_q) unless SDPA's top-left (0).
    p.top_left = int(params.diagonal_offset is not None and params.diagonal_offset != params.seqlen_k - params.seqlen_q)
    keep_alive = []  # tensors made here that the (asynchronous) launch reads
    enc = params.encoding
    if with_encoding and enc is not None:
        spec, pe = enc.spec, p.pe
        pe.kind = ext.PE_ROTARY if enc.is_rotary else ext.PE_SINUSOIDAL
        pe.dim = enc.rotary_dim  # rotary: rotated channels; sinusoidal: head_dim (never padded here)
        pe.interleaved = int(enc.is_rotary and spec.interleaved)
        pe.log2_base = math.log2(spec.base)
        pe.scale = 1.0 if enc.is_rotary else float(spec.scale)
        if enc.is_rotary and spec.cos is not None:
            cos = spec.cos.to(torch.float32).contiguous()
            sin = spec.sin.to(torch.float32).contiguous()
            keep_alive += [cos, sin]
            pe.cos, pe.sin, pe.table_stride = cos.data_ptr(), sin.data_ptr(), cos.stride(0)
        pe.q_pos, pe.q_pos_stride_b, pe.q_pos_stride_s = (
            enc.q_positions.data_ptr(), enc.q_positions.stride(0), enc.q_positions.stride(1))
        pe.k_pos, pe.k_pos_stride_b, pe.k_pos_stride_s = (
            enc.k_positions.data_ptr(), enc.k_positions.stride(0), enc.k_positions.stride(1))
    mods = params.mods  # softcap and ALiBi (check_supported refused the rest)
    p.mods.softcap = float(mods.softcap)
    if mods.alibi_slopes is not None:  # fp32 (batch, nheads_q), possibly an expanded view (stride 0)
        slopes = mods.alibi_slopes
        p.mods.alibi_slopes, p.mods.alibi_stride_b, p.mods.alibi_stride_h = (
            slopes.data_ptr(), slopes.stride(0), slopes.stride(1))
    lengths = params.lengths
    if lengths is not None:  # int32 device arrays the kernels read with unit stride (csrc/sequence.h)
        def address(t):
            t = t.contiguous()
            keep_alive.append(t)
            return t.data_ptr()

        if lengths.cu_seqlens_q is not None:
            p.cu_seqlens_q, p.cu_seqlens_k = address(lengths.cu_seqlens_q), address(lengths.cu_seqlens_k)
            p.total_q = lengths.total_q  # the lse rows allocated here, whatever the device array says
            p.total_k = lengths.total_k  # the rows of k / v (the Hopper kernel's TMA maps)
        if lengths.seqused_k is not None:
            p.seqused_k = address(lengths.seqused_k)
        if lengths.leftpad_k is not None:  # forward only: the extension refuses it in the backward
            p.leftpad_k = address(lengths.leftpad_k)
    if params.paged is not None:
        table = params.paged.block_table
        if table.stride(-1) != 1:
            table = table.contiguous()
            keep_alive.append(table)
        p.block_table, p.block_table_stride, p.page_size = table.data_ptr(), table.stride(0), params.paged.page_size
    return p, keep_alive


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _launch(fn, p, device: torch.device, keep_alive, **options) -> None:
    """Queue fn(p) on torch's current stream. `keep_alive`: the temporaries p points into; they may be
    freed once the launch is queued (the caching allocator orders their reuse on this stream)."""
    index = _device_index(device)
    require_runnable(index)
    fn(p, torch.cuda.current_stream(device).cuda_stream, index, **options)


SM90_ENV = "FLASHATTN_CUDA_SM90"


def sm90_requested() -> bool:
    """The opt-in to the Hopper (sm_90a) forward, csrc/hopper/: FLASHATTN_CUDA_SM90=1. Opt-in until a
    committed GPU run shows the kernel passing its self-test and the suite's CUDA cases (docs/hopper.md);
    the extension's routing rule (csrc/hopper/route.h) then decides per call."""
    return os.environ.get(SM90_ENV, "0") == "1"


def sm90_route(ext, p, device: torch.device) -> str:
    """'' when the Hopper forward takes the call described by p on `device` (route.h), else why not."""
    if not sm90_requested():
        return f"not requested ({SM90_ENV}=1 opts in)"
    return ext.sm90_forward_route(p, _device_index(device), True)


def sm90_backward_route(ext, p, device: torch.device, deterministic: bool) -> str:
    """'' when the Hopper backward takes the call described by p on `device` (route.h), else why not."""
    if not sm90_requested():
        return f"not requested ({SM90_ENV}=1 opts in)"
    return ext.sm90_backward_route(p, _device_index(device), True, deterministic)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AttentionParams):
    """bshd q, k, v (head dim contiguous) -> (out like q, lse fp32 params.lse_shape, ())."""
    check_supported(params)
    if params.is_varlen and params.num_splits > 1:
        # Split-K is a scheduling choice (the result is the same); the kernels' split scratch rows are
        # laid out for dense batches (csrc/params.h out_accum), so a packed batch runs unsplit.
        params = dataclasses.replace(params, num_splits=1)
    ext = extension()
    out = buffers.empty_like(q)
    lse = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    if params.batch == 0 or params.nheads_q == 0 or params.seqlen_q == 0:
        return out, lse, ()
    if params.seqlen_k == 0:  # nothing to attend to: out 0, lse -inf (no launch with an empty grid)
        return out.zero_(), lse.fill_(-math.inf), ()
    d = kernel_head_dim(params.head_dim)
    enc, pre_encoded = params.encoding, _pre_encoded(params)
    if pre_encoded:  # the standalone encode kernel: fp32 math, one rounding, as in the kernels
        q, k = encode(q, enc, enc.q_positions), encode(k, enc, enc.k_positions)
    q_k, k_k, v_k = (_pad(t, d) for t in (q, k, v))
    out_k = out if d == params.head_dim else buffers.empty((*q.shape[:3], d), dtype=q.dtype, device=q.device)
    p, keep_alive = _kernel_params(ext, params, d, with_encoding=not pre_encoded)
    p.q, p.k, p.v, p.out, p.lse = q_k.data_ptr(), k_k.data_ptr(), v_k.data_ptr(), out_k.data_ptr(), lse.data_ptr()
    paged = params.paged is not None
    p.q_strides, p.out_strides = _strides(ext, q_k, params), _strides(ext, out_k, params)
    p.k_strides, p.v_strides = _strides(ext, k_k, params, paged), _strides(ext, v_k, params, paged)
    if params.num_splits > 1:  # split-K: fp32 partial results per split, merged by the extension
        rows = params.batch * params.nheads_q * params.seqlen_q
        out_accum = buffers.empty((params.num_splits, rows, d), dtype=torch.float32, device=q.device)
        lse_accum = buffers.empty((params.num_splits, rows), dtype=torch.float32, device=q.device)
        p.num_splits, p.out_accum, p.lse_accum = params.num_splits, out_accum.data_ptr(), lse_accum.data_ptr()
        keep_alive += [out_accum, lse_accum]
    sm90 = sm90_requested()  # read once: the K pre-pass below and the extension's route decide alike
    if sm90 and enc is not None and not pre_encoded and sm90_route(ext, p, q.device) == "":
        # The Hopper kernel encodes Q in the kernel and takes K encoded (its producer warpgroup has no
        # registers to encode K tiles as they land): K through the standalone encode kernel, once.
        k_k = _pad(encode(k, enc, enc.k_positions), d)
        p.k, p.k_strides, p.pe.k_encoded = k_k.data_ptr(), _strides(ext, k_k, params, paged), 1
    _launch(ext.forward, p, q.device, keep_alive + [q_k, k_k, v_k], sm90=sm90)
    if out_k is not out:
        out.copy_(out_k[..., : params.head_dim])
    return out, lse, ()


def backward(dout, q, k, v, out, lse, scratch, params: AttentionParams, dbias=None):
    """(dq, dk, dv) shaped and typed like q, k, v; w.r.t. the user's unencoded q and k. No bias reaches
    this backend (check_supported), so there is never a dbias to fill."""
    check_supported(params)
    ext = extension()
    dq, dk, dv = buffers.empty_like(q), buffers.empty_like(k), buffers.empty_like(v)
    if params.batch == 0 or params.nheads_q == 0 or (params.seqlen_q == 0 and params.seqlen_k == 0):
        return dq, dk, dv
    if params.seqlen_q == 0 or params.seqlen_k == 0:  # no query sees a key: every gradient is 0
        return dq.zero_(), dk.zero_(), dv.zero_()
    if dout.stride(-1) != 1:
        dout = dout.contiguous()  # kernels read the head dim with unit stride
    d = kernel_head_dim(params.head_dim)
    enc, pre_encoded = params.encoding, _pre_encoded(params)
    q_k, k_k, v_k, out_k, dout_k = (_pad(t, d) for t in (q, k, v, out, dout))
    padded = d != params.head_dim
    grads = tuple(buffers.empty((*t.shape[:3], d), dtype=t.dtype, device=t.device) for t in (q, k, v)) if padded \
        else (dq, dk, dv)
    delta = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)  # laid out like lse

    def kernel_params(with_encoding, q_k, k_k):  # the struct with the launch's pointers and strides
        p, keep_alive = _kernel_params(ext, params, d, with_encoding=with_encoding)
        p.q, p.k, p.v, p.out, p.lse = q_k.data_ptr(), k_k.data_ptr(), v_k.data_ptr(), out_k.data_ptr(), lse.data_ptr()
        p.dout, p.delta = dout_k.data_ptr(), delta.data_ptr()
        p.dq, p.dk, p.dv = (g.data_ptr() for g in grads)
        p.q_strides, p.k_strides, p.v_strides, p.out_strides = (
            _strides(ext, t, params) for t in (q_k, k_k, v_k, out_k))
        p.dout_strides = _strides(ext, dout_k, params)
        p.dq_strides, p.dk_strides, p.dv_strides = (_strides(ext, g, params) for g in grads)
        return p, keep_alive + [q_k, k_k, v_k, out_k, dout_k, delta]

    sm90 = sm90_requested()  # read once: the encodings below and the extension's route decide alike
    # The route reads shapes and strides only (not the encoding): asked of the user's tensors, before any encoding.
    hopper = sm90 and sm90_backward_route(ext, kernel_params(False, q_k, k_k)[0], q.device, params.deterministic) == ""
    if hopper and enc is not None and (enc.is_rotary or d == params.head_dim):
        # The Hopper backward takes q encoded (pe.q_encoded: every key block re-reads each Q tile, so q is
        # encoded once here), encodes its K block itself and maps dq, dk back in its kernels.
        pre_encoded = False
        p, keep_alive = kernel_params(True, _pad(encode(q, enc, enc.q_positions), d), k_k)
        p.pe.q_encoded = 1
    elif pre_encoded:  # as the forward encoded them (no scratch is kept between the passes); inverse below
        p, keep_alive = kernel_params(False, _pad(encode(q, enc, enc.q_positions), d),
                                      _pad(encode(k, enc, enc.k_positions), d))
    else:
        p, keep_alive = kernel_params(True, q_k, k_k)
    if hopper:
        # Its CTAs add their dQ shares into this fp32 accumulator (TMA reduce-add); the extension rounds it into dq.
        dq_accum = torch.zeros(q_k.shape, dtype=torch.float32, device=q.device)
        p.dq_accum, p.dq_accum_strides = dq_accum.data_ptr(), _strides(ext, dq_accum, params)
        keep_alive.append(dq_accum)
    _launch(ext.backward, p, q.device, keep_alive, sm90=sm90, deterministic=params.deterministic)
    if padded:
        for user, kernel in zip((dq, dk, dv), grads):
            user.copy_(kernel[..., : params.head_dim])
    if pre_encoded:  # the kernels' dq, dk are w.r.t. the encoded q, k: the encoding's inverse maps them back
        encode(dq, enc, enc.q_positions, inverse=True, out=dq)
        encode(dk, enc, enc.k_positions, inverse=True, out=dk)
    return dq, dk, dv


# The kernels read cu_seqlens / seqused_k / block tables themselves (csrc/sequence.h).
BACKEND = Backend(name="cuda", forward=forward, backward=backward, encode=encode, reads_sequence_lengths=True,
                  attention_sinks=False)
