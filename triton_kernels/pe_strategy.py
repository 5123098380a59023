"""Where q/k tiles get their positional encoding: inside the attention kernel, or in a pre-pass.

A tile that a kernel loads once (the resident q tile of the forward) is encoded in-kernel for free.
A tile that is streamed — each K tile is loaded once per query tile in the forward and dQ kernel,
each Q tile once per key tile in the dK/dV kernel — would be re-encoded that many times on the CUDA
cores (sin/cos on the SFU, a register gather), which FlashAttention's author reports makes fused
rotary slower than a separate rotary kernel at long sequence lengths. So a streamed operand read more
than IN_KERNEL_MAX_READS times is encoded once by `positional.encode` into a scratch buffer
(forward's encoded K is kept for the backward) and the kernels read it as plain data. At short
seqlen_q (decoding, short prefill) the extra kernel launch and round trip through memory cost more
than re-encoding a tile or two, so encoding stays in-kernel there.
The threshold is a first estimate; the benchmark harness is where a GPU confirms or moves it.
"""
from dataclasses import dataclass

import torch

from flashattn_py.checks import AttentionParams

from .positional import encode

IN_KERNEL_MAX_READS = 2


@dataclass(frozen=True)
class EncodedStreams:
    q: torch.Tensor  # what the kernels read as q: the user's q, or q encoded by the pre-pass
    k: torch.Tensor
    q_in_kernel: bool  # kernels must encode q tiles as they load them
    k_in_kernel: bool
    scratch: tuple  # encoded tensors to keep for the backward


def _prepass(params: AttentionParams, reads: int) -> bool:
    if params.pe_k_strategy == "in_kernel":
        return False
    if params.pe_k_strategy == "prepass":
        return True
    return reads > IN_KERNEL_MAX_READS


def encoded_streams(params: AttentionParams, *, k: torch.Tensor, k_reads: int, q: torch.Tensor | None = None,
                    q_reads: int = 1, k_encoded: torch.Tensor | None = None) -> EncodedStreams:
    """Decide per operand; `k_reads`/`q_reads` = how many times each tile of it will be loaded."""
    enc = params.encoding
    if enc is None:
        return EncodedStreams(q, k, False, False, ())
    if k_encoded is None and _prepass(params, k_reads):
        k_encoded = encode(k, enc, enc.k_positions)
    q_encoded = encode(q, enc, enc.q_positions) if q is not None and _prepass(params, q_reads) else None
    return EncodedStreams(
        q=q if q_encoded is None else q_encoded,
        k=k if k_encoded is None else k_encoded,
        q_in_kernel=q_encoded is None,
        k_in_kernel=k_encoded is None,
        scratch=() if k_encoded is None else (k_encoded,),
    )
