"""Where q/k tiles get their positional encoding: inside the attention kernels, or in a pre-pass.

A tile that is streamed — each K tile is loaded once per query tile in the forward and dQ kernels,
each Q tile once per key tile in the dK/dV kernel — would be re-encoded that many times on the CUDA
cores (sin/cos on the SFU, a second load of the partner channels), which FlashAttention's author
reports makes fused rotary slower than a separate rotary kernel at long sequence lengths. And the
encoding's registers (x, its partner, cos, sin: four more tiles) push the kernels past the register
file at head_dim >= 128 (python -m flashattn_py.static_report --pe rope). So when the streamed
operand would be loaded more than IN_KERNEL_MAX_READS times, q and k are encoded once by
`positional.encode` (the apply_rotary kernel) into scratch buffers, the forward's encoded K is kept
for the backward, and the attention kernels read plain data — compiled without any encoding code.
At short seqlen_q (decoding, short prefill) the extra launches and round trips through memory cost
more than encoding a tile or two in place, so encoding stays in the kernels there.
The threshold is a first estimate; the benchmark harness is where a GPU confirms or moves it.
"""
from dataclasses import dataclass

import torch

from flashattn_py.params import AttentionParams

from .common import head_dim_block
from .positional import encode

IN_KERNEL_MAX_READS = 2
# "auto" keeps in-kernel encoding to head dims whose tiles are at most this wide: at 128 it spills
# registers on sm_80 (forward 236 B with 128 x 64 tiles, static_report --pe rope) and in the sm_90
# backward (fused kernel, 132 B)...
IN_KERNEL_MAX_HEAD_DIM = 64
# ...but not in the sm_90 forward with 128 x 64 tiles (238 registers, 0 spills, since the half-width
# rotation), which takes head_dim 128 (configs.forward_config k_encoded).
IN_KERNEL_MAX_HEAD_DIM_SM90_FORWARD = 128


@dataclass(frozen=True)
class EncodedStreams:
    q: torch.Tensor  # what the kernels read as q: the user's q, or q encoded by the pre-pass
    k: torch.Tensor
    q_in_kernel: bool  # kernels must encode q tiles as they load them
    k_in_kernel: bool
    scratch: tuple  # encoded tensors to keep for the backward


def prepass_chosen(params: AttentionParams, reads: int, max_head_dim: int = IN_KERNEL_MAX_HEAD_DIM) -> bool:
    """The K-encoding rule of both kernel backends (this one and backends/cuda_backend.py): whether q and k
    are encoded by a pre-pass rather than inside the attention kernels. reads: how many times the kernels
    load each tile of the streamed operand (a K tile once per query tile in the forward); max_head_dim:
    the widest head-dim tile the backend's kernels encode without spilling (the CUDA kernels: every one)."""
    if params.is_varlen:  # packed sequences restart their positions: the pre-pass reads them per token
        return True
    if params.pe_k_strategy == "in_kernel":
        return False
    if params.pe_k_strategy == "prepass":
        return True
    return reads > IN_KERNEL_MAX_READS or head_dim_block(params.head_dim) > max_head_dim


def encoded_streams(params: AttentionParams, *, q: torch.Tensor, k: torch.Tensor, streamed_reads: int,
                    k_encoded: torch.Tensor | None = None,
                    max_head_dim: int = IN_KERNEL_MAX_HEAD_DIM) -> EncodedStreams:
    """Encode q and k beforehand, or leave it to the kernels.

    streamed_reads: how many times the kernels will load each tile of the streamed operand. With the
    pre-pass both q and k are encoded beforehand, so the attention kernels carry no encoding code at
    all (the same registers as without encoding); a K already encoded by the forward is reused.
    """
    enc = params.encoding
    if enc is None or not prepass_chosen(params, streamed_reads, max_head_dim):
        return EncodedStreams(q, k, enc is not None, enc is not None, ())
    if k_encoded is None:
        k_encoded = encode(k, enc, enc.k_positions)
    return EncodedStreams(q=encode(q, enc, enc.q_positions), k=k_encoded, q_in_kernel=False, k_in_kernel=False,
                          scratch=(k_encoded,))
