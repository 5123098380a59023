"""Validation of KV caches and paged K/V: shapes, devices, block tables, and the checks that read their
values (lengths, page indices), each done in one device-to-host copy per call."""
from __future__ import annotations

import torch

from .common import check_device, reads_values


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
        check_device(name, t, device)
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
    check_device("block_table", block_table, device)


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


def check_step_values(cache_seqlens, new, capacity, last_position, k_cache, block_table, page_size, cache_batch_idx,
                  rotary, cache_leftpad=None):
    """Every check of a step that reads tensor values, in one device-to-host copy (a decoding loop
    would otherwise wait for the GPU at each of them): lengths fit the cache, the left padding lies
    within them, the block-table entries of the pages in use and the cache_batch_idx entries are rows of
    it, and the rotary tables reach the last rotated position (cache_seqlens + last_position). Skipped
    where reads_values() says so (tracing, graph capture)."""
    if not reads_values() or cache_seqlens.numel() == 0:
        return
    parts = [cache_seqlens.min(), cache_seqlens.max()]
    if cache_leftpad is not None:
        parts += [cache_leftpad.min(), (cache_seqlens + new - cache_leftpad).min()]
    if block_table is not None and block_table.numel():
        parts += used_pages_range(block_table, cache_seqlens + new, page_size)
    if cache_batch_idx is not None:
        parts += [cache_batch_idx.min(), cache_batch_idx.max()]
    low, high, *indices = torch.stack([p.to(torch.int64) for p in parts]).tolist()
    if low < 0 or high + new > capacity:
        raise ValueError(f"cache_seqlens + seqlen_new must fit the cache ({capacity} tokens per sequence), got "
                         f"cache_seqlens from {low} to {high} with {new} new tokens")
    if cache_leftpad is not None:
        pad_low, room, *indices = indices
        if pad_low < 0 or room < 0:
            raise ValueError("cache_leftpad must be in [0, cache_seqlens + seqlen_new] for every sequence (the "
                             f"padding comes first in the cache), got a minimum of {pad_low} and a minimum of "
                             f"cache_seqlens + seqlen_new - cache_leftpad of {room}")
    if block_table is not None and indices:
        check_entries("block_table", *indices, k_cache.shape[0], "page indices ")
    if cache_batch_idx is not None and indices:
        check_entries("cache_batch_idx", *indices, k_cache.shape[0])
    if rotary is not None and rotary.cos is not None and high + last_position >= rotary.cos.shape[0]:
        raise ValueError(f"rotary positions reach position {high + last_position} but the rotary cos/sin tables "
                         f"have {rotary.cos.shape[0]} rows")


def check_paged_varlen_values(cu_seqlens_k, block_table, page_size, num_pages) -> int:
    """The packed key count (cu_seqlens_k[-1]: the pages have no packed length to check it against),
    having checked in one device-to-host copy that the sequence lengths fit the pages the block table
    lists and the entries of the pages in use are pages of the cache. Where reads_values() says
    no host read may happen (tracing, graph capture): none, and 0."""
    if not reads_values() or block_table.shape[0] == 0:
        return 0
    capacity = block_table.shape[1] * page_size
    lengths = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    parts = [cu_seqlens_k[-1], lengths.min(), lengths.max()]
    parts += used_pages_range(block_table, lengths, page_size) if block_table.numel() else []
    total, shortest, longest, *entries = torch.stack([p.to(torch.int64) for p in parts]).tolist()
    if shortest < 0:
        raise ValueError(f"key counts (cu_seqlens_k differences or seqused_k) must be >= 0, got {shortest}")
    if longest > capacity:
        raise ValueError(f"cu_seqlens_k has a sequence of {longest} keys but block_table lists {capacity} rows per "
                         f"sequence ({block_table.shape[1]} pages of {page_size})")
    if entries:
        check_entries("block_table", *entries, num_pages, "page indices ")
    return total
