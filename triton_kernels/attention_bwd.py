"""Fused attention backward: no (seqlen_q, seqlen_k) buffer, P is recomputed from Q, K and lse.

Three kernels:
- preprocess: delta_i = rowsum(dO_i * O_i) (= rowsum(P * dP), the softmax-backward correction);
- dK/dV: a key tile stays in registers while the query tiles that can see it stream past, over all
  query heads of its GQA group, so group gradients are summed without atomics;
- dQ: a query tile stays in registers while the visible key tiles stream past.
With S = scale * Q K^T, P = exp(S - lse): dV = P^T dO, dP = dO V^T, dS = P * (dP - delta),
dQ = scale * dS K, dK = scale * dS^T Q.
"""
import torch
import triton
import triton.language as tl

from flashattn_py import buffers
from flashattn_py.checks import AttentionParams

from .common import (LOG2E, bsh_strides, check_launch_limits, dot_flags, dropout_args, dropout_keep, head_dim_block,
                     keep_mask, sequence_args, sequence_bounds,
                     key_block_range, load_tile, query_block_range, tile_dot)
from . import autotune
from .configs import dkdv_candidates, dkdv_config, dq_candidates, dq_config
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
def attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
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
    Q_PE_KIND: tl.constexpr, K_PE_KIND: tl.constexpr, PE_INTERLEAVED: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr, DBIAS_KIND: tl.constexpr,
):
    pid_n = tl.program_id(0)
    # kv_head_base / batch_base: a launch may cover one KV head / sequence (dbias_launches).
    kv_head = (tl.program_id(1) + kv_head_base).to(tl.int64)
    batch = (tl.program_id(2) + batch_base).to(tl.int64)
    seqlen_k_max = seqlen_k  # the dropout counter's row length: the same for every sequence
    q_start, k_start, seqlen_q, seqlen_k, k_rows, diag_offset = sequence_bounds(
        batch, seqlen_q, seqlen_k, diag_offset, cu_q_ptr, cu_k_ptr, seqused_k_ptr, IS_VARLEN, HAS_SEQUSED_K)
    if pid_n * BLOCK_N >= k_rows:  # the grid covers the longest sequence of a packed batch
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    pe = (pe_cos_ptr, pe_sin_ptr, pe_table_stride, pe_dim, pe_log2_base, pe_scale, head_dim)
    k_pos = (kpos_ptr + batch * kpos_stride_b, kpos_stride_s)
    k_tile = load_encoded_tile(k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_ks, offs_n, offs_d,
                               stride_ks, seqlen_k, k_pos, pe, K_PE_KIND, PE_INTERLEAVED, PE_FROM_TABLE, False)
    v_tile = load_tile(v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vs, offs_n, offs_d, stride_vs,
                       seqlen_k, head_dim)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, hi = query_block_range(pid_n * BLOCK_N, seqlen_q, diag_offset, window_left, window_right,
                               BLOCK_M, BLOCK_N, HAS_WINDOW)
    for member in range(0, group_size):
        head = kv_head * group_size + member
        q_base = q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qs
        do_base = dout_ptr + batch * stride_dob + head * stride_doh + q_start * stride_dos
        row_offset = batch * stride_lse_b + head * stride_lse_h + q_start
        mods = head_mods((softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
                         bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n), batch, head, HAS_ALIBI)
        dbias_base = dbias_ptr + batch * dbias_stride_b + head * dbias_stride_h
        dbias_keys = tl.zeros([BLOCK_N], dtype=tl.float32)  # DBIAS_PER_KEY: dS summed over this head's queries
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = load_encoded_tile(q_base, offs_m, offs_d, stride_qs, seqlen_q,
                                  (qpos_ptr + batch * qpos_stride_b, qpos_stride_s), pe,
                                  Q_PE_KIND, PE_INTERLEAVED, PE_FROM_TABLE, False)
            dout = load_tile(do_base, offs_m, offs_d, stride_dos, seqlen_q, head_dim)
            lse, delta = load_row_stats(lse_ptr, delta_ptr, row_offset, offs_m, seqlen_q)
            # Work on transposed tiles (keys x queries) so dK and dV come out without transposes.
            raw_t = tile_dot(k_tile, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), FP32_OPERANDS, PRECISION)
            s_t, dcap_t = modified_scores(raw_t, offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, diag_offset, qk_scale_log2,
                                          mods, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND)
            keep = keep_mask(offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, diag_offset, window_left, window_right, HAS_WINDOW)
            # Masked before exp2: a hidden score may exceed lse, and exp2 of it would overflow.
            p_t = tl.math.exp2(tl.where(keep, s_t - lse[None, :], float("-inf")))
            dp_t = tile_dot(v_tile, tl.trans(dout), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32),
                            FP32_OPERANDS, PRECISION)
            if HAS_DROPOUT:
                # O = (P * Z / (1 - p)) V: dV sees the dropped weights, dP reaches P through Z / (1 - p).
                keep_t = dropout_keep(dropout_seed, row_offset, offs_m[None, :], offs_n[:, None], seqlen_k_max, dropout_p)
                dv = tile_dot(tl.where(keep_t, p_t * dropout_scale, 0.0).to(dout.dtype), dout, dv,
                              FP32_OPERANDS, PRECISION)
                dp_t = tl.where(keep_t, dp_t * dropout_scale, 0.0)
            else:
                dv = tile_dot(p_t.to(dout.dtype), dout, dv, FP32_OPERANDS, PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            if DBIAS_KIND != 0:  # DBIAS_NONE; the bias is added after the scale and the softcap: it gets dS itself
                dbias_keys = bias_gradient(ds_t, dbias_base, dbias_keys, offs_m, offs_n, seqlen_q, seqlen_k,
                                           dbias_stride_m, dbias_stride_n, DBIAS_KIND)
            if HAS_SOFTCAP:  # through the tanh of the softcap (the scale is applied to dk at the end)
                ds_t = ds_t * dcap_t
            dk = tile_dot(ds_t.to(q.dtype), q, dk, FP32_OPERANDS, PRECISION)
        if DBIAS_KIND == 3:  # DBIAS_PER_KEY
            tl.atomic_add(dbias_base + offs_n.to(tl.int64) * dbias_stride_n, dbias_keys, mask=offs_n < seqlen_k)
    dk = dk * softmax_scale
    tile_mask = (offs_n[:, None] < k_rows) & (offs_d[None, :] < head_dim)  # keys past seqused_k get zeros
    dk_ptrs = (dk_ptr + batch * stride_dkb + kv_head * stride_dkh + k_start * stride_dks
               + offs_n[:, None].to(tl.int64) * stride_dks + offs_d[None, :])
    dv_ptrs = (dv_ptr + batch * stride_dvb + kv_head * stride_dvh + k_start * stride_dvs
               + offs_n[:, None].to(tl.int64) * stride_dvs + offs_d[None, :])
    tl.store(dk_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=tile_mask)
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=tile_mask)


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
    Q_PE_KIND: tl.constexpr, K_PE_KIND: tl.constexpr, PE_INTERLEAVED: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
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
    k_pos = (kpos_ptr + batch * kpos_stride_b, kpos_stride_s)
    q = load_encoded_tile(q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qs, offs_m, offs_d,
                          stride_qs, seqlen_q, (qpos_ptr + batch * qpos_stride_b, qpos_stride_s), pe,
                          Q_PE_KIND, PE_INTERLEAVED, PE_FROM_TABLE, False)
    dout = load_tile(dout_ptr + batch * stride_dob + head * stride_doh + q_start * stride_dos, offs_m, offs_d,
                     stride_dos, seqlen_q, head_dim)
    row_offset = batch * stride_lse_b + head * stride_lse_h + q_start
    lse, delta = load_row_stats(lse_ptr, delta_ptr, row_offset, offs_m, seqlen_q)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_ks
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vs
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mods = head_mods((softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
                     bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n), batch, head, HAS_ALIBI)
    lo, hi = key_block_range(pid_m * BLOCK_M, seqlen_k, diag_offset, window_left, window_right,
                             BLOCK_M, BLOCK_N, HAS_WINDOW)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_tile = load_encoded_tile(k_base, offs_n, offs_d, stride_ks, seqlen_k, k_pos, pe,
                                   K_PE_KIND, PE_INTERLEAVED, PE_FROM_TABLE, False)
        v_tile = load_tile(v_base, offs_n, offs_d, stride_vs, seqlen_k, head_dim)
        raw = tile_dot(q, tl.trans(k_tile), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), FP32_OPERANDS, PRECISION)
        s, dcap = modified_scores(raw, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, qk_scale_log2, mods,
                                  HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND)
        keep = keep_mask(offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, window_left, window_right, HAS_WINDOW)
        p = tl.math.exp2(tl.where(keep, s - lse[:, None], float("-inf")))
        dp = tile_dot(dout, tl.trans(v_tile), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32),
                      FP32_OPERANDS, PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(dropout_seed, row_offset, offs_m[:, None], offs_n[None, :], seqlen_k_max, dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * dcap
        dq = tile_dot(ds.to(k_tile.dtype), k_tile, dq, FP32_OPERANDS, PRECISION)
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


def attention_backward(dout, q, k, v, out, lse, scratch, params: AttentionParams, dbias=None):
    """Gradients (dq, dk, dv), each with the shape and dtype of its input; with dbias (fp32, the shape
    of the bias as given, zeros), dS summed over the bias's broadcast dimensions is added to it.

    scratch from the forward: (lse in base 2, [K encoded by the pre-pass]); `lse` (natural) is unused.
    """
    lse, k_encoded = scratch[0], (scratch[1] if len(scratch) > 1 else None)
    check_launch_limits(params.batch, params.nheads_q)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()  # kernels read the head dim with unit stride
    dq, dk, dv = buffers.empty_like(q), buffers.empty_like(k), buffers.empty_like(v)
    if params.batch == 0 or params.nheads_q == 0 or (params.seqlen_q == 0 and params.seqlen_k == 0):
        return dq, dk, dv
    block_d = head_dim_block(params.head_dim)
    delta = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    seq_args = sequence_args(params, q)

    def _strides(t):
        return bsh_strides(t, params)

    common = dict(BLOCK_D=block_d, HAS_WINDOW=params.has_window, **dot_flags(q.dtype))
    dkdv_cfg, dq_cfg = dkdv_config(block_d, bias=params.mods.bias is not None), dq_config(block_d)
    # dK/dV streams Q tiles (each read once per key tile); dQ streams K tiles (once per query tile).
    streamed_reads = max(triton.cdiv(params.seqlen_k, dkdv_cfg.block_n), triton.cdiv(params.seqlen_q, dq_cfg.block_m))
    streams = encoded_streams(params, q=q, k=k, streamed_reads=streamed_reads, k_encoded=k_encoded)
    pe = kernel_encoding(params.encoding, q).attention_args(streams.q_in_kernel, streams.k_in_kernel)
    enc = params.encoding
    if enc is not None:
        # The kernels produce gradients w.r.t. the encoded q and k. They go to fp32 scratch, and the
        # encode kernel's inverse (rotation by -angle / times scale) writes the user's dq, dk from
        # it: one rounding to the input dtype, as without encoding, and no encoding code in the
        # kernels' epilogues (it made them spill).
        dq_user, dk_user = dq, dk
        dq = buffers.empty(q.shape, dtype=torch.float32, device=q.device)
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
                q, k, v, dout, lse, delta, dk, dv,
                *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv), *scalars,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                kv_head_base=head_base, batch_base=batch_base, **dbias_args, **common, **pe, **mods_args, **seq_args,
            )

    def launch_dq(cfg):
        attention_bwd_dq_kernel[(triton.cdiv(params.seqlen_q, cfg.block_m), params.nheads_q, params.batch)](
            q, k, v, dout, lse, delta, dq,
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq), *scalars,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common, **pe, **mods_args, **seq_args,
        )

    if params.seqlen_k > 0:
        dkdv_key = key if dbias is None else f"{key} dbias"  # the bias-gradient code is part of the kernel
        cfg = autotune.pick("attention_bwd_dkdv", dkdv_key, dkdv_cfg,
                            lambda arch: dkdv_candidates(block_d, arch, params.mods.bias is not None),
                            launch_dkdv, q.device)
        if dbias is not None:
            dbias.zero_()  # autotuning's timed launches added to it
        launch_dkdv(cfg)
    if params.seqlen_q > 0:
        launch_dq(autotune.pick("attention_bwd_dq", key, dq_cfg, lambda arch: dq_candidates(block_d, arch),
                                launch_dq, q.device))
    if enc is not None:
        dq = encode(dq, enc, enc.q_positions, inverse=True, out=dq_user)
        dk = encode(dk, enc, enc.k_positions, inverse=True, out=dk_user)
    return dq, dk, dv
