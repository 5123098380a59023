"""Decoding against a KV cache: ``flash_attn_with_kvcache`` with FlashAttention 2's arguments.

What one call does (inference only: no backward; cache_seqlens (batch,) int32 or an int, required
when k, v are appended, else it defaults to the whole cache):
1. New keys/values ``k``, ``v`` (batch, seqlen_new, nheads_k, head_dim), if given, are rotated (when
   ``rotary_cos`` / ``rotary_sin`` are given) at their absolute positions cache_seqlens[b] + i with our
   rotary kernel and written into the cache in place, right after each sequence's cache_seqlens[b]
   tokens.
2. q is rotated at positions cache_seqlens[b] + i when causal or windowed, else every query at
   cache_seqlens[b] (FlashAttention's rule: then all of q counts as the one next position).
3. Attention over each sequence's cache_seqlens[b] + seqlen_new keys, the causal diagonal at the end
   of the sequence (bottom-right), without a mask tensor (seqused_k).

``cache_leftpad`` (batch,) int32, FlashAttention 2's left padding: sequence b's first cache_leftpad[b]
cache slots are padding (a left-padded batch of prompts), so it attends to slots cache_leftpad[b] ..
cache_seqlens[b] + seqlen_new - 1 (the padding may arrive with the new tokens: a left-padded prompt
prefilled into an empty cache). cache_seqlens still counts from slot 0 (padding included), and so
do the rotary positions and the causal diagonal: RoPE depends only on position differences, and the
padding is never attended. Every cache layout takes it (FlashAttention 2 refuses it with a paged cache;
here it is only a lower bound on the visible keys, checks.SequenceLengths.leftpad_k).

Caches: contiguous (batch_cache, seqlen_cache, nheads_k, head_dim) with an optional ``cache_batch_idx``
choosing each sequence's row (read in place, as a one-page-per-sequence block table), or paged:
(num_pages, page_size, nheads_k, head_dim) with ``block_table`` (batch, max_pages) int32 — any page
size (serving systems use 16; FlashAttention 2 needs multiples of 256). Caches are written in place,
so their head_dim must be unit-stride (checked; FlashAttention's rule too). The Triton and CUDA
kernels read pages through the block table; with few queries per sequence (decoding) the key range
is split across programs and merged through the lse (split-K, flash-decoding) so one query per
sequence still fills the GPU. The PyTorch and reference backends
gather the cache into a dense copy first.
"""
from __future__ import annotations

import dataclasses

import torch

from . import backends, checks
from .autograd import inference_only
from .pe_ops import apply_rotary
from .positional import Rotary
from .split_k import split_count
from .varlen import PerSequence


def _cache_layout(q, k_cache, v_cache, block_table, cache_batch_idx):
    """(batch, capacity of each sequence's cache, page size or None), validated."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor (batch, seqlen_q, nheads, head_dim), got "
                         f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    checks.check_kv_cache(k_cache, v_cache, q.device, paged=block_table is not None)
    batch = q.shape[0]
    if block_table is not None:
        if cache_batch_idx is not None:
            raise NotImplementedError("cache_batch_idx with a paged cache (block_table): index the block table instead")
        checks.check_block_table(block_table, batch, q.device)
        page_size = k_cache.shape[1]  # its entries are checked with the other values (_check_values)
        return batch, block_table.shape[1] * page_size, page_size
    if cache_batch_idx is not None:
        checks.check_int32_tensor(cache_batch_idx, "cache_batch_idx", (batch,), q.device)
    elif k_cache.shape[0] != batch:
        raise ValueError(f"k_cache holds {k_cache.shape[0]} sequences but q has batch {batch} (or pass cache_batch_idx)")
    return batch, k_cache.shape[1], None


def _check_values(cache_seqlens, new, capacity, last_position, k_cache, block_table, page_size, cache_batch_idx,
                  rotary, cache_leftpad=None):
    """Every check of a step that reads tensor values, in one device-to-host copy (a decoding loop
    would otherwise wait for the GPU at each of them): lengths fit the cache, the left padding lies
    within them, the block-table entries of the pages in use and the cache_batch_idx entries are rows of
    it, and the rotary tables reach the last rotated position (cache_seqlens + last_position). Skipped
    where checks.reads_values() says so (tracing, graph capture)."""
    if not checks.reads_values() or cache_seqlens.numel() == 0:
        return
    parts = [cache_seqlens.min(), cache_seqlens.max()]
    if cache_leftpad is not None:
        parts += [cache_leftpad.min(), (cache_seqlens + new - cache_leftpad).min()]
    if block_table is not None and block_table.numel():
        parts += checks.used_pages_range(block_table, cache_seqlens + new, page_size)
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
        checks.check_entries("block_table", *indices, k_cache.shape[0], "page indices ")
    if cache_batch_idx is not None and indices:
        checks.check_entries("cache_batch_idx", *indices, k_cache.shape[0])
    if rotary is not None and rotary.cos is not None and high + last_position >= rotary.cos.shape[0]:
        raise ValueError(f"rotary positions reach position {high + last_position} but the rotary cos/sin tables "
                         f"have {rotary.cos.shape[0]} rows")


def _cache_rows(seqlens, count, page_size, block_table, cache_batch_idx, batch):
    """Index tuples into the cache for positions seqlens[b] + i, i < count (new tokens)."""
    positions = seqlens.to(torch.int64)[:, None] + torch.arange(count, device=seqlens.device)
    if page_size is None:
        rows = torch.arange(batch, device=seqlens.device) if cache_batch_idx is None else cache_batch_idx.to(torch.int64)
        return rows[:, None].expand(batch, count), positions
    pages = torch.gather(block_table.to(torch.int64), 1, positions // page_size)
    return pages, positions % page_size


def append_to_cache(k_cache, v_cache, k, v, seqlens, rotary, page_size, block_table, cache_batch_idx, backend):
    """Write k, v (rotated at their absolute positions when rotary is given) after seqlens[b] tokens."""
    batch, count = k.shape[0], k.shape[1]
    if rotary is not None:
        k = apply_rotary(k, rotary, positions=seqlens.to(torch.int64), backend=backend)
    index = _cache_rows(seqlens, count, page_size, block_table, cache_batch_idx, batch)
    k_cache[index] = k
    v_cache[index] = v


def _rotary_of(rotary, rotary_cos, rotary_sin, rotary_interleaved) -> Rotary | None:
    """The step's RoPE: FlashAttention's tables (rotary_cos / rotary_sin, (seqlen_ro, rotary_dim / 2))
    with rotary_interleaved, or a Rotary spec (rotary=)."""
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary is not None:
        if rotary_cos is not None:
            raise ValueError("pass rotary= or rotary_cos / rotary_sin, not both")
        if not isinstance(rotary, Rotary):
            raise TypeError(f"rotary must be a flashattn_py.Rotary, got {type(rotary).__name__}")
        return rotary
    if rotary_cos is None:
        return None
    if rotary_cos.dim() != 2:
        raise ValueError(f"rotary_cos must be (seqlen_ro, rotary_dim / 2), got {tuple(rotary_cos.shape)}")
    return Rotary(rotary_dim=2 * rotary_cos.shape[1], interleaved=rotary_interleaved, cos=rotary_cos, sin=rotary_sin)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                            cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                            alibi_slopes=None, num_splits=0, return_softmax_lse=False, *, rotary=None,
                            pack_gqa=None, learnable_sink=None, backend="auto"):
    """See the module docstring. Returns out (batch, seqlen_q, nheads, head_dim), and the lse
    (batch, nheads, seqlen_q) fp32 too if return_softmax_lse. num_splits: 0 picks (GPU, seqlen_q <= 64).
    pack_gqa (FlashAttention 3's): the query heads that share a KV head run in one tile of the Triton
    forward; None lets it decide (it packs at decoding lengths), the other backends ignore it.
    rotary (ours): a flashattn_py.Rotary instead of rotary_cos / rotary_sin, e.g. Rotary(base=500000.0)
    with its angles computed from the base: no tables to build. learnable_sink (FlashAttention 3's name):
    attention sinks, float (nheads,), one logit per query head in every row's normalizer (GPT-OSS; see
    flashattn_py.attention(sinks=)). Inference only: with grad mode on and
    an input that requires grad, the output joins the graph but its backward raises."""
    with torch.no_grad():
        out, lse = _decoding_step(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                                  cache_leftpad, block_table, softmax_scale, causal, window_size, softcap,
                                  rotary_interleaved, alibi_slopes, num_splits, rotary, pack_gqa, backend,
                                  learnable_sink)
    out = inference_only(out, (q, k_cache, v_cache, k, v), "flash_attn_with_kvcache is inference-only and has no "
                         "backward; run the decoding loop under torch.no_grad() (train on the full sequence)")
    return (out, lse) if return_softmax_lse else out


def _decoding_step(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                   block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes,
                   num_splits, rotary, pack_gqa, backend, sinks=None):
    """flash_attn_with_kvcache's work, without autograd: (out, lse)."""
    batch, capacity, page_size = _cache_layout(q, k_cache, v_cache, block_table, cache_batch_idx)
    checks.check_decode_schedule(num_splits, pack_gqa)
    if (k is None) != (v is None):
        raise ValueError("pass the new k and v together (or neither)")
    new = 0 if k is None else k.shape[1]
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.shape != (batch, new, *k_cache.shape[2:]) or t.dtype != k_cache.dtype:
                raise ValueError(f"{name} must be {k_cache.dtype} of shape (batch, seqlen_new, nheads_k, head_dim) = "
                                 f"{(batch, new, *k_cache.shape[2:])}, got {getattr(t, 'dtype', None)} "
                                 f"{tuple(getattr(t, 'shape', ()))}")
    if cache_seqlens is None:
        if new:  # FlashAttention refuses it too: where to append would be a guess
            raise ValueError("cache_seqlens is required when new k, v are appended (where each sequence's cache "
                             "ends); without k, v it defaults to the whole cache")
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    checks.check_int32_tensor(cache_seqlens, "cache_seqlens", (batch,), q.device)
    if cache_leftpad is not None:
        checks.check_int32_tensor(cache_leftpad, "cache_leftpad", (batch,), q.device)
    rotary = _rotary_of(rotary, rotary_cos, rotary_sin, rotary_interleaved)
    window_size = checks.check_window_size(window_size)  # a tensor / numpy pair too (FlashAttention takes them)
    per_token = causal or window_size != (-1, -1)  # q rotated at cache_seqlens + i, else all at cache_seqlens
    last_position = max(new - 1, q.shape[1] - 1 if per_token else 0, 0)
    _check_values(cache_seqlens, new, capacity, last_position, k_cache, block_table, page_size, cache_batch_idx,
                  rotary, cache_leftpad)
    with checks.values_prechecked():  # the rest reads no value again: one sync per step
        if k is not None:
            append_to_cache(k_cache, v_cache, k, v, cache_seqlens, rotary, page_size, block_table, cache_batch_idx,
                            backend)
        seqused = cache_seqlens + new
        if rotary is not None:
            offsets = cache_seqlens.to(torch.int64)
            positions = offsets[:, None] + (torch.arange(q.shape[1], device=q.device) if per_token else 0)
            q = apply_rotary(q, rotary, positions=positions.expand(batch, q.shape[1]).contiguous(), backend=backend)
        impl = backends.select(backend, q.device, sinks=sinks is not None)
        q = q if q.stride(-1) == 1 else q.contiguous()
        params = step_params(q, k_cache, seqused, capacity=capacity, page_size=page_size, block_table=block_table,
                             cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, num_splits=num_splits,
                             pack_gqa=pack_gqa, impl=impl, causal=causal, softmax_scale=softmax_scale,
                             window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
        if not getattr(impl, "SUPPORTS_PACKED_SEQUENCES", False):
            k_dense, v_dense = (dense_cache(c, block_table, page_size, cache_batch_idx) for c in (k_cache, v_cache))
            out, lse, _ = PerSequence(impl).forward(q, k_dense, v_dense, params)
        elif params.paged is None and cache_batch_idx is not None:  # an empty cache: nothing to read
            out, lse, _ = impl.forward(q, k_cache[cache_batch_idx.long()], v_cache[cache_batch_idx.long()], params)
        else:  # the kernels read the cache in place
            out, lse, _ = impl.forward(q, k_cache, v_cache, params)
    return out, lse


def step_params(q, k_cache, seqused, *, capacity, page_size, block_table, cache_batch_idx, cache_leftpad, num_splits,
                pack_gqa, impl, **options) -> checks.AttentionParams:
    """The AttentionParams of one step's attention over the cache (its new tokens already appended):
    sequence b attends to seqused[b] keys (after cache_leftpad[b] of padding). For a backend whose
    kernels read the cache in place (SUPPORTS_PACKED_SEQUENCES) they also say how: paged, a
    cache_batch_idx row as a one-page block table, split-K, GQA packing; other backends get the
    lengths only and are given a dense copy of the cache."""
    batch = q.shape[0]
    # A shape carrier for the checks (no copy): keys of every sequence, up to the cache capacity.
    shape_k = k_cache[:1, :1].expand(batch, capacity, *k_cache.shape[2:])
    params = checks.attention_params(q, shape_k, shape_k, seqused_k=seqused, **options)
    if cache_leftpad is not None:  # keys before it are padding: a lower bound on the visible keys
        params = dataclasses.replace(params, lengths=dataclasses.replace(params.lengths, leftpad_k=cache_leftpad))
    if not getattr(impl, "SUPPORTS_PACKED_SEQUENCES", False):
        return params
    # Index tensors go in as given: the backends copy the ones their kernels index with unit stride
    # (triton_kernels/attention_fwd.py paging_args / leftpad_args, cuda_backend._kernel_params).
    if page_size is not None:
        params = dataclasses.replace(params, paged=checks.PagedKV(block_table, page_size))
    elif cache_batch_idx is not None and capacity > 0:
        # Sequence b reads cache row cache_batch_idx[b] in place: a block table of one page per
        # sequence, the page being the whole row (gathering the rows would copy the cache each step).
        params = dataclasses.replace(params, paged=checks.PagedKV(cache_batch_idx[:, None], capacity))
    params = dataclasses.replace(params, pack_gqa=pack_gqa)
    return dataclasses.replace(params, num_splits=split_count(num_splits, params, q.device, impl))


def dense_cache(cache, block_table, page_size, cache_batch_idx):
    """(batch, capacity, nheads_k, head_dim) copy of the cache rows each sequence uses."""
    if page_size is not None:
        # Columns past a sequence's pages may hold anything (-1): gathered from a page clamped into range,
        # their rows lie past seqused and are never attended.
        pages = cache[block_table.long().clamp(0, cache.shape[0] - 1)]  # (batch, max_pages, page_size, h, d)
        return pages.reshape(block_table.shape[0], -1, *cache.shape[2:])
    return cache if cache_batch_idx is None else cache[cache_batch_idx.long()]
