"""Input validation and normalization: the one place that decides what a call means.

`attention_params` turns (q, k, v, options) into an `AttentionParams`, the normalized description
of the call that the reference, the PyTorch path and the Triton launcher all read, so backends can
not disagree about shapes, scale or masks. Every error names the argument and what was expected.
"""
from __future__ import annotations

import contextlib
import math
import operator
import threading
from dataclasses import dataclass

import torch

from . import masks, positional, score_mods
from .score_mods import ScoreMods

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Any head dim up to 256, as FlashAttention 2 (59, 12, 20 occur in real models): the Triton kernels mask a
# power-of-two tile, the CUDA backend zero-pads to a compiled head dim (cuda_backend.py).
MAX_HEAD_DIM = 256
LAYOUTS = ("bshd", "bhsd")
# "in_kernel": every K tile is encoded as it is loaded (repeated once per query tile);
# "prepass": K is encoded once into a scratch buffer that forward and backward read; "auto": decided
# per call by the backend (docs/design.md).
PE_K_STRATEGIES = ("auto", "in_kernel", "prepass")

_prechecked = threading.local()


@contextlib.contextmanager
def values_prechecked():
    """Within it, the checks that read tensor values on the host (lengths, positions: a device sync
    each) are skipped: for a caller that has checked the same values itself in one sync
    (kvcache.py: a decoding step would otherwise wait for the GPU several times)."""
    before = getattr(_prechecked, "on", False)
    _prechecked.on = True
    try:
        yield
    finally:
        _prechecked.on = before


def reads_values() -> bool:
    """Whether value checks run: not while torch.compile traces (a host read breaks the graph), not
    while a CUDA graph is being captured (a host read is illegal there), and not inside
    values_prechecked()."""
    if torch.compiler.is_compiling() or getattr(_prechecked, "on", False):
        return False
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
# Where the causal diagonal and window sit when seqlen_q != seqlen_k (masks.py): FlashAttention's
# bottom-right (query i at key i + seqlen_k - seqlen_q) or SDPA's top-left (query i at key i).
ALIGNMENTS = ("bottom_right", "top_left")


@dataclass(frozen=True, eq=False)
class SequenceLengths:
    """Per-sequence lengths. Packed variable-length batches (cu_seqlens_*): sequence b is rows
    cu[b] .. cu[b+1] - 1 of (1, total, nheads, head_dim) tensors. seqused_k (dense batches): sequence b
    attends to its first seqused_k[b] keys only. leftpad_k (with seqused_k; forward only, for
    kvcache.py's cache_leftpad): the first leftpad_k[b] key rows of sequence b are padding, so it sees
    keys leftpad_k[b] .. seqused_k[b] - 1; the causal diagonal, window and ALiBi distances stay where
    seqused_k puts them (key indices are not shifted), as FlashAttention's cache_leftpad.
    int32 tensors on the inputs' device."""
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    seqused_k: torch.Tensor | None = None
    total_q: int = 0  # rows of the packed q (= cu_seqlens_q[-1])
    total_k: int = 0
    leftpad_k: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class PagedKV:
    """K/V in pages (kvcache.py): k, v are (num_pages, page_size, nheads_kv, head_dim) and row j of
    sequence b lives in page block_table[b, j // page_size] at j % page_size."""
    block_table: torch.Tensor  # int32 (batch, max_pages_per_sequence)
    page_size: int


@dataclass(frozen=True)
class AttentionParams:
    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads_q: int
    nheads_kv: int
    head_dim: int
    softmax_scale: float
    window: tuple[int, int]  # (left, right) with causal folded in; -1 = unbounded
    dtype: torch.dtype
    encoding: positional.Encoding | None = None  # RoPE / sinusoidal applied to q and k inside the kernels
    pe_k_strategy: str = "auto"  # how kernels encode K: see PE_K_STRATEGIES
    dropout_p: float = 0.0  # probability of dropping an attention weight (training)
    dropout_seed: int = 0  # counter-based RNG key, drawn from torch's generator per call
    mods: ScoreMods = score_mods.NONE  # softcap, ALiBi, attention bias / mask (score_mods.py)
    diagonal_offset: int | None = None  # key position of query 0: seqlen_k - seqlen_q (bottom-right) or 0 (top-left)
    # Variable lengths (varlen.py): batch = number of sequences, seqlen_q / seqlen_k = the longest.
    lengths: SequenceLengths | None = None
    paged: PagedKV | None = None  # forward only (decoding)
    num_splits: int = 1  # split-K of the forward over key blocks, merged through the lse (decoding)
    # The Triton forward's FlashAttention 3 pack_gqa: the query heads of a KV head share one tile.
    # None: it decides (triton_kernels/configs.packs_gqa); a scheduling hint, the results are the same.
    pack_gqa: bool | None = None
    # The backward's schedule: False (FlashAttention's default) lets a backend accumulate dQ with
    # atomics (the Triton fused backward); True asks for bit-identical gradients run to run.
    deterministic: bool = False

    @property
    def is_varlen(self) -> bool:
        return self.lengths is not None and self.lengths.cu_seqlens_q is not None

    @property
    def lse_shape(self) -> tuple[int, ...]:
        """lse is (batch, nheads_q, seqlen_q); packed batches: (nheads_q, total_q), as FlashAttention."""
        if self.is_varlen:
            return (self.nheads_q, self.lengths.total_q)
        return (self.batch, self.nheads_q, self.seqlen_q)

    @property
    def lse_strides(self) -> tuple[int, int]:
        """(batch, head) strides of the lse rows; a sequence's rows start at its cu_seqlens_q entry."""
        if self.is_varlen:
            return (0, self.lengths.total_q)
        return (self.nheads_q * self.seqlen_q, self.seqlen_q)

    @property
    def has_dropout(self) -> bool:
        return self.dropout_p > 0.0

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head (1 = MHA, nheads_q = MQA)."""
        return self.nheads_q // self.nheads_kv

    @property
    def has_window(self) -> bool:
        return self.window != (masks.UNBOUNDED, masks.UNBOUNDED)


def _check_tensor(name: str, t, expected_rank: int = 4, dtypes=SUPPORTED_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != expected_rank:
        raise ValueError(
            f"{name} must have {expected_rank} dims (batch, seqlen, nheads, head_dim), got shape {tuple(t.shape)}"
        )
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
        if isinstance(value, bool) or not isinstance(value, int):
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
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have 4 dims (batch, nheads, seqlen, head_dim), got shape {tuple(t.shape)}")
    return t.transpose(1, 2)


def check_score_mods(softcap, alibi_slopes, attn_bias, *, batch: int, nheads_q: int, seqlen_q: int,
                     seqlen_k: int, device: torch.device, bias_name: str = "attn_bias", sinks=None) -> ScoreMods:
    """Validate softcap / alibi_slopes / an attention bias or boolean mask / attention sinks; broadcast
    views, no copies. A float bias may require grad (the backward returns dbias of its own shape)."""
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be >= 0 (0 disables it), got {softcap}")
    slopes = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor):
            raise TypeError(f"alibi_slopes must be a torch.Tensor, got {type(alibi_slopes).__name__}")
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
        if alibi_slopes.shape not in ((nheads_q,), (batch, nheads_q)):
            raise ValueError(f"alibi_slopes must have shape (nheads,) = ({nheads_q},) or (batch, nheads) = "
                             f"({batch}, {nheads_q}), got {tuple(alibi_slopes.shape)}")
        if alibi_slopes.device != device:
            raise ValueError(f"alibi_slopes is on {alibi_slopes.device} but q is on {device}")
        slopes = alibi_slopes.expand(batch, nheads_q)
    bias = None
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor):
            raise TypeError(f"{bias_name} must be a torch.Tensor, got {type(attn_bias).__name__}")
        if attn_bias.dtype != torch.bool and not attn_bias.is_floating_point():
            raise TypeError(f"{bias_name} must be bool (True = attend) or floating point (added to the scores), "
                            f"got {attn_bias.dtype}")
        if attn_bias.device != device:
            raise ValueError(f"{bias_name} is on {attn_bias.device} but q is on {device}")
        target = (batch, nheads_q, seqlen_q, seqlen_k)
        try:
            bias = attn_bias.expand(target) if attn_bias.dim() <= 4 else None
        except RuntimeError:
            bias = None
        if bias is None:
            raise ValueError(f"{bias_name} of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(batch, nheads, seqlen_q, seqlen_k) = {target}")
        bias_source = attn_bias[(None,) * (4 - attn_bias.dim())]  # a view with leading dims of size 1
    mods = ScoreMods(float(softcap), slopes, None, check_sinks(sinks, nheads_q, device))
    return score_mods.with_bias(mods, None if attn_bias is None else bias_source, (batch, nheads_q, seqlen_q, seqlen_k))


def check_sinks(sinks, nheads_q: int, device) -> torch.Tensor | None:
    """Attention sinks: a floating-point (nheads_q,) tensor, one logit per query head (score_mods.py)."""
    if sinks is None:
        return None
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"sinks must be a torch.Tensor of shape (nheads_q,), got {type(sinks).__name__}")
    if not sinks.is_floating_point():
        raise TypeError(f"sinks must be a floating-point tensor (one logit per query head), got {sinks.dtype}")
    if sinks.shape != (nheads_q,):
        raise ValueError(f"sinks must have shape (nheads_q,) = ({nheads_q},), one logit per query head, got "
                         f"{tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks is on {sinks.device} but q is on {device}")
    return sinks


def check_int32_tensor(t, name: str, shape: tuple, device, shape_name: str = "") -> None:
    """t is an int32 tensor of exactly `shape` on `device` (lengths, indices); shape_name: how the error
    spells the shape, e.g. "(batch,)"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32 or t.shape != shape:
        expected = f"{shape_name} = {shape}" if shape_name else f"{shape}"
        raise ValueError(f"{name} must be an int32 tensor of shape {expected}, got {t.dtype} of shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}")


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
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: automatic), got {num_splits!r}")
    if pack_gqa is not None and not isinstance(pack_gqa, bool):
        raise TypeError(f"pack_gqa must be None or a bool, got {type(pack_gqa).__name__}")


def check_kv_cache(k_cache, v_cache, device, *, paged: bool, names=("k_cache", "v_cache")) -> None:
    """K and V caches: 4-D tensors of one shape and dtype on q's device, head_dim unit-stride; a paged
    one (num_pages, page_size, nheads_k, head_dim) with page_size >= 1. (q's dtype and head dims
    against them: the attention checks.)"""
    layout = ("(num_pages, page_size, nheads_k, head_dim)" if paged
              else "(batch_cache, seqlen_cache, nheads_k, head_dim)")
    for name, t in zip(names, (k_cache, v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D cache {layout}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}")
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            # The kernels read and append head_dim as unit-stride vectors; a cache is updated in place, so it
            # cannot be copied to fix this (FlashAttention refuses it too).
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got strides "
                             f"{t.stride()}")
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"{names[0]} ({k_cache.dtype} {tuple(k_cache.shape)}) and {names[1]} ({v_cache.dtype} "
                         f"{tuple(v_cache.shape)}) must have one shape and dtype")
    if paged and k_cache.shape[1] < 1:
        raise ValueError(f"a paged cache needs page_size >= 1, got {names[0]} of shape {tuple(k_cache.shape)}")


def check_block_table(block_table, batch: int, device) -> None:
    """The shape, dtype and device of a paged K/V's block table (int32 (batch, max_pages)); its entries
    are device data, checked by the caller with its other values (one device-to-host copy)."""
    if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2 \
            or block_table.shape[0] != batch:
        raise ValueError(f"block_table must be an int32 tensor of shape (batch={batch}, max_pages), got "
                         f"{getattr(block_table, 'dtype', type(block_table).__name__)} "
                         f"{tuple(getattr(block_table, 'shape', ()))}")
    if block_table.device != device:
        raise ValueError(f"block_table is on {block_table.device} but q is on {device}")


def used_pages_range(block_table: torch.Tensor, lengths: torch.Tensor, page_size: int):
    """(min, max) of the block-table entries that hold rows 0 .. lengths[b] - 1 of each sequence, as
    device scalars for the caller's one host read. The columns past them are never read by any backend,
    so they may hold anything (serving engines pad tables with -1, as FlashAttention allows). Without a
    used entry: (int32 max, -1), which every range check passes."""
    columns = torch.arange(block_table.shape[1], device=block_table.device)
    used = columns[None, :] * page_size < lengths.to(torch.int64)[:, None]
    return (torch.where(used, block_table, torch.iinfo(torch.int32).max).min(),
            torch.where(used, block_table, -1).max())


def check_entries(name: str, low: int, high: int, rows: int, what: str = "") -> None:
    """The entries of an index tensor (block table, batch index), low .. high as the caller read them
    on the host with its other values, index one of `rows` rows."""
    if low < 0 or high >= rows:
        raise ValueError(f"{name} entries must be {what}in [0, {rows}), got {low} to {high}")


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
    allow_float64: bool = False,
) -> AttentionParams:
    """Validate bshd q, k, v and options; return the normalized description of the call.
    allow_float64: the reference computes in float64 and takes float64 inputs too."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, dtypes=SUPPORTED_DTYPES + ((torch.float64,) if allow_float64 else ()))
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
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    elif not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    window = masks.normalize_window(causal, check_window_size(window_size))
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if pe_k_strategy not in PE_K_STRATEGIES:
        raise ValueError(f"pe_k_strategy must be one of {PE_K_STRATEGIES}, got {pe_k_strategy!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    # One draw from torch's CPU generator (no device sync): torch.manual_seed reproduces the masks.
    dropout_seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
    encoding = positional.resolve(
        rotary, sinusoidal, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim,
        device=q.device, q_positions=q_positions, k_positions=k_positions,
    )
    mods = check_score_mods(softcap, alibi_slopes, attn_bias, batch=batch, nheads_q=nheads_q, seqlen_q=seqlen_q,
                            seqlen_k=seqlen_k, device=q.device, bias_name=bias_name, sinks=sinks)
    return AttentionParams(
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
        mods=mods if mods.active else score_mods.NONE,
        # Masks and ALiBi distances are measured from this diagonal (masks.py).
        diagonal_offset=0 if alignment == "top_left" else masks.diagonal_offset(seqlen_q, seqlen_k),
        lengths=check_seqused_k(seqused_k, batch, seqlen_k, q.device, alignment),
    )
