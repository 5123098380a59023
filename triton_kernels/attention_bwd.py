"""Attention backward: no (seqlen_q, seqlen_k) buffer, P is recomputed from Q, K and lse.

Kernels:
- preprocess: delta_i = rowsum(dO_i * O_i) (= rowsum(P * dP), the softmax-backward correction);
- key-block kernel (attention_bwd_dkdv_kernel): a key tile stays on chip while the query tiles that
  can see it stream past, over all query heads of its GQA group, so group gradients are summed
  without atomics. With FUSED_DQ (the default, FlashAttention 2/3's design) it also adds each query
  tile's dQ share to an fp32 buffer with atomic adds: S, P, dP, dS computed once, 5 GEMMs per tile pair;
- dQ (deterministic=True only): a query tile stays on chip while the visible key tiles stream past,
  recomputing P and dP (7 GEMMs per tile pair in all), no atomics.
Both stream loops are split into masked edges and an unmasked interior (common.interior_*_blocks).
With S = scale * Q K^T, P = exp(S - lse): dV = P^T dO, dP = dO V^T, dS = P * (dP - delta),
dQ = scale * dS K, dK = scale * dS^T Q.
"""
import torch
import triton
import triton.language as tl

from flashattn_py import buffers
from flashattn_py.params import AttentionParams

from . import autotune
from .common import (
    INTERPRETED,
    LOG2E,
    bsh_strides,
    check_launch_limits,
    descriptor_ready,
    dot_flags,
    dropout_args,
    dropout_keep,
    ensure_scratch_allocator,
    head_dim_block,
    interior_key_blocks,
    interior_query_blocks,
    keep_mask,
    key_block_range,
    load_rows,
    load_tile,
    phase_range,
    query_block_range,
    sequence_args,
    sequence_bounds,
    tile_dot,
    tile_source,
)
from .configs import dkdv_candidates, dkdv_config, dq_candidates, dq_config, fused_candidates, fused_config, launch_arch
from .pe_strategy import encoded_streams
from .positional import encode, kernel_encoding, load_encoded_tile
from .score_mods import head_mods, modified_scores, score_mod_args


@triton.jit
def attention_bwd_preprocess_kernel(
    out_ptr, dout_ptr, delta_ptr,
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    seqlen_q, nheads_q, head_dim,
    cu_q_ptr, stride_lse_b, stride_lse_h,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    q_start, _, seqlen_q, _, _, _ = sequence_bounds(batch, seqlen_q, 0, 0, cu_q_ptr, cu_q_ptr, cu_q_ptr,
                                                    IS_VARLEN, False)
    if pid_m * BLOCK_M >= seqlen_q:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    out = load_tile(out_ptr + batch * stride_ob + head * stride_oh + q_start * stride_os, offs_m, offs_d, stride_os,
                    seqlen_q, head_dim)
    dout = load_tile(dout_ptr + batch * stride_dob + head * stride_doh + q_start * stride_dos, offs_m, offs_d,
                     stride_dos, seqlen_q, head_dim)
    delta = tl.sum(out.to(tl.float32) * dout.to(tl.float32), axis=1)
    tl.store(delta_ptr + batch * stride_lse_b + head * stride_lse_h + q_start + offs_m, delta, mask=offs_m < seqlen_q)


@triton.jit
def load_row_stats(lse_log2_ptr, delta_ptr, row_offset, offs_m, seqlen_q):
    """lse (base-2 units, as the forward stored it) and delta for rows offs_m.

    Rows that saw no key (lse -inf) and rows past seqlen_q get lse +inf, which makes their P
    exactly 0, so they contribute no gradient.
    """
    in_range = offs_m < seqlen_q
    lse = tl.load(lse_log2_ptr + row_offset + offs_m, mask=in_range, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(delta_ptr + row_offset + offs_m, mask=in_range, other=0.0)
    return lse, delta


# How the dK/dV kernel writes the gradient of a float bias that requires grad (dbias_kind): not at
# all; a bias of the full (batch, heads, sq, sk) size, whose every element one program visits once:
# stored; one broadcast along the batch or heads: fp32 atomic adds, programs that would add to one
# element run in separate launches (dbias_launches), so the sums are ordered and bit-identical run to
# run; one row for every query ((.., 1, sk)): summed over the queries in registers, one add per key.
DBIAS_NONE, DBIAS_STORE, DBIAS_ADD, DBIAS_PER_KEY = 0, 1, 2, 3


@triton.jit
def bias_gradient(ds_t, dbias_base, dbias_keys, offs_m, offs_n, seqlen_q, seqlen_k, stride_m, stride_n,
                  DBIAS_KIND: tl.constexpr):
    """Adds the (keys x queries) dS tile ds_t to the bias gradient at dbias_base (one (batch, head)),
    or for DBIAS_PER_KEY to dbias_keys, which it returns. Masked and out-of-range entries of ds_t are 0."""
    if DBIAS_KIND == 3:  # DBIAS_PER_KEY (module constants are not visible inside kernels)
        dbias_keys += tl.sum(ds_t, axis=1)
    else:
        ptrs = dbias_base + offs_m[None, :].to(tl.int64) * stride_m + offs_n[:, None].to(tl.int64) * stride_n
        inside = (offs_m[None, :] < seqlen_q) & (offs_n[:, None] < seqlen_k)
        if DBIAS_KIND == 1:  # DBIAS_STORE
            tl.store(ptrs, ds_t, mask=inside)
        else:
            tl.atomic_add(ptrs, ds_t, mask=inside)
    return dbias_keys


@triton.jit
def key_block_step(start_m, k_tile, v_tile, dk, dv, dbias_keys, offs_n, offs_d, stream, q_src, do_src, dq_desc,
                   geometry, scalars, pe, mods, dbias_at, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   MASKED: tl.constexpr, STREAM_TMA: tl.constexpr,
                   FUSED_DQ: tl.constexpr, DQ_TMA: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                   FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr, Q_PE_KIND: tl.constexpr,
                   PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                   HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr):
    """One query block [start_m, start_m + BLOCK_M) of one head against the resident key tile: adds
    to dK, dV (and the per-key bias gradient), and with FUSED_DQ adds this block's dQ share to the
    fp32 dQ accumulator (atomics: other key blocks add to the same rows), a (planes, rows, BLOCK_D)
    buffer: through the tensor descriptor dq_desc with DQ_TMA (sm_90: a TMA reduce), else through
    pointers from dq_base (this head's plane). Not MASKED: the caller
    knows every query of the block sees every key of the tile (interior_query_blocks), so neither
    the causal/window mask nor the range checks are computed.

    S, P, dP and dS are computed once, in transposed tiles (keys x queries) so that dK and dV come
    out without transposes: 4 GEMMs, 5 with FUSED_DQ.
    """
    q_base, do_base, dq_base, dq_plane, dq_row, stride_qs, stride_dos, q_pos, lse_ptr, delta_ptr, row_offset = stream
    seqlen_q, seqlen_k, seqlen_k_max, head_dim, diag_offset, window_left, window_right = geometry
    softmax_scale, qk_scale_log2, dropout_p, dropout_scale, dropout_seed = scalars
    dbias_base, dbias_stride_m, dbias_stride_n = dbias_at
    offs_m = start_m + tl.arange(0, BLOCK_M)
    if STREAM_TMA:  # q needs no encoding here (the launcher's condition)
        q = load_rows(q_src, start_m, offs_m, offs_d, stride_qs, seqlen_q, head_dim, True)
    else:
        q = load_encoded_tile(q_base, offs_m, offs_d, stride_qs, seqlen_q, q_pos, pe,
                              Q_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)
    dout = load_rows(do_src, start_m, offs_m, offs_d, stride_dos, seqlen_q, head_dim, STREAM_TMA)
    lse, delta = load_row_stats(lse_ptr, delta_ptr, row_offset, offs_m, seqlen_q)
    raw_t = tile_dot(k_tile, tl.trans(q), tl.zeros([k_tile.shape[0], BLOCK_M], dtype=tl.float32),
                     FP32_OPERANDS, PRECISION)
    s_t, dcap_t = modified_scores(raw_t, offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, diag_offset,
                                  qk_scale_log2, mods, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND)
    if MASKED:  # before exp2: a hidden score may exceed lse, and exp2 of it would overflow
        keep = keep_mask(offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, diag_offset, window_left,
                         window_right, HAS_WINDOW)
        s_t = tl.where(keep, s_t, float("-inf"))
    p_t = tl.math.exp2(s_t - lse[None, :])
    dp_t = tile_dot(v_tile, tl.trans(dout), tl.zeros([k_tile.shape[0], BLOCK_M], dtype=tl.float32),
                    FP32_OPERANDS, PRECISION)
    if HAS_DROPOUT:
        # O = (P * Z / (1 - p)) V: dV sees the dropped weights, dP reaches P through Z / (1 - p).
        keep_t = dropout_keep(dropout_seed, row_offset, offs_m[None, :], offs_n[:, None], seqlen_k_max, dropout_p)
        dv = tile_dot(tl.where(keep_t, p_t * dropout_scale, 0.0).to(dout.dtype), dout, dv, FP32_OPERANDS, PRECISION)
        dp_t = tl.where(keep_t, dp_t * dropout_scale, 0.0)
    else:
        dv = tile_dot(p_t.to(dout.dtype), dout, dv, FP32_OPERANDS, PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    if DBIAS_KIND != 0:  # DBIAS_NONE; the bias is added after the scale and the softcap: it gets dS itself
        dbias_keys = bias_gradient(ds_t, dbias_base, dbias_keys, offs_m, offs_n, seqlen_q, seqlen_k,
                                   dbias_stride_m, dbias_stride_n, DBIAS_KIND)
    if HAS_SOFTCAP:  # through the tanh of the softcap (the scale is applied to dk at the end)
        ds_t = ds_t * dcap_t
    ds_t = ds_t.to(q.dtype)
    dk = tile_dot(ds_t, q, dk, FP32_OPERANDS, PRECISION)
    if FUSED_DQ:
        dq = tile_dot(tl.trans(ds_t), k_tile, tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), FP32_OPERANDS, PRECISION)
        dq = dq * softmax_scale
        if DQ_TMA:  # one TMA reduce-add of the whole tile: no per-element addresses in registers
            dq_desc.atomic_add([dq_plane, (dq_row + start_m).to(tl.int32), 0], dq.reshape(1, BLOCK_M, BLOCK_D))
        else:
            # Rows past seqlen_q add exact zeros (their P is 0); masked anyway.
            dq_ptrs = dq_base + (dq_row + offs_m[:, None]).to(tl.int64) * BLOCK_D + offs_d[None, :]
            tl.atomic_add(dq_ptrs, dq, mask=offs_m[:, None] < seqlen_q, sem="relaxed")
    return dk, dv, dbias_keys


@triton.jit
def attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dq_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    dq_planes, dq_planes_per_batch, dq_rows,
    seqlen_q, seqlen_k, nheads_q, head_dim, group_size,
    softmax_scale, qk_scale_log2, window_left, window_right, diag_offset, dropout_p, dropout_scale, dropout_seed,
    pe_cos_ptr, pe_sin_ptr, pe_table_stride, qpos_ptr, qpos_stride_b, qpos_stride_s,
    kpos_ptr, kpos_stride_b, kpos_stride_s, pe_dim, pe_log2_base, pe_scale,
    softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
    bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n,
    cu_q_ptr, cu_k_ptr, seqused_k_ptr, stride_lse_b, stride_lse_h,
    dbias_ptr, dbias_stride_b, dbias_stride_h, dbias_stride_m, dbias_stride_n, kv_head_base, batch_base,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    Q_PE_KIND: tl.constexpr, K_PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr, DBIAS_KIND: tl.constexpr, FUSED_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr, SPLIT_MASK: tl.constexpr, STREAM_TMA: tl.constexpr,
):
    """One program per key block (of one KV head and sequence): K and V stay on chip while the query
    blocks that see them stream past, over every query head of the GQA group (group gradients summed
    without atomics). FUSED_DQ: the whole backward in one pass (the default); dQ is added with
    atomics to dq_ptr, fp32 (dq_planes, dq_rows, BLOCK_D): plane batch * dq_planes_per_batch + head,
    row q_start + query (launcher: fused_dq_buffer). Otherwise attention_bwd_dq_kernel computes dQ
    (deterministic=True) and dq_ptr is unused."""
    pid_n = tl.program_id(0)
    # kv_head_base / batch_base: a launch may cover one KV head / sequence (dbias_launches).
    kv_head = (tl.program_id(1) + kv_head_base).to(tl.int64)
    batch = (tl.program_id(2) + batch_base).to(tl.int64)
    seqlen_k_max = seqlen_k  # the dropout counter's row length: the same for every sequence
    q_start, k_start, seqlen_q, seqlen_k, k_rows, diag_offset = sequence_bounds(
        batch, seqlen_q, seqlen_k, diag_offset, cu_q_ptr, cu_k_ptr, seqused_k_ptr, IS_VARLEN, HAS_SEQUSED_K)
    # Ascending key blocks: under causal masks the first ones see the most queries (heaviest first).
    if pid_n * BLOCK_N >= k_rows:  # the grid covers the longest sequence of a packed batch
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    pe = (pe_cos_ptr, pe_sin_ptr, pe_table_stride, pe_dim, pe_log2_base, pe_scale, head_dim)
    k_pos = (kpos_ptr + batch * kpos_stride_b, kpos_stride_s)
    k_tile = load_encoded_tile(k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_ks, offs_n, offs_d,
                               stride_ks, seqlen_k, k_pos, pe, K_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)
    v_tile = load_tile(v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vs, offs_n, offs_d, stride_vs,
                       seqlen_k, head_dim)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, hi = query_block_range(pid_n * BLOCK_N, seqlen_q, diag_offset, window_left, window_right,
                               BLOCK_M, BLOCK_N, HAS_WINDOW)
    full_lo, full_hi = interior_query_blocks(lo, hi, pid_n * BLOCK_N, seqlen_q, seqlen_k, diag_offset, window_left,
                                             window_right, BLOCK_M, BLOCK_N, HAS_WINDOW)
    dq_desc = dq_ptr
    if DQ_TMA:
        dq_desc = tl.make_tensor_descriptor(dq_ptr, shape=[dq_planes, dq_rows, BLOCK_D],
                                            strides=[dq_rows * BLOCK_D, BLOCK_D, 1], block_shape=[1, BLOCK_M, BLOCK_D])
    if SPLIT_MASK:
        n_before = (full_lo - lo + BLOCK_M - 1) // BLOCK_M
        n_edge = n_before + (hi - full_hi + BLOCK_M - 1) // BLOCK_M
    else:  # every block through the masked loop: one copy of the step's code, fewer registers
        n_edge = (hi - lo + BLOCK_M - 1) // BLOCK_M
        full_hi = full_lo
    geometry = (seqlen_q, seqlen_k, seqlen_k_max, head_dim, diag_offset, window_left, window_right)
    scalars = (softmax_scale, qk_scale_log2, dropout_p, dropout_scale, dropout_seed)
    for member in range(0, group_size):
        head = kv_head * group_size + member
        dq_plane = (batch * dq_planes_per_batch + head).to(tl.int32)
        stream = (q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qs,
                  dout_ptr + batch * stride_dob + head * stride_doh + q_start * stride_dos,
                  dq_ptr + dq_plane.to(tl.int64) * dq_rows * BLOCK_D, dq_plane, q_start,
                  stride_qs, stride_dos, (qpos_ptr + batch * qpos_stride_b, qpos_stride_s),
                  lse_ptr, delta_ptr, batch * stride_lse_b + head * stride_lse_h + q_start)
        q_src = tile_source(stream[0], seqlen_q, head_dim, stride_qs, BLOCK_M, BLOCK_D, STREAM_TMA)
        do_src = tile_source(stream[1], seqlen_q, head_dim, stride_dos, BLOCK_M, BLOCK_D, STREAM_TMA)
        mods = head_mods((softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
                         bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n), batch, head, HAS_ALIBI)
        dbias_at = (dbias_ptr + batch * dbias_stride_b + head * dbias_stride_h, dbias_stride_m, dbias_stride_n)
        dbias_keys = tl.zeros([BLOCK_N], dtype=tl.float32)  # DBIAS_PER_KEY: dS summed over this head's queries
        # Two loops, the mask compiled only into the first (constexpr MASKED): the edge blocks (before
        # the interior: causal diagonal, window's right edge; after it: window's left edge, the last
        # partial block), then the interior.
        for i in range(0, n_edge):
            start_m = lo + i * BLOCK_M
            if SPLIT_MASK:
                start_m = tl.where(i < n_before, start_m, full_hi + (i - n_before) * BLOCK_M)
            dk, dv, dbias_keys = key_block_step(
                start_m, k_tile, v_tile, dk, dv, dbias_keys, offs_n, offs_d, stream, q_src, do_src, dq_desc, geometry,
                scalars, pe, mods, dbias_at, BLOCK_M, BLOCK_D, True, STREAM_TMA, FUSED_DQ, DQ_TMA, HAS_WINDOW,
                HAS_DROPOUT, FP32_OPERANDS, PRECISION,
                Q_PE_KIND, PE_PAIRS, PE_FROM_TABLE, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND, DBIAS_KIND)
        for start_m in range(full_lo, full_hi, BLOCK_M):
            dk, dv, dbias_keys = key_block_step(
                start_m, k_tile, v_tile, dk, dv, dbias_keys, offs_n, offs_d, stream, q_src, do_src, dq_desc, geometry,
                scalars, pe, mods, dbias_at, BLOCK_M, BLOCK_D, False, STREAM_TMA, FUSED_DQ, DQ_TMA, HAS_WINDOW,
                HAS_DROPOUT, FP32_OPERANDS, PRECISION,
                Q_PE_KIND, PE_PAIRS, PE_FROM_TABLE, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND, DBIAS_KIND)
        if DBIAS_KIND == 3:  # DBIAS_PER_KEY
            tl.atomic_add(dbias_at[0] + offs_n.to(tl.int64) * dbias_stride_n, dbias_keys, mask=offs_n < seqlen_k)
    dk = dk * softmax_scale
    tile_mask = (offs_n[:, None] < k_rows) & (offs_d[None, :] < head_dim)  # keys past seqused_k get zeros
    dk_ptrs = (dk_ptr + batch * stride_dkb + kv_head * stride_dkh + k_start * stride_dks
               + offs_n[:, None].to(tl.int64) * stride_dks + offs_d[None, :])
    dv_ptrs = (dv_ptr + batch * stride_dvb + kv_head * stride_dvh + k_start * stride_dvs
               + offs_n[:, None].to(tl.int64) * stride_dvs + offs_d[None, :])
    tl.store(dk_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=tile_mask)
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def query_block_step(start_n, q, dout, dq, lse, delta, offs_m, offs_d, stream, k_src, v_src, geometry, scalars, pe,
                     mods, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, STREAM_TMA: tl.constexpr,
                     HAS_WINDOW: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
                     K_PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
                     HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr):
    """dQ of the resident query tile from one key block [start_n, start_n + BLOCK_N) (key_block_step
    with the roles swapped; P and dP recomputed, the deterministic path)."""
    k_base, v_base, stride_ks, stride_vs, k_pos, row_offset = stream
    seqlen_q, seqlen_k, seqlen_k_max, head_dim, diag_offset, window_left, window_right = geometry
    softmax_scale, qk_scale_log2, dropout_p, dropout_scale, dropout_seed = scalars
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if STREAM_TMA:  # k needs no encoding here (the launcher's condition)
        k_tile = load_rows(k_src, start_n, offs_n, offs_d, stride_ks, seqlen_k, head_dim, True)
    else:
        k_tile = load_encoded_tile(k_base, offs_n, offs_d, stride_ks, seqlen_k, k_pos, pe,
                                   K_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)
    v_tile = load_rows(v_src, start_n, offs_n, offs_d, stride_vs, seqlen_k, head_dim, STREAM_TMA)
    raw = tile_dot(q, tl.trans(k_tile), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), FP32_OPERANDS, PRECISION)
    s, dcap = modified_scores(raw, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, qk_scale_log2,
                              mods, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND)
    if MASKED:
        keep = keep_mask(offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, window_left,
                         window_right, HAS_WINDOW)
        s = tl.where(keep, s, float("-inf"))
    p = tl.math.exp2(s - lse[:, None])
    dp = tile_dot(dout, tl.trans(v_tile), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), FP32_OPERANDS, PRECISION)
    if HAS_DROPOUT:
        keep = dropout_keep(dropout_seed, row_offset, offs_m[:, None], offs_n[None, :], seqlen_k_max, dropout_p)
        dp = tl.where(keep, dp * dropout_scale, 0.0)
    ds = p * (dp - delta[:, None])
    if HAS_SOFTCAP:
        ds = ds * dcap
    return tile_dot(ds.to(k_tile.dtype), k_tile, dq, FP32_OPERANDS, PRECISION)


@triton.jit
def attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    seqlen_q, seqlen_k, nheads_q, head_dim, group_size,
    softmax_scale, qk_scale_log2, window_left, window_right, diag_offset, dropout_p, dropout_scale, dropout_seed,
    pe_cos_ptr, pe_sin_ptr, pe_table_stride, qpos_ptr, qpos_stride_b, qpos_stride_s,
    kpos_ptr, kpos_stride_b, kpos_stride_s, pe_dim, pe_log2_base, pe_scale,
    softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
    bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n,
    cu_q_ptr, cu_k_ptr, seqused_k_ptr, stride_lse_b, stride_lse_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    Q_PE_KIND: tl.constexpr, K_PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr, STREAM_TMA: tl.constexpr,
):
    """dQ without atomics (deterministic=True): one program per query block keeps Q, dO and dQ on chip
    while the visible key blocks stream past."""
    pid_m = tl.program_id(0)
    if HAS_WINDOW:  # causal: the last query blocks see the most keys; run them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    kv_head = (head // group_size).to(tl.int64)
    head = head.to(tl.int64)
    seqlen_k_max = seqlen_k  # the dropout counter's row length: the same for every sequence
    q_start, k_start, seqlen_q, seqlen_k, k_rows, diag_offset = sequence_bounds(
        batch, seqlen_q, seqlen_k, diag_offset, cu_q_ptr, cu_k_ptr, seqused_k_ptr, IS_VARLEN, HAS_SEQUSED_K)
    if pid_m * BLOCK_M >= seqlen_q:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    pe = (pe_cos_ptr, pe_sin_ptr, pe_table_stride, pe_dim, pe_log2_base, pe_scale, head_dim)
    q = load_encoded_tile(q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qs, offs_m, offs_d,
                          stride_qs, seqlen_q, (qpos_ptr + batch * qpos_stride_b, qpos_stride_s), pe,
                          Q_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)
    dout = load_tile(dout_ptr + batch * stride_dob + head * stride_doh + q_start * stride_dos, offs_m, offs_d,
                     stride_dos, seqlen_q, head_dim)
    row_offset = batch * stride_lse_b + head * stride_lse_h + q_start
    lse, delta = load_row_stats(lse_ptr, delta_ptr, row_offset, offs_m, seqlen_q)
    stream = (k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_ks,
              v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vs,
              stride_ks, stride_vs, (kpos_ptr + batch * kpos_stride_b, kpos_stride_s), row_offset)
    k_src = tile_source(stream[0], seqlen_k, head_dim, stride_ks, BLOCK_N, BLOCK_D, STREAM_TMA)
    v_src = tile_source(stream[1], seqlen_k, head_dim, stride_vs, BLOCK_N, BLOCK_D, STREAM_TMA)
    geometry = (seqlen_q, seqlen_k, seqlen_k_max, head_dim, diag_offset, window_left, window_right)
    scalars = (softmax_scale, qk_scale_log2, dropout_p, dropout_scale, dropout_seed)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mods = head_mods((softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
                     bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n), batch, head, HAS_ALIBI)
    lo, hi = key_block_range(pid_m * BLOCK_M, seqlen_k, diag_offset, window_left, window_right,
                             BLOCK_M, BLOCK_N, HAS_WINDOW)
    full_lo, full_hi = interior_key_blocks(lo, hi, pid_m * BLOCK_M, seqlen_q, seqlen_k, diag_offset, window_left,
                                           window_right, BLOCK_M, BLOCK_N, HAS_WINDOW)
    for phase in tl.static_range(3):  # edge blocks, the mask-free interior, edge blocks
        start, end = phase_range(phase, lo, full_lo, full_hi, hi)
        for start_n in range(start, end, BLOCK_N):
            dq = query_block_step(start_n, q, dout, dq, lse, delta, offs_m, offs_d, stream, k_src, v_src, geometry,
                                  scalars, pe, mods, BLOCK_N, phase != 1, STREAM_TMA, HAS_WINDOW, HAS_DROPOUT,
                                  FP32_OPERANDS, PRECISION, K_PE_KIND, PE_PAIRS, PE_FROM_TABLE, HAS_SOFTCAP,
                                  HAS_ALIBI, BIAS_KIND)
    dq = dq * softmax_scale
    dq_ptrs = (dq_ptr + batch * stride_dqb + head * stride_dqh + q_start * stride_dqs
               + offs_m[:, None].to(tl.int64) * stride_dqs + offs_d[None, :])
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=(offs_m[:, None] < seqlen_q) & (offs_d[None, :] < head_dim))


def dbias_kind(dbias: torch.Tensor | None, params: AttentionParams) -> int:
    """The DBIAS_KIND of a bias gradient buffer of the bias's own 4-D shape (None: no gradient)."""
    if dbias is None:
        return DBIAS_NONE
    if dbias.shape[2] == 1 and params.seqlen_q > 1:
        return DBIAS_PER_KEY
    if tuple(dbias.shape) == (params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k):
        return DBIAS_STORE
    return DBIAS_ADD


def dbias_launches(dbias: torch.Tensor | None, params: AttentionParams):
    """(kv_head_base, kv heads, batch_base, batches) of each dK/dV launch: one launch for all, except
    that programs adding to one bias-gradient element (a bias broadcast along the batch: every
    sequence; along the heads: every KV head) go to separate launches, which the stream orders."""
    heads, batch = params.nheads_kv, params.batch
    if dbias is None:
        return [(0, heads, 0, batch)]
    per_head = range(heads) if dbias.shape[1] == 1 and heads > 1 else [None]
    per_batch = range(batch) if dbias.shape[0] == 1 and batch > 1 else [None]
    return [(0 if h is None else h, heads if h is None else 1, 0 if b is None else b, batch if b is None else 1)
            for h in per_head for b in per_batch]


def fused_dq_buffer(params: AttentionParams, block_d: int, device) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The fused backward's fp32 dQ accumulator (zeros), the kernel arguments that address it, and
    its bshd (batch, seqlen_q, nheads_q, head_dim) view. One (rows, BLOCK_D) plane per (sequence,
    head), or per head of a packed batch (its sequences are row ranges): a tensor descriptor over it
    needs no masking of head-dim padding, and its rows are 16-byte aligned as TMA requires."""
    if params.is_varlen:
        rows, per_batch, planes = params.lengths.total_q, 0, params.nheads_q
        acc = torch.zeros(planes, rows, block_d, dtype=torch.float32, device=device)
        view = acc[..., :params.head_dim].transpose(0, 1)[None]
    else:
        rows, per_batch, planes = params.seqlen_q, params.nheads_q, params.batch * params.nheads_q
        acc = torch.zeros(params.batch, params.nheads_q, rows, block_d, dtype=torch.float32, device=device)
        view = acc[..., :params.head_dim].transpose(1, 2)
    return acc, dict(dq_planes=planes, dq_planes_per_batch=per_batch, dq_rows=rows), view


def attention_backward(dout, q, k, v, out, lse, scratch, params: AttentionParams, dbias=None):
    """Gradients (dq, dk, dv), each with the shape and dtype of its input; with dbias (fp32, the shape
    of the bias as given, zeros), dS summed over the bias's broadcast dimensions is added to it.

    Two schedules (docs/design.md, "Backward"): by default one fused pass (attention_bwd_dkdv_kernel
    with FUSED_DQ: S, P, dP, dS computed once per tile pair, dQ added to an fp32 buffer with
    atomics, then rounded to q's dtype, or decoded from the encoding, in one pass); with
    params.deterministic the atomic-free split, dK/dV then dQ, each recomputing P.

    scratch from the forward: (lse in base 2, [K encoded by the pre-pass]); `lse` (natural) is unused.
    """
    lse, k_encoded = scratch[0], (scratch[1] if len(scratch) > 1 else None)
    check_launch_limits(params.batch, params.nheads_q)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()  # kernels read the head dim with unit stride
    dq, dk, dv = buffers.empty_like(q), buffers.empty_like(k), buffers.empty_like(v)
    if params.batch == 0 or params.nheads_q == 0 or (params.seqlen_q == 0 and params.seqlen_k == 0):
        return dq, dk, dv
    fused = not params.deterministic
    block_d = head_dim_block(params.head_dim)
    delta = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    seq_args = sequence_args(params, q)

    def _strides(t):
        return bsh_strides(t, params)

    common = dict(BLOCK_D=block_d, HAS_WINDOW=params.has_window, **dot_flags(q.dtype))
    bias = params.mods.bias is not None
    kv_cfg = fused_config(block_d, bias, launch_arch(q.device)) if fused else dkdv_config(block_d, bias)
    dq_cfg = dq_config(block_d, bias)
    # The key-block kernel streams Q tiles (each read once per key tile); dQ streams K tiles (once per
    # query tile).
    streamed_reads = triton.cdiv(params.seqlen_k, kv_cfg.block_n)
    if not fused:
        streamed_reads = max(streamed_reads, triton.cdiv(params.seqlen_q, dq_cfg.block_m))
    streams = encoded_streams(params, q=q, k=k, streamed_reads=streamed_reads, k_encoded=k_encoded)
    pe = kernel_encoding(params.encoding, q).attention_args(streams.q_in_kernel, streams.k_in_kernel)
    enc = params.encoding
    dq_user, dk_user = dq, dk
    dq_args = dict(dq_planes=0, dq_planes_per_batch=0, dq_rows=0)  # the deterministic path's dq kernel writes dq
    if fused:  # atomics accumulate in fp32; rounded (or decoded) into dq_user at the end
        dq_acc, dq_args, dq = fused_dq_buffer(params, block_d, q.device)
    elif enc is not None:
        dq = buffers.empty(q.shape, dtype=torch.float32, device=q.device)
    if enc is not None:
        # The kernels produce gradients w.r.t. the encoded q and k. They go to fp32 scratch, and the
        # encode kernel's inverse (rotation by -angle / times scale) writes the user's dq, dk from
        # it: one rounding to the input dtype, as without encoding, and no encoding code in the
        # kernels' epilogues (it made them spill).
        dk = buffers.empty(k.shape, dtype=torch.float32, device=k.device)
    scalars = (params.seqlen_q, params.seqlen_k, params.nheads_q, params.head_dim, params.group_size,
               params.softmax_scale, params.softmax_scale * LOG2E, params.window[0], params.window[1],
               params.diagonal_offset)
    common.update(dropout_args(params))

    if params.seqlen_q > 0:
        attention_bwd_preprocess_kernel[(triton.cdiv(params.seqlen_q, dq_cfg.block_m), params.nheads_q, params.batch)](
            out, dout, delta, *_strides(out), *_strides(dout), params.seqlen_q, params.nheads_q, params.head_dim,
            seq_args["cu_q_ptr"], seq_args["stride_lse_b"], seq_args["stride_lse_h"],
            BLOCK_M=dq_cfg.block_m, BLOCK_D=block_d, IS_VARLEN=seq_args["IS_VARLEN"],
        )
    q, k = streams.q, streams.k
    key = autotune.key_of(params, q.dtype, block_d, pe)
    mods_args = score_mod_args(params, q)

    dbias_args = dict(dbias_ptr=q, dbias_stride_b=0, dbias_stride_h=0, dbias_stride_m=0, dbias_stride_n=0,
                      DBIAS_KIND=dbias_kind(dbias, params))
    if dbias is not None:  # strides of its expanded view: 0 along the broadcast dims
        grad_view = dbias.expand(params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k)
        dbias_args.update(dbias_ptr=dbias, **dict(zip(("dbias_stride_b", "dbias_stride_h", "dbias_stride_m",
                                                       "dbias_stride_n"), grad_view.stride())))

    def launch_dkdv(cfg):
        for head_base, heads, batch_base, batch in dbias_launches(dbias, params):
            attention_bwd_dkdv_kernel[(triton.cdiv(params.seqlen_k, cfg.block_n), heads, batch)](
                q, k, v, dout, lse, delta, dk, dv, dq_acc if fused else dq,
                *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
                *dq_args.values(), *scalars,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                kv_head_base=head_base, batch_base=batch_base, FUSED_DQ=fused, DQ_TMA=dq_tma,
                SPLIT_MASK=cfg.split_mask, STREAM_TMA=stream_tma_kv,
                **dbias_args, **common, **pe, **mods_args, **seq_args,
            )

    def launch_dq(cfg):
        attention_bwd_dq_kernel[(triton.cdiv(params.seqlen_q, cfg.block_m), params.nheads_q, params.batch)](
            q, k, v, dout, lse, delta, dq,
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq), *scalars,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            STREAM_TMA=stream_tma_dq, **common, **pe, **mods_args, **seq_args,
        )

    # The dQ atomics go through a tensor descriptor on GPUs (TMA reduce on sm_90; Triton lowers it to
    # plain atomics before Hopper), through pointers under the interpreter, which has no descriptor
    # reduce.
    dq_tma = fused and not INTERPRETED
    # The streamed tiles (Q and dO past a key tile; K and V past a query tile) are loaded through
    # tensor descriptors (TMA) on sm_90 where their layout allows it and they need no encoding in the
    # kernel; also under the interpreter, so CI runs that path. Otherwise through pointers.
    arch = launch_arch(q.device)
    descriptors = INTERPRETED or (arch is not None and arch >= 90)
    stream_tma_kv = descriptors and pe["Q_PE_KIND"] == 0 and descriptor_ready(q, dout)
    stream_tma_dq = descriptors and pe["K_PE_KIND"] == 0 and descriptor_ready(k, v)
    if (dq_tma or stream_tma_kv or stream_tma_dq) and (q.is_cuda or INTERPRETED):
        ensure_scratch_allocator()
    if params.seqlen_k > 0:
        kv_key = key if dbias is None else f"{key} dbias"  # the bias-gradient code is part of the kernel
        name, candidates = (("attention_bwd_fused", fused_candidates) if fused
                            else ("attention_bwd_dkdv", dkdv_candidates))
        cfg = autotune.pick(name, kv_key, kv_cfg, lambda arch: candidates(block_d, arch, bias), launch_dkdv, q.device)
        for accumulated in (dbias, dq_acc if fused else None):
            if accumulated is not None:
                accumulated.zero_()  # autotuning's timed launches added to it
        launch_dkdv(cfg)
    if params.seqlen_q > 0 and not fused:
        launch_dq(autotune.pick("attention_bwd_dq", key, dq_cfg, lambda arch: dq_candidates(block_d, arch, bias),
                                launch_dq, q.device))
    if enc is not None:
        dq = encode(dq, enc, enc.q_positions, inverse=True, out=dq_user)
        dk = encode(dk, enc, enc.k_positions, inverse=True, out=dk_user)
    elif fused:
        dq = dq_user.copy_(dq)
    return dq, dk, dv
