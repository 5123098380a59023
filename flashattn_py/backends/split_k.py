"""Split-K (flash-decoding) scheduling: into how many key ranges a forward is split, each range's
partial (out, lse) merged through the lse (triton_kernels/split_merge.py, csrc/attention_split_merge.cuh).

With few query rows (decoding, or short queries against long keys) a forward launches fewer programs
than the GPU has SMs, each streaming a long key range alone; splitting the keys fills the GPU.
FlashAttention 2 decides the same way in its dense forward and its KV-cache call, and never with
dropout; so do we. The split changes the schedule, not the result (beyond fp32 rounding of the merge),
and the backward reads the merged lse, so a split forward can be differentiated.
"""
from __future__ import annotations

import torch

from ..params import AttentionParams
from .interface import Backend

# Split-K only below this many query rows per sequence: above it the query tiles fill the GPU.
MAX_SPLIT_SEQLEN_Q = 64
# Each split keeps at least this many keys of work; at most this many splits.
MIN_KEYS_PER_SPLIT, MAX_SPLITS = 256, 64


def split_count(requested: int, params: AttentionParams, device: torch.device, backend: Backend) -> int:
    """num_splits of a forward: as requested (> 0), or (0, automatic) enough programs to cover every SM
    twice on a GPU. Programs per split: as the backend launches them (Backend.forward_programs: the
    Triton forward packs GQA heads into one), else one per query head."""
    if requested:
        return requested
    if device.type != "cuda" or params.seqlen_q > MAX_SPLIT_SEQLEN_Q or params.has_dropout:
        return 1
    programs = params.batch * params.nheads_q if backend.forward_programs is None else backend.forward_programs(params)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(2 * sms // max(programs, 1), params.seqlen_k // MIN_KEYS_PER_SPLIT, MAX_SPLITS))
