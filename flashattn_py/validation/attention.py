"""Validation of an attention call: user arguments -> `params.AttentionParams`, the one place that
decides what a call means. Every error names the argument and what was expected.

`attention_params` turns bshd (q, k, v, options) into the normalized description of the call that the
reference, the PyTorch path and the kernels all read, so backends cannot disagree about shapes, scale
or masks. The packed-sequence and KV-cache calls build on it (validation/sequences.py, caches.py).
"""
from __future__ import annotations

import dataclasses
import math
import operator

import torch

from ..params import (
    ALIGNMENTS,
    LAYOUTS,
    MAX_HEAD_DIM,
    NO_SCORE_MODS,
    PE_K_STRATEGIES,
    SUPPORTED_DTYPES,
    AttentionParams,
    SequenceLengths,
)
from ..semantics import masks
from .common import check_bool, check_int32_tensor, check_number, check_tensor, is_int, reads_values
from .positional import resolve as resolve_encoding
from .score_mods import check_score_mods


def check_qkv_tensor(name: str, t, dtypes=SUPPORTED_DTYPES) -> None:
    """A 4-D (batch, seqlen, nheads, head_dim) q, k or v of a supported dtype."""
    check_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must have 4 dims (batch, seqlen, nheads, head_dim), got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of float16, bfloat16, float32")


def check_window_size(window_size) -> tuple[int, int]:
    """(left, right) as Python ints. FlashAttention 2 takes any pair of integers, and its own tests pass a
    2-element integer tensor (torch.randint(0, seqlen_k, (2,))), so a tuple / list of ints or of
    integer scalars (numpy, 0-d torch) and a 2-element integer tensor are accepted."""
    if isinstance(window_size, torch.Tensor):
        if window_size.is_floating_point() or window_size.is_complex() or window_size.dtype == torch.bool \
                or window_size.shape != (2,):
            raise TypeError(f"window_size as a tensor must hold 2 integers (left, right), got a {window_size.dtype} "
                            f"tensor of shape {tuple(window_size.shape)}")
        window_size = window_size.tolist()  # a host read of two values, as FlashAttention does
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size must be a pair (left, right) of ints, got {window_size!r}")
    pair = []
    for side, value in zip(("left", "right"), window_size):
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = value.item()
        elif not isinstance(value, (bool, int)) and hasattr(value, "__index__"):  # numpy integer scalars
            value = operator.index(value)
        if not is_int(value):
            raise TypeError(f"window_size {side} must be an int, got {type(value).__name__}")
        if value < -1:
            raise ValueError(f"window_size {side} must be >= 0, or -1 for unbounded; got {value}")
        pair.append(int(value))
    return pair[0], pair[1]


def to_bshd(t: torch.Tensor, layout: str, name: str = "tensor") -> torch.Tensor:
    """A (batch, seqlen, nheads, head_dim) view of t; never copies."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "bshd":
        return t
    check_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must have 4 dims (batch, nheads, seqlen, head_dim), got shape {tuple(t.shape)}")
    return t.transpose(1, 2)


def check_num_splits(num_splits, params: AttentionParams) -> int:
    """num_splits of a dense call (0: automatic): split-K is an inference schedule, never with dropout
    (as FlashAttention 2 decides its own)."""
    check_decode_schedule(num_splits, None)
    if num_splits > 1 and params.has_dropout:
        raise ValueError(f"num_splits={num_splits} splits the forward over keys, which is not done with dropout; "
                         "pass dropout_p=0.0 or num_splits=0 / 1")
    return num_splits


def check_decode_schedule(num_splits, pack_gqa) -> None:
    """The scheduling hints of the inference calls: num_splits an int >= 0 (0: automatic), pack_gqa
    None or a bool."""
    if not is_int(num_splits) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: automatic), got {num_splits!r}")
    if pack_gqa is not None and not isinstance(pack_gqa, bool):
        raise TypeError(f"pack_gqa must be None or a bool, got {type(pack_gqa).__name__}")


def check_seqused_k(seqused_k, batch: int, seqlen_k: int, device, alignment: str) -> SequenceLengths | None:
    if seqused_k is None:
        return None
    check_int32_tensor(seqused_k, "seqused_k", (batch,), device, "(batch,)")
    if alignment != "bottom_right":
        raise ValueError("seqused_k aligns each sequence bottom-right; alignment='top_left' is not supported with it")
    # One small device-to-host copy: a length past seqlen_k would read out of bounds. Not while
    # torch.compile traces (it would break the graph; docs/entry-points.md).
    if batch and reads_values():
        low, high = int(seqused_k.min()), int(seqused_k.max())
        if low < 0 or high > seqlen_k:
            raise ValueError(f"seqused_k values must be in [0, seqlen_k={seqlen_k}], got values in [{low}, {high}]")
    return SequenceLengths(seqused_k=seqused_k)


def attention_params(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size=(-1, -1),
    rotary=None,
    sinusoidal=None,
    q_positions=None,
    k_positions=None,
    pe_k_strategy: str = "auto",
    dropout_p: float = 0.0,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    bias_name: str = "attn_bias",
    alignment: str = "bottom_right",
    seqused_k: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    num_splits: int = 1,
    deterministic: bool = False,
    allow_float64: bool = False,
) -> AttentionParams:
    """Validate bshd q, k, v and options; return the normalized description of the call.
    num_splits: split-K of the forward (0: the op decides, backends/split_k.py). allow_float64: the
    reference computes in float64 and takes float64 inputs too."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_qkv_tensor(name, t, dtypes=SUPPORTED_DTYPES + ((torch.float64,) if allow_float64 else ()))
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    batch, seqlen_q, nheads_q, head_dim = q.shape
    _, seqlen_k, nheads_kv, _ = k.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {batch}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k has head_dim {k.shape[3]} but q has {head_dim}; q, k and v must share head_dim")
    if v.shape[3] != head_dim:
        raise ValueError(f"v has head_dim {v.shape[3]} but q has {head_dim}; q, k and v must share head_dim")
    if v.shape[1] != seqlen_k:
        raise ValueError(f"k has seqlen {seqlen_k} but v has {v.shape[1]}; k and v must share seqlen")
    if v.shape[2] != nheads_kv:
        raise ValueError(f"k has {nheads_kv} heads but v has {v.shape[2]}; k and v must share nheads")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if nheads_kv == 0 or nheads_q % nheads_kv:
        raise ValueError(
            f"q has {nheads_q} heads and k/v have {nheads_kv}; GQA/MQA needs nheads_q divisible by nheads_kv"
        )
    check_bool("causal", causal)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    else:
        check_number("softmax_scale", softmax_scale, "a float or None")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    window = masks.normalize_window(causal, check_window_size(window_size))
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if pe_k_strategy not in PE_K_STRATEGIES:
        raise ValueError(f"pe_k_strategy must be one of {PE_K_STRATEGIES}, got {pe_k_strategy!r}")
    check_number("dropout_p", dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    # One draw from torch's CPU generator (no device sync): torch.manual_seed reproduces the masks.
    dropout_seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
    encoding = resolve_encoding(
        rotary, sinusoidal, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim,
        device=q.device, q_positions=q_positions, k_positions=k_positions,
    )
    mods = check_score_mods(softcap, alibi_slopes, attn_bias, batch=batch, nheads_q=nheads_q, seqlen_q=seqlen_q,
                            seqlen_k=seqlen_k, device=q.device, bias_name=bias_name, sinks=sinks)
    check_bool("deterministic", deterministic)
    params = AttentionParams(
        batch=batch,
        seqlen_q=seqlen_q,
        seqlen_k=seqlen_k,
        nheads_q=nheads_q,
        nheads_kv=nheads_kv,
        head_dim=head_dim,
        softmax_scale=float(softmax_scale),
        window=window,
        dtype=q.dtype,
        encoding=encoding,
        pe_k_strategy=pe_k_strategy,
        dropout_p=float(dropout_p),
        dropout_seed=dropout_seed,
        mods=mods if mods.active else NO_SCORE_MODS,
        # Masks and ALiBi distances are measured from this diagonal (semantics/masks.py).
        diagonal_offset=0 if alignment == "top_left" else masks.diagonal_offset(seqlen_q, seqlen_k),
        lengths=check_seqused_k(seqused_k, batch, seqlen_k, q.device, alignment),
        deterministic=deterministic,
    )
    return dataclasses.replace(params, num_splits=check_num_splits(num_splits, params))
