"""Variable-length batches: ``flash_attn_varlen_func`` (FlashAttention 2's packed layout) and the
per-sequence lengths both it and ``attention(..., seqused_k=)`` describe.

Packed layout: q (total_q, nheads, head_dim), k/v (total_k, nheads_k, head_dim); sequence b is rows
cu_seqlens_q[b] .. cu_seqlens_q[b+1] - 1 (int32 prefix sums starting at 0). Every per-sequence rule
restarts: causal / window alignment is bottom-right within each sequence, RoPE / sinusoidal positions
start at 0 in each sequence, ALiBi distances are within the sequence. lse is (nheads, total_q).

The Triton and CUDA kernels read the packed tensors directly (their grid covers the longest sequence;
each program reads its sequence's bounds: triton_kernels/common.py sequence_bounds, csrc/sequence.h).
Backends without packed-sequence kernels run the sequences of each length as one dense batch
(backends/per_sequence.py): same results, a launch per distinct length. The checks and the params of a
packed call: validation/sequences.py.
"""
from __future__ import annotations

from . import backends, ops
from .validation.common import check_bool
from .validation.sequences import varlen_params
from .varlen_paged import paged_varlen_forward


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *, rotary=None,
                           sinusoidal=None, pe_k_strategy="auto", num_splits=0, pack_gqa=None, seqused_k=None,
                           learnable_sink=None, backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_varlen_func`` (same name, argument order and defaults) on our
    kernels: attention over sequences packed along dim 0, every per-sequence rule restarting in each sequence
    (see the module docstring), plus fused ``rotary=`` / ``sinusoidal=``. Details: docs/entry-points.md.

    Args:
        q: ``[total_q, Hq, D]`` float16 / bfloat16 / float32: the sequences' queries concatenated along dim 0.
        k, v: ``[total_k, Hkv, D]``, q's dtype; Hq divisible by Hkv (GQA / MQA). With ``block_table``: a paged
            KV cache ``[num_pages, page_size, Hkv, D]`` (any page size; last dim unit-stride), read in place.
        cu_seqlens_q: int32 ``[B + 1]``: prefix sums of the query lengths, starting at 0; sequence b is rows
            ``cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1``.
        cu_seqlens_k: int32 ``[B + 1]``: the same for the keys (with block_table: sequence b's keys are its first
            ``cu_seqlens_k[b + 1] - cu_seqlens_k[b]`` cache rows); None when ``seqused_k`` is given.
        max_seqlen_q: int: the longest query sequence.
        max_seqlen_k: int: the longest key sequence.
        dropout_p: attention dropout probability, in [0, 1); must be 0 with block_table.
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, aligned bottom-right within each sequence.
        window_size: ``(left, right)`` keys around each sequence's aligned diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``; distances within each sequence; None = off.
        deterministic: bit-identical gradients (False: the Triton backward adds dQ up with atomics).
        return_attn_probs: also return the lse, and None in place of the probabilities: packed sequences have
            no one ``[Sq, Sk]`` matrix to return.
        block_table: int32 ``[B, max_pages]``: makes k, v a paged KV cache (varlen_paged.py); row j of sequence b
            is in page ``block_table[b, j // page_size]`` at ``j % page_size``. Inference only: the output joins
            autograd but its backward raises; no dropout, no rotary / sinusoidal (the cache holds keys already
            encoded: rotate q with ``apply_rotary``). None = packed k, v.
        rotary: ours, keyword-only: a ``Rotary`` applied to q and k in the kernels, positions restarting at 0 in
            each sequence; None = none.
        sinusoidal: ours, keyword-only: a ``Sinusoidal`` encoding, positions as for rotary; None = none.
        pe_k_strategy: "auto", "in_kernel" or "prepass": where K is encoded.
        num_splits: FlashAttention 3's, block_table only: split-K of the decoding rows, as in
            ``flash_attn_with_kvcache`` (0 decides, 1 never splits); without block_table 0 or 1.
        pack_gqa: FlashAttention 3's, block_table only: run the query heads sharing a KV head in one tile of the
            Triton forward; None decides.
        seqused_k: int32 ``[B]``, FlashAttention 3's, block_table only: each sequence's key count, in place of
            cu_seqlens_k (pass None), as a serving engine keeps its cache lengths.
        learnable_sink: float ``[Hq]`` attention sinks (FlashAttention 3's name; ``flashattn_py.attention(sinks=)``):
            one logit per query head in every row's normalizer; None = none.
        backend: ours, keyword-only: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda", "torch" or
            "reference".

    Returns:
        out: ``[total_q, Hq, D]``, q's dtype. With ``return_attn_probs``: ``(out, softmax_lse, None)``,
        softmax_lse float32 ``[Hq, total_q]`` (natural log; -inf for a row that sees no key, whose output is 0).
    """
    check_bool("deterministic", deterministic)
    if block_table is not None:
        out, lse = paged_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                                        num_splits=num_splits, pack_gqa=pack_gqa, seqused_k=seqused_k,
                                        dropout_p=dropout_p, rotary=rotary, sinusoidal=sinusoidal, backend=backend,
                                        causal=causal, softmax_scale=softmax_scale, window_size=window_size,
                                        softcap=softcap, alibi_slopes=alibi_slopes, pe_k_strategy=pe_k_strategy,
                                        sinks=learnable_sink)
        return (out, lse, None) if return_attn_probs else out
    if num_splits not in (0, 1) or pack_gqa is not None or seqused_k is not None:
        raise ValueError("num_splits / pack_gqa / seqused_k are for the paged (inference) call: pass them with "
                         "block_table only")
    params = varlen_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                           softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                           alibi_slopes=alibi_slopes, dropout_p=dropout_p, rotary=rotary, sinusoidal=sinusoidal,
                           pe_k_strategy=pe_k_strategy, sinks=learnable_sink, deterministic=deterministic)
    chosen = backends.select(backend, q.device, sinks=learnable_sink is not None)
    out, lse = ops.attention(q[None], k[None], v[None], params, chosen)
    return (out[0], lse, None) if return_attn_probs else out[0]
