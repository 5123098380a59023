"""Score modifications in Triton: softcap, ALiBi and an attention bias / boolean mask, with the
formulas of ``flashattn_py.score_mods`` (its docstring states them; tests hold the two equal).

Scores here are in the kernels' base-2 units (natural-log scores times log2 e), so additive terms are
scaled by log2 e too.
"""
import torch
import triton
import triton.language as tl

from flashattn_py.params import AttentionParams

from .common import LOG2E

BIAS_NONE, BIAS_ADD, BIAS_KEEP = 0, 1, 2
# The same kinds for a bias that is one row for every query (stride 0 along the queries, e.g. a
# (batch, 1, 1, seqlen_k) key-padding mask): the kernels load BLOCK_N values and broadcast them
# instead of a BLOCK_M x BLOCK_N tile of 64-bit pointers, which spilled 20-212 B on sm_80.
BIAS_ADD_PER_KEY, BIAS_KEEP_PER_KEY = 3, 4


@triton.jit
def _tanh(x):
    """tanh in fp32 from exp2 (the interpreter has no libdevice): (1 - e^-2|x|) / (1 + e^-2|x|), and a
    Taylor series below |x| = 1/8, where 1 - e^-2|x| would cancel (error there < 1e-9 relative)."""
    ax = tl.abs(x)
    t = tl.math.exp2(-2.8853900817779268 * ax)  # e^(-2|x|)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = ax * (1.0 - x2 * (0.3333333333333333 - x2 * (0.13333333333333333 - x2 * 0.05396825396825397)))
    y = tl.where(ax < 0.125, small, big)
    return tl.where(x < 0, -y, y)


@triton.jit
def modified_scores(raw, q_idx, k_idx, seqlen_q, seqlen_k, diag_offset, qk_scale_log2, mods,
                    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr):
    """raw = q . k (fp32 tile; q_idx / k_idx broadcast to its shape) -> (scores in base-2 units,
    d(softcapped)/d(scaled) for the backward, 1.0 without softcap).

    mods = (softcap_scale = scale / softcap, softcap_log2 = softcap * log2 e, ALiBi slope * log2 e of
    this (batch, head), bias pointer of this (batch, head), bias stride along q, along k).
    """
    softcap_scale, softcap_log2, slope_log2, bias_base, bias_stride_m, bias_stride_n = mods
    if HAS_SOFTCAP:
        capped = _tanh(raw * softcap_scale)
        s = capped * softcap_log2
        dcap = 1.0 - capped * capped
    else:
        s = raw * qk_scale_log2
        dcap = 1.0
    if HAS_ALIBI:
        distance = tl.abs(q_idx + diag_offset - k_idx).to(tl.float32)
        s = s - slope_log2 * distance
    if BIAS_KIND != 0:
        if BIAS_KIND >= 3:  # one row for every query: a vector along the keys, broadcast by the add / where
            ptrs = bias_base + k_idx.to(tl.int64) * bias_stride_n
            inside = k_idx < seqlen_k
        else:
            ptrs = bias_base + q_idx.to(tl.int64) * bias_stride_m + k_idx.to(tl.int64) * bias_stride_n
            inside = (q_idx < seqlen_q) & (k_idx < seqlen_k)
        if BIAS_KIND == 1 or BIAS_KIND == 3:
            s = s + tl.load(ptrs, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
        else:
            s = tl.where(tl.load(ptrs, mask=inside, other=0) != 0, s, float("-inf"))
    return s, dcap


@triton.jit
def head_mods(mods_args, batch, head, HAS_ALIBI: tl.constexpr):
    """The `mods` tuple of modified_scores for one (batch, head), from the kernel's mods arguments."""
    (softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
     bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n) = mods_args
    slope_log2 = 0.0
    if HAS_ALIBI:
        slope_log2 = tl.load(alibi_ptr + batch * alibi_stride_b + head * alibi_stride_h) * 1.4426950408889634
    return (softcap_scale, softcap_log2, slope_log2, bias_ptr + batch * bias_stride_b + head * bias_stride_h,
            bias_stride_m, bias_stride_n)


def bias_kind(bias: torch.Tensor | None, is_mask: bool) -> int:
    """The BIAS_KIND constexpr of a (batch, heads, seqlen_q, seqlen_k)-strided bias."""
    if bias is None:
        return BIAS_NONE
    if bias.stride(2) == 0 or bias.shape[2] == 1:  # the same row for every query
        return BIAS_KEEP_PER_KEY if is_mask else BIAS_ADD_PER_KEY
    return BIAS_KEEP if is_mask else BIAS_ADD


def score_mod_args(params: AttentionParams, dummy: torch.Tensor) -> dict:
    """Kernel arguments for params.mods (placeholders, never read, for the parts that are off)."""
    mods = params.mods
    softcap = mods.softcap
    args = dict(softcap_scale=params.softmax_scale / softcap if softcap > 0 else 0.0,
                softcap_log2=softcap * LOG2E, HAS_SOFTCAP=softcap > 0, HAS_ALIBI=mods.alibi_slopes is not None,
                BIAS_KIND=bias_kind(mods.bias, mods.bias_is_mask))
    slopes = mods.alibi_slopes
    args.update(alibi_ptr=dummy, alibi_stride_b=0, alibi_stride_h=0) if slopes is None else args.update(
        alibi_ptr=slopes, alibi_stride_b=slopes.stride(0), alibi_stride_h=slopes.stride(1))
    bias = mods.bias
    if bias is None:
        args.update(bias_ptr=dummy, bias_stride_b=0, bias_stride_h=0, bias_stride_m=0, bias_stride_n=0)
    else:
        bias = bias.view(torch.uint8) if mods.bias_is_mask else bias  # bool loads as bytes
        args.update(bias_ptr=bias, bias_stride_b=bias.stride(0), bias_stride_h=bias.stride(1),
                    bias_stride_m=bias.stride(2), bias_stride_n=bias.stride(3))
    return args


def sink_args(params: AttentionParams, dummy: torch.Tensor) -> dict:
    """Forward kernel arguments for attention sinks (flashattn_py.score_mods): fp32 (nheads_q,) logits,
    unit stride (a copy of nheads_q values), or a placeholder never read. The backward needs none: the
    lse it reads includes the sinks."""
    sinks = params.mods.sinks
    if sinks is None:
        return dict(sinks_ptr=dummy, HAS_SINKS=False)
    return dict(sinks_ptr=sinks.to(torch.float32).contiguous(), HAS_SINKS=True)
