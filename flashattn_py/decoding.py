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
here it is only a lower bound on the visible keys, params.SequenceLengths.leftpad_k).

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

from . import backends
from .backends.split_k import split_count
from .ops import inference_only
from .params import AttentionParams, PagedKV, Rotary
from .pe_ops import apply_rotary
from .validation.attention import attention_params, check_decode_schedule, check_window_size
from .validation.caches import check_block_table, check_cache_values, check_kv_cache
from .validation.common import check_int32_tensor, values_prechecked


def _cache_layout(q, k_cache, v_cache, block_table, cache_batch_idx):
    """(batch, capacity of each sequence's cache, page size or None), validated."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor (batch, seqlen_q, nheads, head_dim), got "
                         f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    check_kv_cache(k_cache, v_cache, q.device, paged=block_table is not None)
    batch = q.shape[0]
    if block_table is not None:
        if cache_batch_idx is not None:
            raise NotImplementedError("cache_batch_idx with a paged cache (block_table): index the block table instead")
        check_block_table(block_table, batch, q.device)
        page_size = k_cache.shape[1]  # its entries are checked with the other values (check_cache_values)
        return batch, block_table.shape[1] * page_size, page_size
    if cache_batch_idx is not None:
        check_int32_tensor(cache_batch_idx, "cache_batch_idx", (batch,), q.device)
    elif k_cache.shape[0] != batch:
        raise ValueError(f"k_cache holds {k_cache.shape[0]} sequences but q has batch {batch} "
                         "(or pass cache_batch_idx)")
    return batch, k_cache.shape[1], None


def _cache_rows(seqlens, count, page_size, block_table, cache_batch_idx, batch):
    """Index tuples into the cache for positions seqlens[b] + i, i < count (new tokens)."""
    positions = seqlens.to(torch.int64)[:, None] + torch.arange(count, device=seqlens.device)
    if page_size is None:
        rows = (torch.arange(batch, device=seqlens.device) if cache_batch_idx is None
                else cache_batch_idx.to(torch.int64))
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
    """Mirrors FlashAttention 2's ``flash_attn_with_kvcache`` (same name, argument order and defaults): one
    decoding / prefill step that appends k, v to the cache in place, then attends q to each sequence's cached
    keys. Inference only: with grad mode on and an input that requires grad, the output joins the graph but
    its backward raises. The step in detail: the module docstring and docs/entry-points.md.

    Args:
        q: ``[B, Sq, Hq, D]`` float16 / bfloat16 / float32 (Sq = 1 when decoding). Rotated (with rotary) at
            positions ``cache_seqlens[b] + i`` when causal or windowed, else every query at ``cache_seqlens[b]``.
        k_cache, v_cache: q's dtype, last dim unit-stride, written in place: contiguous
            ``[B_cache, S_cache, Hkv, D]`` (B_cache = B, or any with cache_batch_idx), or paged
            ``[num_pages, page_size, Hkv, D]`` with block_table (any page size). Hq divisible by Hkv.
        k, v: ``[B, S_new, Hkv, D]``, the cache's dtype, or None (default): new keys / values, rotated (with
            rotary) at positions ``cache_seqlens[b] + i`` and written after each sequence's cached tokens.
        rotary_cos, rotary_sin: ``[S_ro, rotary_dim / 2]`` float tables, both or neither: RoPE of the new k
            and of q (S_ro must cover the last position; checked); None = no RoPE.
        cache_seqlens: int32 ``[B]`` or an int: tokens already in each sequence's cache (left padding included);
            required when k, v are given, else default the whole cache.
        cache_batch_idx: int32 ``[B]``: the contiguous cache row of each sequence, read in place; default row b.
            Not with block_table.
        cache_leftpad: int32 ``[B]`` (FlashAttention 2's left padding): sequence b's first ``cache_leftpad[b]``
            slots are padding, never attended; cache_seqlens, rotary positions and the causal diagonal still
            count from slot 0. Any cache layout; None = no padding.
        block_table: int32 ``[B, max_pages]``: makes the caches paged; columns past a sequence's pages in use
            may hold anything (e.g. -1). None = contiguous caches.
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, aligned bottom-right at the end of each sequence's
            ``cache_seqlens[b] + S_new`` keys.
        window_size: ``(left, right)`` keys around the aligned diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        rotary_interleaved: with rotary_cos / rotary_sin: True (default): GPT-J pairs (2i, 2i + 1); False:
            GPT-NeoX pairs (i, i + rotary_dim / 2).
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``; None = off.
        num_splits: split-K over the keys (flash-decoding): 0 picks (on a GPU, Sq <= 64), 1 never splits.
        return_softmax_lse: also return the lse.
        rotary: ours, keyword-only: a ``flashattn_py.Rotary`` instead of rotary_cos / rotary_sin (not with them),
            e.g. ``Rotary(base=500000.0)`` with its angles computed from the base: no tables to build.
        pack_gqa: FlashAttention 3's: the query heads that share a KV head run in one tile of the Triton
            forward; None lets it decide (it packs at decoding lengths), False turns it off; other backends
            ignore it.
        learnable_sink: float ``[Hq]`` attention sinks (FlashAttention 3's name; ``flashattn_py.attention(sinks=)``):
            one logit per query head in every row's normalizer (GPT-OSS); None = none.
        backend: ours, keyword-only: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda", "torch" or
            "reference".

    Returns:
        out: ``[B, Sq, Hq, D]``, q's dtype. With ``return_softmax_lse``: ``(out, softmax_lse)``, softmax_lse
        float32 ``[B, Hq, Sq]`` (natural log). k_cache, v_cache are updated in place; cache_seqlens is not.
    """
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
    check_decode_schedule(num_splits, pack_gqa)
    if (k is None) != (v is None):
        raise ValueError("pass the new k and v together (or neither)")
    new = 0 if k is None else k.shape[1]
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            if (not isinstance(t, torch.Tensor) or t.shape != (batch, new, *k_cache.shape[2:])
                    or t.dtype != k_cache.dtype):
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
    check_int32_tensor(cache_seqlens, "cache_seqlens", (batch,), q.device)
    if cache_leftpad is not None:
        check_int32_tensor(cache_leftpad, "cache_leftpad", (batch,), q.device)
    rotary = _rotary_of(rotary, rotary_cos, rotary_sin, rotary_interleaved)
    window_size = check_window_size(window_size)  # a tensor / numpy pair too (FlashAttention takes them)
    per_token = causal or window_size != (-1, -1)  # q rotated at cache_seqlens + i, else all at cache_seqlens
    last_position = max(new - 1, q.shape[1] - 1 if per_token else 0, 0)
    check_cache_values(cache_seqlens + new, capacity=capacity, what="tokens per sequence",
                       used_name="cache_seqlens + seqlen_new", new=new, block_table=block_table,
                       page_size=page_size or 1, num_rows=k_cache.shape[0], batch_index=cache_batch_idx,
                       leftpad=cache_leftpad, last_position=last_position,
                       rotary_rows=None if rotary is None or rotary.cos is None else rotary.cos.shape[0])
    with values_prechecked():  # the rest reads no value again: one sync per step
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
        if not impl.reads_sequence_lengths:
            k_dense, v_dense = (dense_cache(c, block_table, page_size, cache_batch_idx) for c in (k_cache, v_cache))
            out, lse, _ = backends.PerSequence(impl).forward(q, k_dense, v_dense, params)
        elif params.paged is None and cache_batch_idx is not None:  # an empty cache: nothing to read
            out, lse, _ = impl.forward(q, k_cache[cache_batch_idx.long()], v_cache[cache_batch_idx.long()], params)
        else:  # the kernels read the cache in place
            out, lse, _ = impl.forward(q, k_cache, v_cache, params)
    return out, lse


def step_params(q, k_cache, seqused, *, capacity, page_size, block_table, cache_batch_idx, cache_leftpad, num_splits,
                pack_gqa, impl, **options) -> AttentionParams:
    """The AttentionParams of one step's attention over the cache (its new tokens already appended):
    sequence b attends to seqused[b] keys (after cache_leftpad[b] of padding). For a backend whose
    kernels read the cache in place (Backend.reads_sequence_lengths) they also say how: paged, a
    cache_batch_idx row as a one-page block table, split-K, GQA packing; other backends get the
    lengths only and are given a dense copy of the cache."""
    batch = q.shape[0]
    # A shape carrier for the checks (no copy): keys of every sequence, up to the cache capacity.
    shape_k = k_cache[:1, :1].expand(batch, capacity, *k_cache.shape[2:])
    params = attention_params(q, shape_k, shape_k, seqused_k=seqused, **options)
    if cache_leftpad is not None:  # keys before it are padding: a lower bound on the visible keys
        params = dataclasses.replace(params, lengths=dataclasses.replace(params.lengths, leftpad_k=cache_leftpad))
    if not impl.reads_sequence_lengths:
        return params
    # Index tensors go in as given: the backends copy the ones their kernels index with unit stride
    # (triton_kernels/attention_fwd.py paging_args / leftpad_args, backends/cuda_backend.py _kernel_params).
    if page_size is not None:
        params = dataclasses.replace(params, paged=PagedKV(block_table, page_size))
    elif cache_batch_idx is not None and capacity > 0:
        # Sequence b reads cache row cache_batch_idx[b] in place: a block table of one page per
        # sequence, the page being the whole row (gathering the rows would copy the cache each step).
        params = dataclasses.replace(params, paged=PagedKV(cache_batch_idx[:, None], capacity))
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
