"""The plain data of an attention call, importing nothing from the package (the twin of csrc/params.h).

`AttentionParams` is the normalized description of one call (shapes, scale, masks, encoding, score
modifications, sequence lengths, paging, schedule) that every backend and kernel reads, so they cannot
disagree about what a call means. It is built by `flashattn_py.validation` from the user's arguments
and, inside the custom ops, from the op's arguments (`flashattn_py.ops`). The rules that give these
fields their meaning are written once in `flashattn_py.semantics` (masks, positional math, score
modifications, the float64 reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Dtypes the kernels take; the float64 reference takes float64 as well.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Any head dim up to 256, as FlashAttention 2 (59, 12, 20 occur in real models): the Triton kernels mask a
# power-of-two tile, the CUDA backend zero-pads to a compiled head dim (backends/cuda_backend.py).
MAX_HEAD_DIM = 256
# A side of a sliding window that is not bounded (FlashAttention's -1).
UNBOUNDED = -1
LAYOUTS = ("bshd", "bhsd")
# Where the causal diagonal and window sit when seqlen_q != seqlen_k (semantics/masks.py): FlashAttention's
# bottom-right (query i at key i + seqlen_k - seqlen_q) or SDPA's top-left (query i at key i).
ALIGNMENTS = ("bottom_right", "top_left")
# "in_kernel": every K tile is encoded as it is loaded (repeated once per query tile);
# "prepass": K is encoded once into a scratch buffer that forward and backward read; "auto": decided
# per call by the backend (docs/design.md).
PE_K_STRATEGIES = ("auto", "in_kernel", "prepass")


@dataclass(frozen=True, eq=False)
class Rotary:
    """Rotary positional encoding (RoPE) of q and k (semantics/positional.py has the math)."""

    base: float = 10000.0
    rotary_dim: int | None = None  # None: the whole head_dim
    interleaved: bool = False  # False: GPT-NeoX/Llama pairs (i, i + r/2); True: GPT-J pairs (2i, 2i+1)
    cos: torch.Tensor | None = None  # (seqlen_ro, rotary_dim / 2), replaces the computed angles
    sin: torch.Tensor | None = None


@dataclass(frozen=True)
class Sinusoidal:
    """Sinusoidal positional encoding added to q and k: ``x * scale + PE(position)``."""

    base: float = 10000.0
    scale: float = 1.0


@dataclass(frozen=True, eq=False)
class Encoding:
    """A validated encoding for one call: spec, resolved channel count, and per-tensor positions."""

    spec: Rotary | Sinusoidal
    rotary_dim: int  # rotated channels (rotary) / encoded channels = head_dim (sinusoidal)
    q_positions: torch.Tensor  # (batch, seqlen_q) int64, may be an expanded view
    k_positions: torch.Tensor  # (batch, seqlen_k)

    @property
    def is_rotary(self) -> bool:
        return isinstance(self.spec, Rotary)


@dataclass(frozen=True, eq=False)
class ScoreMods:
    """Score modifications between ``scale * q k^T`` and the softmax (semantics/score_mods.py)."""

    softcap: float = 0.0  # 0: off
    alibi_slopes: torch.Tensor | None = None  # fp32 (batch, nheads_q), may be an expanded view
    bias: torch.Tensor | None = None  # (batch, nheads_q, seqlen_q, seqlen_k) expanded view; bool = keep-mask
    sinks: torch.Tensor | None = None  # float (nheads_q,): one logit per query head in every row's normalizer
    # The bias as given, viewed as 4-D with its broadcast dims of size 1 (`bias` expands it): the tensor
    # the attention op takes, so its gradient has the bias's own size, never (batch, heads, sq, sk).
    bias_source: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return (self.softcap > 0 or self.alibi_slopes is not None or self.bias is not None
                or self.sinks is not None)

    @property
    def bias_is_mask(self) -> bool:
        return self.bias is not None and self.bias.dtype == torch.bool


NO_SCORE_MODS = ScoreMods()


@dataclass(frozen=True, eq=False)
class SequenceLengths:
    """Per-sequence lengths. Packed variable-length batches (cu_seqlens_*): sequence b is rows
    cu[b] .. cu[b+1] - 1 of (1, total, nheads, head_dim) tensors. seqused_k (dense batches): sequence b
    attends to its first seqused_k[b] keys only. leftpad_k (with seqused_k; forward only, for
    flash_attn_with_kvcache's cache_leftpad): the first leftpad_k[b] key rows of sequence b are padding,
    so it sees keys leftpad_k[b] .. seqused_k[b] - 1; the causal diagonal, window and ALiBi distances
    stay where seqused_k puts them (key indices are not shifted), as FlashAttention's cache_leftpad.
    int32 tensors on the inputs' device."""
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    seqused_k: torch.Tensor | None = None
    total_q: int = 0  # rows of the packed q (= cu_seqlens_q[-1])
    total_k: int = 0
    leftpad_k: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class PagedKV:
    """K/V in pages (flash_attn_with_kvcache): k, v are (num_pages, page_size, nheads_kv, head_dim) and
    row j of sequence b lives in page block_table[b, j // page_size] at j % page_size."""
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
    window: tuple[int, int]  # (left, right) with causal folded in; UNBOUNDED = -1
    dtype: torch.dtype
    encoding: Encoding | None = None  # RoPE / sinusoidal applied to q and k inside the kernels
    pe_k_strategy: str = "auto"  # how kernels encode K: see PE_K_STRATEGIES
    dropout_p: float = 0.0  # probability of dropping an attention weight (training)
    dropout_seed: int = 0  # counter-based RNG key, drawn from torch's generator per call
    mods: ScoreMods = NO_SCORE_MODS  # softcap, ALiBi, attention bias / mask, sinks
    diagonal_offset: int | None = None  # key position of query 0: seqlen_k - seqlen_q (bottom-right) or 0 (top-left)
    # Variable lengths (flash_attn_varlen_func): batch = number of sequences, seqlen_q / seqlen_k = the longest.
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
        return self.window != (UNBOUNDED, UNBOUNDED)
