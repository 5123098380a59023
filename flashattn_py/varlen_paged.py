"""``flash_attn_varlen_func(..., block_table=)``: packed queries against a paged KV cache (chunked
prefill and mixed prefill / decode batches of a serving engine, FlashAttention 2's paged varlen call).

k and v are then caches of pages, (num_pages, page_size, nheads_k, head_dim), any page size (FlashAttention
2: multiples of 256). Sequence b's keys are its first cu_seqlens_k[b + 1] - cu_seqlens_k[b] (or
seqused_k[b], FlashAttention 3's alternative) cache rows:
row j in page block_table[b, j // page_size] at j % page_size. Queries are packed as in every
varlen call; causal / window align bottom-right in each sequence, as there.

Decoding rows of such a batch get what flash_attn_with_kvcache gives them: split-K over long caches
(num_splits, automatic on a GPU; the CUDA kernels run packed batches unsplit) and the Triton forward's
GQA packing (pack_gqa).

Inference only, like flash_attn_with_kvcache: a forward pass (the output still joins the autograd
graph, so a model in eval mode without torch.no_grad runs, but its backward raises), no dropout, and no
rotary= / sinusoidal=: a cache holds keys already encoded (flash_attn_with_kvcache rotates them as it appends), so
rotate the queries with apply_rotary at their absolute positions. The Triton and CUDA kernels read the
pages in place; other backends gather each sequence's rows into a packed copy first.
"""
from __future__ import annotations

import dataclasses

import torch

from . import backends
from .backends.split_k import split_count
from .ops import inference_only
from .params import PagedKV
from .validation.attention import check_decode_schedule
from .validation.caches import check_block_table, check_cache_values, check_kv_cache
from .validation.common import check_int32_tensor
from .validation.sequences import token_positions, varlen_params


def packed_rows(cache, cu_seqlens_k, block_table, page_size, total_k):
    """(total_k, nheads_k, head_dim) copy of each sequence's cache rows, packed as cu_seqlens_k says."""
    rows = token_positions(cu_seqlens_k, total_k)[0]  # row within its sequence
    sequence = torch.searchsorted(cu_seqlens_k[1:].to(torch.int64), torch.arange(total_k, device=cache.device),
                                  right=True)
    pages = block_table.to(torch.int64)[sequence, rows // page_size]
    return cache[pages, rows % page_size]


def paged_varlen_params(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                        *, num_splits, pack_gqa, seqused_k, dropout_p, rotary, sinusoidal, impl, **options):
    """(params, cu_seqlens_k) of packed q (total_q, nheads, head_dim) against the paged cache, validated.
    For a backend whose kernels read pages (Backend.reads_sequence_lengths) the params carry the block
    table, split-K and pack_gqa; other backends get the packed lengths only. cu_seqlens_k: as given,
    or the prefix sums of seqused_k."""
    if rotary is not None or sinusoidal is not None:
        raise ValueError("rotary= / sinusoidal= are not available with block_table: a paged cache holds keys already "
                         "encoded; rotate q with flashattn_py.apply_rotary at its positions")
    check_decode_schedule(num_splits, pack_gqa)
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0 with block_table (a paged cache is for inference), got {dropout_p}")
    if not isinstance(cu_seqlens_q, torch.Tensor) or cu_seqlens_q.dim() != 1:
        raise ValueError("cu_seqlens_q must be a 1-D int32 tensor of batch + 1 prefix sums")
    batch = cu_seqlens_q.shape[0] - 1
    check_kv_cache(k_cache, v_cache, q.device, paged=True, names=("k", "v"))
    check_block_table(block_table, batch, q.device)
    num_pages, page_size = k_cache.shape[:2]
    if seqused_k is not None:  # key counts in place of their prefix sums: the sums made here, on the device
        if cu_seqlens_k is not None:
            raise ValueError("pass cu_seqlens_k or seqused_k with block_table, not both")
        check_int32_tensor(seqused_k, "seqused_k", (batch,), q.device, "(batch,)")
        cu_seqlens_k = torch.cat([seqused_k.new_zeros(1), seqused_k.cumsum(0, dtype=torch.int32)])
    check_int32_tensor(cu_seqlens_k, "cu_seqlens_k", (batch + 1,), q.device, "(batch + 1,)")
    # The packed key count is cu_seqlens_k[-1] (the pages have no packed length to check it against).
    pages = block_table.shape[1]
    total_k = check_cache_values(cu_seqlens_k[1:] - cu_seqlens_k[:-1], capacity=pages * page_size,
                                 what=f"the rows block_table lists per sequence: {pages} pages of {page_size}",
                                 used_name="key counts (cu_seqlens_k differences or seqused_k)",
                                 block_table=block_table, page_size=page_size, num_rows=num_pages,
                                 total=cu_seqlens_k[-1])
    shape_k = k_cache[:1, 0].expand(total_k, *k_cache.shape[2:])  # a shape carrier, no copy
    # varlen_params checks the prefix sums as for packed keys (of total_k rows).
    params = varlen_params(q, shape_k, shape_k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options)
    if not impl.reads_sequence_lengths:
        return params, cu_seqlens_k
    params = dataclasses.replace(params, paged=PagedKV(block_table, page_size), pack_gqa=pack_gqa)
    return dataclasses.replace(params, num_splits=split_count(num_splits, params, q.device, impl)), cu_seqlens_k


def paged_varlen_forward(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                         *, backend, **options):
    """(out (total_q, nheads, head_dim), lse (nheads, total_q)) of packed q against the paged cache.
    options: paged_varlen_params's (num_splits, 0: automatic, and pack_gqa as flash_attn_with_kvcache
    takes them, seqused_k, and the attention options)."""
    impl = backends.select(backend, q.device, sinks=options.get("sinks") is not None)
    params, cu_seqlens_k = paged_varlen_params(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                               max_seqlen_k, block_table, impl=impl, **options)
    q4 = (q if q.stride(-1) == 1 else q.contiguous())[None]
    with torch.no_grad():
        if params.paged is not None:  # the kernels read the pages in place
            out, lse, _ = impl.forward(q4, k_cache, v_cache, params)
        else:  # a packed copy of the keys: its length is read on the host (a graph break when traced)
            total_k, page_size = int(cu_seqlens_k[-1]), k_cache.shape[1]
            k, v = (packed_rows(c, cu_seqlens_k, block_table, page_size, total_k)[None] for c in (k_cache, v_cache))
            out, lse, _ = backends.PerSequence(impl).forward(q4, k, v, params)
    out = out[0]
    out = inference_only(out, (q, k_cache, v_cache), "flash_attn_varlen_func with block_table (a paged KV cache) is "
                         "inference-only and has no backward; run it under torch.no_grad() or pass packed k, v")
    return out, lse
