"""Memory-efficient attention in plain PyTorch: the CPU path of backend="auto" (also runs on GPU).

On CPU, every call torch's fused CPU flash attention computes exactly (no dropout, score mods, sinks,
left-bounded windows or per-sequence lengths) runs on it (torch_fused.py: SDPA's speed). The rest:
queries are processed in chunks so only a (chunk, keys it can see) slice of scores exists at a time
(keys a causal mask or a window hides from the whole chunk are never computed), and the backward
recomputes those slices from the saved lse instead of keeping them: memory stays linear in seqlen, as
with the fused kernels. fp16/bf16 inputs are computed in fp32 and rounded at the end.
"""
from __future__ import annotations

import torch

from .. import buffers
from ..params import AttentionParams
from ..semantics import masks, positional, score_mods
from . import cpu_kernels, torch_fused
from .interface import Backend

# Scores held at once (elements of a chunk of the score matrix): 2^24 fp32 = 64 MiB.
_SCORE_ELEMENTS_PER_CHUNK = 1 << 24
# With a causal mask or a window, chunks of at most this many queries, so the keys the mask hides from
# a whole chunk (skipped: _key_span) are most of them; a chunk still has enough work to hide the
# Python overhead of one.
_MASKED_CHUNK_QUERIES = 256


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(params: AttentionParams):
    per_query = max(1, params.batch * params.nheads_q * params.seqlen_k)
    size = max(1, _SCORE_ELEMENTS_PER_CHUNK // per_query)
    if params.has_window:
        size = min(size, _MASKED_CHUNK_QUERIES)
    for start in range(0, params.seqlen_q, size):
        yield start, min(params.seqlen_q, start + size)


def _grouped(t: torch.Tensor, params: AttentionParams) -> torch.Tensor:
    """bshd query-side tensor -> (batch, seqlen, nheads_kv, group, head_dim), heads of a group together."""
    b, s, _, d = t.shape
    return t.reshape(b, s, params.nheads_kv, params.group_size, d)


def _key_span(params: AttentionParams, start: int, end: int) -> slice:
    """The keys queries [start, end) can see (masks.key_range): the others are never computed."""
    return slice(*masks.key_range(start, end, params.seqlen_q, params.seqlen_k, params.window, params.diagonal_offset))


def _scores_and_mask(q_chunk, k, params: AttentionParams, start: int, end: int, keys: slice):
    """Scores (b, hkv, g, chunk, len(keys)) for queries [start, end) against `keys` (k holds those
    rows only; scaled, then softcap / ALiBi / bias of score_mods), their visibility mask, and
    d(scores)/d(scaled scores) (None when it is 1)."""
    scores = torch.einsum("bqhgd,bkhd->bhgqk", q_chunk, k) * params.softmax_scale
    q_rows, k_cols = torch.arange(start, end, device=k.device), torch.arange(keys.start, keys.stop, device=k.device)
    grad = None
    if params.mods.active:
        shape = scores.shape
        heads = (shape[0], shape[1] * shape[2], *shape[3:])  # (b, hkv, g, ...) -> (b, h, ...): h = hkv * g + g_i
        flat, grad = score_mods.modify(scores.reshape(heads), params.mods, q_rows, k_cols, params.diagonal_offset)
        scores, grad = flat.reshape(shape), None if grad is None else grad.reshape(shape)
    visible = masks.visible_keys(
        q_rows,
        k_cols,
        params.seqlen_q,
        params.seqlen_k,
        params.window,
        params.diagonal_offset,
    )
    return scores, visible, grad


def _chunk_keep(params: AttentionParams, start: int, end: int, device, keys: slice = slice(None)):
    """Dropout keep-mask (b, hkv, g, end - start, sk) of a query chunk, regenerated from the call's seed
    (drawn for every key, so it does not depend on which keys a chunk computes), at `keys`."""
    if not params.has_dropout:
        return None
    gen = torch.Generator(device=device).manual_seed((params.dropout_seed + start * 1_000_003) % 2**63)
    shape = (params.batch, params.nheads_kv, params.group_size, end - start, params.seqlen_k)
    return (torch.rand(shape, generator=gen, device=device) >= params.dropout_p)[..., keys]


def dropout_mask(params: AttentionParams, device) -> torch.Tensor | None:
    """This backend's whole keep-mask (batch, nheads_q, seqlen_q, seqlen_k), for tests and debugging."""
    if not params.has_dropout:
        return None
    chunks = [_chunk_keep(params, start, end, device) for start, end in _chunks(params)]
    return torch.cat(chunks, dim=3).reshape(params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k)


def _dropped(x: torch.Tensor, keep: torch.Tensor | None, params: AttentionParams) -> torch.Tensor:
    return x if keep is None else x * keep / (1.0 - params.dropout_p)


def _encoded(q, k, params: AttentionParams, dtype):
    """q and k in the compute dtype with the positional encoding applied (q still bshd)."""
    return positional.encode_qk(q.to(dtype), k.to(dtype), params.encoding)


def forward(q, k, v, params: AttentionParams):
    if torch_fused.expressible(params, q.device):  # torch's fused CPU kernel computes this call exactly
        out, lse = torch_fused.forward(q, k, v, params)
        return out, lse, ()
    cdt = _compute_dtype(q.dtype)
    out = buffers.empty_like(q)
    lse = buffers.empty((params.batch, params.nheads_q, params.seqlen_q), dtype=torch.float32, device=q.device)
    q_enc, kc = _encoded(q, k, params, cdt)
    qg, vc = _grouped(q_enc, params), v.to(cdt)
    lse_g = lse.view(params.batch, params.nheads_kv, params.group_size, params.seqlen_q)
    sinks = params.mods.sinks
    if sinks is not None:  # (hkv, g, 1) against the chunk's (b, hkv, g, q) lse
        sinks = sinks.to(cdt).view(params.nheads_kv, params.group_size, 1)
    for start, end in _chunks(params):
        keys = _key_span(params, start, end)
        scores, visible, _ = _scores_and_mask(qg[:, start:end], kc[:, keys], params, start, end, keys)
        scores = scores.masked_fill(~visible, float("-inf"))
        chunk_lse = torch.logsumexp(scores, dim=-1)  # -inf for rows that see no key
        if sinks is not None:  # the sink's logit joins the normalizer (score_mods.py)
            chunk_lse = torch.logaddexp(chunk_lse, sinks)
        safe_lse = torch.where(torch.isfinite(chunk_lse), chunk_lse, torch.zeros_like(chunk_lse))
        probs = torch.exp(scores - safe_lse[..., None])  # exactly 0 where masked
        probs = _dropped(probs, _chunk_keep(params, start, end, q.device, keys), params)
        chunk_out = torch.einsum("bhgqk,bkhd->bqhgd", probs, vc[:, keys])
        out[:, start:end] = chunk_out.reshape(out[:, start:end].shape).to(out.dtype)
        lse_g[..., start:end] = chunk_lse.to(torch.float32)
    return out, lse, ()


def backward(dout, q, k, v, out, lse, scratch, params: AttentionParams, dbias=None):
    """(dq, dk, dv); with dbias (fp32, the bias's own 4-D shape) dS is added to it, summed over the
    dimensions the bias is broadcast along. The lse includes the sinks, so nothing else changes."""
    if torch_fused.expressible(params, q.device):  # no bias there, hence no dbias
        return torch_fused.backward(dout, q, k, v, out, lse, params)
    cdt = _compute_dtype(q.dtype)
    q_enc, kc = _encoded(q, k, params, cdt)
    qg, vc = _grouped(q_enc, params), v.to(cdt)
    dout_g = _grouped(dout, params).to(cdt)
    lse_g = lse.view(params.batch, params.nheads_kv, params.group_size, params.seqlen_q).to(cdt)
    # delta_i = sum_d dO_i . O_i, the softmax-backward row correction (rowsum(P * dP)).
    delta = (dout_g * _grouped(out, params).to(cdt)).sum(-1).permute(0, 2, 3, 1)
    dq_acc = torch.empty_like(qg)
    dk_acc = torch.zeros_like(kc)
    dv_acc = torch.zeros_like(vc)
    for start, end in _chunks(params):
        keys = _key_span(params, start, end)
        scores, visible, dmod = _scores_and_mask(qg[:, start:end], kc[:, keys], params, start, end, keys)
        chunk_lse = lse_g[..., start:end]
        # Rows that saw no key have lse -inf; +inf there makes every probability exactly 0.
        chunk_lse = torch.where(torch.isfinite(chunk_lse), chunk_lse, torch.full_like(chunk_lse, float("inf")))
        probs = torch.where(visible, torch.exp(scores - chunk_lse[..., None]), torch.zeros_like(scores))
        do_chunk = dout_g[:, start:end]
        keep = _chunk_keep(params, start, end, q.device, keys)
        dv_acc[:, keys] += torch.einsum("bhgqk,bqhgd->bkhd", _dropped(probs, keep, params), do_chunk)
        # With dropout O = (P * Z / (1 - p)) V: the gradient reaching P is dP * Z / (1 - p), and
        # delta = rowsum(dO * O) is still rowsum(P * that).
        dprobs = _dropped(torch.einsum("bqhgd,bkhd->bhgqk", do_chunk, vc[:, keys]), keep, params)
        dscores = probs * (dprobs - delta[..., start:end, None])  # w.r.t. the modified scores
        if dbias is not None:  # the bias is added after the scale and the softcap: it gets dS itself
            chunk_dbias = dbias[:, :, start:end] if dbias.shape[2] > 1 else dbias
            chunk_dbias = chunk_dbias[..., keys] if dbias.shape[3] > 1 else chunk_dbias
            ds_heads = dscores.reshape(params.batch, params.nheads_q, end - start, keys.stop - keys.start)
            chunk_dbias += ds_heads.sum_to_size(chunk_dbias.shape).to(dbias.dtype)
        dscores = dscores * params.softmax_scale
        if dmod is not None:  # through the softcap's tanh
            dscores = dscores * dmod
        dq_acc[:, start:end] = torch.einsum("bhgqk,bkhd->bqhgd", dscores, kc[:, keys])
        dk_acc[:, keys] += torch.einsum("bhgqk,bqhgd->bkhd", dscores, qg[:, start:end])
    dq_acc = dq_acc.reshape(q.shape)
    # Gradients w.r.t. the encoded q, k -> w.r.t. the user's q, k.
    dq_acc, dk_acc = positional.encode_qk(dq_acc, dk_acc, params.encoding, inverse=True)
    dq, dk, dv = buffers.empty_like(q), buffers.empty_like(k), buffers.empty_like(v)
    dq.copy_(dq_acc)
    dk.copy_(dk_acc)
    dv.copy_(dv_acc)
    return dq, dk, dv


def forward_sequences(q, k, v, params: AttentionParams, spans):
    """A batch with per-sequence lengths (spans: spans.Spans) read in place: by the CPU kernels when they take
    it (cpu_kernels.takes: short query runs, decoding), else on torch's fused kernel, a call per sequence (or
    run of equal ones) on views (torch_fused.forward_sequences); None: backends/per_sequence.py's groups run it."""
    if cpu_kernels.takes(q, k, v, params, spans):
        return (*cpu_kernels.forward(q, k, v, params, spans), ())
    if not torch_fused.sequences_expressible(params, q.device):
        return None
    return (*torch_fused.forward_sequences(q, k, v, params, spans.rows), ())


def backward_sequences(dout, q, k, v, out, lse, params: AttentionParams, spans):
    if cpu_kernels.takes(q, k, v, params, spans):
        return cpu_kernels.backward(dout, q, k, v, out, lse, params, spans)
    if not torch_fused.sequences_expressible(params, q.device):
        return None
    return torch_fused.backward_sequences(dout, q, k, v, out, lse, params, spans.rows)


def encode(x, enc, positions, *, inverse=False, out=None, compute_dtype=None):
    """Standalone positional encoding of bshd x into out (new if None), computed in compute_dtype
    (default: fp32 for fp16/bf16 inputs) and rounded to out's dtype."""
    result = positional.encode(x.to(compute_dtype or _compute_dtype(x.dtype)), enc, positions, inverse=inverse)
    out = buffers.empty_like(x) if out is None else out
    return out.copy_(result)


BACKEND = Backend(name="torch", forward=forward, backward=backward, encode=encode, dropout_mask=dropout_mask,
                  forward_sequences=forward_sequences, backward_sequences=backward_sequences)
