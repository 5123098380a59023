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


def check_cache_values(used: torch.Tensor, *, capacity: int, what: str, used_name: str, new: int = 0,
                       block_table: torch.Tensor | None = None, page_size: int = 1, num_rows: int = 0,
                       batch_index: torch.Tensor | None = None, leftpad: torch.Tensor | None = None,
                       rotary_rows: int | None = None, last_position: int = 0,
                       total: torch.Tensor | None = None) -> int:
    """Every check of a KV-cache or paged call that reads tensor values, in one device-to-host copy (a
    decoding loop would otherwise wait for the GPU at each of them): the key count of each sequence
    (`used`, int (batch,), its new keys included) lies in [new, capacity] (`what` the cache holds per
    sequence); the left padding lies within it; the block-table entries of the pages in use, and the
    batch_index entries, are rows of the cache (num_rows of them); the rotary cos/sin tables (rotary_rows
    rows) reach the last rotated position (used - new + last_position). Returns the value of `total` (a
    device scalar the caller needs on the host too), 0 when not read. Skipped where reads_values() says
    so (tracing, graph capture)."""
    if not reads_values() or used.numel() == 0:
        return 0
    parts = [used.min(), used.max()]
    if leftpad is not None:
        parts += [leftpad.min(), (used - leftpad).min()]
    if block_table is not None and block_table.numel():
        parts += used_pages_range(block_table, used, page_size)
    if batch_index is not None:
        parts += [batch_index.min(), batch_index.max()]
    if total is not None:
        parts.append(total)
    shortest, longest, *values = torch.stack([p.to(torch.int64) for p in parts]).tolist()
    if shortest < new or longest > capacity:
        raise ValueError(f"{used_name} must fit the cache: each in [{new}, {capacity}] ({what}), got {shortest} "
                         f"to {longest}")
    if leftpad is not None:
        pad_low, room, *values = values
        if pad_low < 0 or room < 0:
            raise ValueError(f"cache_leftpad must be in [0, {used_name}] for every sequence (the padding comes first "
                             f"in the cache), got a minimum of {pad_low} and a minimum of {used_name} - "
                             f"cache_leftpad of {room}")
    if block_table is not None and block_table.numel():
        low, high, *values = values
        check_entries("block_table", low, high, num_rows, "page indices ")
    if batch_index is not None:
        low, high, *values = values
        check_entries("cache_batch_idx", low, high, num_rows)
    if rotary_rows is not None and longest - new + last_position >= rotary_rows:
        raise ValueError(f"rotary positions reach position {longest - new + last_position} but the rotary cos/sin "
                         f"tables have {rotary_rows} rows")
    return values[0] if total is not None else 0
