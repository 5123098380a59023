"""nn.Modules on our kernels: a drop-in ``MultiheadAttention`` and a Llama-style ``LlamaAttention``
(with ``KVCache`` for generation).

``MultiheadAttention`` subclasses ``torch.nn.MultiheadAttention``: same constructor, parameters and
state_dict (weights load either way), same forward signature and mask conventions (bool True =
*masked* here, as in torch's module; float masks are added). Attention runs in our fused kernels;
``need_weights=True`` (torch's default) additionally materializes the (batch, heads, L, S) weights.

torch's fused inference paths read a MultiheadAttention's weights without calling its forward, so in
them our kernels would go unused: ``nn.MultiheadAttention.forward``'s own fast path (we override
forward, so it never runs) and ``nn.TransformerEncoderLayer``'s ``torch._transformer_encoder_layer_fwd``
(kept away by the forward pre-hook every instance registers: see ``_forward_runs_in_encoder_layers``).
``nn.TransformerEncoder`` may still turn a right-padded batch into a nested tensor (eval, no grad,
``src_key_padding_mask``); our forward takes nested inputs and runs them on the variable-length kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import api
from .decoding import flash_attn_with_kvcache
from .params import Rotary
from .semantics.naive_attention import probabilities
from .validation.attention import attention_params
from .varlen import flash_attn_varlen_func


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch.nn.MultiheadAttention's mask convention -> additive float (bool True = masked = -inf)."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask


def merged_bias(attn_mask, key_padding_mask, batch: int, heads: int, dtype: torch.dtype):
    """One bias for our kernels (bool = keep, or additive float), broadcastable to (N, H, L, S), from
    torch's attn_mask (L, S) / (N * H, L, S) and key_padding_mask (N, S). A lone key-padding mask stays a
    (N, 1, 1, S) view; only an attn_mask (already L x S) is combined at its own size."""
    if attn_mask is not None and attn_mask.dim() == 3:
        attn_mask = attn_mask.view(batch, heads, *attn_mask.shape[1:])
    kpm = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    if attn_mask is None and kpm is None:
        return None
    masks = [m for m in (attn_mask, kpm) if m is not None]
    if all(m.dtype == torch.bool for m in masks):
        hidden = masks[0] if len(masks) == 1 else masks[0] | masks[1]
        return ~hidden
    additive = [_as_additive(m, dtype) for m in masks]
    return additive[0] if len(additive) == 1 else additive[0] + additive[1]


def _forward_runs_in_encoder_layers(module, args):
    """A forward pre-hook that does nothing: its presence is the point. nn.TransformerEncoderLayer.forward
    skips its fused fast path (torch._transformer_encoder_layer_fwd, which reads self_attn's weights and
    never calls self_attn) when any submodule has forward hooks ("forward pre-/hooks are attached to
    the module" in its why_not_sparsity_fast_path checks; torch must keep it, or hooks would silently
    not run). tests/test_encoder_layers.py counts our calls, so a torch that drops the check is caught."""
    return None


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in for torch.nn.MultiheadAttention running our fused attention: same constructor, parameters and
    state_dict. Nested tensors (batch_first only; what nn.TransformerEncoder makes of a right-padded batch)
    run packed on the variable-length kernels. Details: docs/entry-points.md.

    Args:
        *args, **kwargs: torch.nn.MultiheadAttention's (embed_dim, num_heads, dropout, bias, add_bias_kv,
            add_zero_attn, kdim, vdim, batch_first, device, dtype).
        backend: keyword-only, as in ``flashattn_py.attention``: "auto" (Triton on CUDA, PyTorch on CPU),
            "triton", "cuda", "torch" or "reference".
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.register_forward_pre_hook(_forward_runs_in_encoder_layers)

    def _projections(self, query, key, value):
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """torch.nn.MultiheadAttention.forward's signature and mask conventions (bool True = *masked*, float
        masks added to the scores); N batch, L target and S source length, E embed_dim, H num_heads.

        Args:
            query: ``[N, L, E]`` with batch_first, else ``[L, N, E]``; ``[L, E]`` unbatched; or a nested
                ``[N, L_b, E]`` tensor (batch_first only; key and value nested too).
            key: ``[N, S, kdim]`` with batch_first, else ``[S, N, kdim]``; ``[S, kdim]`` unbatched; or nested.
            value: ``[N, S, vdim]`` with batch_first, else ``[S, N, vdim]``; ``[S, vdim]`` unbatched; or nested.
            key_padding_mask: ``[N, S]`` (``[S]`` unbatched): bool (True = ignore the key) or float (added);
                None = none. Refused with nested inputs.
            need_weights: also return the softmax weights, materialized (costs ``[N, H, L, S]`` memory; False
                keeps memory linear). Default True, as torch's.
            attn_mask: ``[L, S]`` or ``[N * H, L, S]`` (``[H, L, S]`` unbatched): bool (True = masked) or float
                (added); None = none. Refused with nested inputs.
            average_attn_weights: average the returned weights over the heads; default True.
            is_causal: hint that attn_mask is the causal mask (attn_mask still required); our kernels then apply
                the top-left causal mask themselves when there is no key_padding_mask and need_weights is False.

        Returns:
            (attn_output, attn_weights): attn_output ``[N, L, E]`` with batch_first, else ``[L, N, E]`` (``[L, E]``
            unbatched; nested like query for nested inputs), query's dtype. attn_weights, query's dtype:
            ``[N, L, S]`` averaged over the heads or ``[N, H, L, S]`` (without N unbatched), the softmax weights
            before dropout; for nested inputs ``[N, (H,) max L, max S]``, zero past each length (as torch's fast
            path); None with need_weights=False.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention)")
        if query.is_nested or key.is_nested or value.is_nested:
            return self._nested_forward(query, key, value, key_padding_mask, attn_mask, need_weights,
                                        average_attn_weights)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._projections(query, key, value)
        batch, seqlen_q, embed = q.shape
        heads, head_dim = self.num_heads, self.head_dim
        if self.bias_k is not None:  # one learned key/value appended to every sequence
            k = torch.cat([k, self.bias_k.expand(batch, 1, embed)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, embed)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        if self.add_zero_attn:  # one all-zero key/value appended
            k = torch.cat([k, k.new_zeros(batch, 1, embed)], dim=1)
            v = torch.cat([v, v.new_zeros(batch, 1, embed)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        # torch's rule: the is_causal hint replaces attn_mask only without a padding mask and weights.
        causal = bool(is_causal and key_padding_mask is None and not need_weights)
        bias = None if causal else merged_bias(attn_mask, key_padding_mask, batch, heads, q.dtype)
        q, k, v = (t.view(batch, t.shape[1], heads, head_dim) for t in (q, k, v))
        options = dict(causal=causal, attn_bias=bias, alignment="top_left")
        out = api.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, backend=self.backend, **options)
        out = F.linear(out.reshape(batch, seqlen_q, embed), self.out_proj.weight, self.out_proj.bias)
        weights = None
        if need_weights:
            with torch.no_grad():
                weights = probabilities(q, k, attention_params(q, k, k, **options)).to(q.dtype)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out.squeeze(0 if self.batch_first else 1) if unbatched else out), weights

    def _nested_forward(self, query, key, value, key_padding_mask, attn_mask, need_weights, average_attn_weights):
        """(batch, ragged length, embed) nested inputs -> nested output of query's lengths and layout.
        The sequences are concatenated and run as one packed batch (cu_seqlens): no padding computed.
        Weights, as torch's fast path returns them: (batch, [heads,] max L, max S), zero past each length."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not t.is_nested:
                raise ValueError(f"{name} must be a nested tensor when the others are (got a dense one)")
        refused = dict(key_padding_mask=key_padding_mask is not None, attn_mask=attn_mask is not None,
                       add_bias_kv=self.bias_k is not None, add_zero_attn=self.add_zero_attn,
                       batch_first=not self.batch_first)
        if any(refused.values()):
            names = ", ".join(name for name, bad in refused.items() if bad)
            raise ValueError(f"nested inputs run without masks (each sequence's length is its mask) or appended "
                             f"keys, with batch_first=True (as in torch's fast path); refused here: {names}")
        pieces = [t.unbind() for t in (query, key, value)]
        if not len(pieces[0]) == len(pieces[1]) == len(pieces[2]):
            raise ValueError(f"query, key and value must hold as many sequences; got {[len(p) for p in pieces]}")
        lengths_q, lengths_k = [t.shape[0] for t in pieces[0]], [t.shape[0] for t in pieces[1]]
        q, k, v = self._projections(*(torch.cat(p) for p in pieces))
        cu_q, cu_k = (F.pad(torch.tensor(n, device=q.device).cumsum(0), (1, 0)).to(torch.int32)
                      for n in (lengths_q, lengths_k))
        q, k, v = (t.view(t.shape[0], self.num_heads, self.head_dim) for t in (q, k, v))
        out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                     dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        out = F.linear(out.reshape(out.shape[0], self.embed_dim), self.out_proj.weight, self.out_proj.bias)
        out = torch.nested.as_nested_tensor(list(out.split(lengths_q)), layout=query.layout)
        weights = None
        if need_weights:
            weights = self._padded_weights(q.split(lengths_q), k.split(lengths_k), max(lengths_q), max(lengths_k))
            weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights

    @staticmethod
    @torch.no_grad()
    def _padded_weights(qs, ks, max_q: int, max_k: int) -> torch.Tensor:
        """(batch, heads, max_q, max_k) softmax weights of packed sequences, one sequence at a time."""
        weights = qs[0].new_zeros(len(qs), qs[0].shape[1], max_q, max_k)
        for b, (q, k) in enumerate(zip(qs, ks)):
            if q.shape[0] == 0 or k.shape[0] == 0:  # an empty sequence (a fully padded row) keeps zeros
                continue
            q, k = q[None], k[None]
            params = attention_params(q, k, k, alignment="top_left")
            weights[b, :, :q.shape[1], :k.shape[1]] = probabilities(q, k, params)[0].to(q.dtype)
        return weights


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """torch.nn.TransformerEncoderLayer whose self_attn is our MultiheadAttention: same constructor (plus
    ``backend``), parameters, state_dict, initialization (torch's own self_attn is built, then its tensors
    taken over) and forward. Fits nn.TransformerEncoder, nested-tensor conversion included.

    Args:
        d_model: the embedding size E.
        nhead: the number of attention heads.
        *args, **kwargs: torch.nn.TransformerEncoderLayer's (dim_feedforward, dropout, activation, layer_norm_eps,
            batch_first, norm_first, bias, device, dtype).
        backend: keyword-only, as in ``flashattn_py.attention``, for self_attn.
    """

    def __init__(self, d_model: int, nhead: int, *args, backend: str = "auto", **kwargs):
        super().__init__(d_model, nhead, *args, **kwargs)
        theirs = self.self_attn
        # Built on the meta device (no memory, no init, no draw from the RNG), then given torch's tensors.
        ours = MultiheadAttention(d_model, nhead, dropout=theirs.dropout, bias=theirs.in_proj_bias is not None,
                                  batch_first=theirs.batch_first, backend=backend, device="meta",
                                  dtype=theirs.in_proj_weight.dtype)
        ours.load_state_dict(theirs.state_dict(), assign=True)
        self.self_attn = ours


class KVCache:
    """One LlamaAttention layer's keys and values for generation (flash_attn_with_kvcache underneath); each
    forward through the layer appends its tokens and advances ``seqlens``.

    Args:
        batch: the number of sequences B.
        capacity: the most tokens a sequence can hold (padding included).
        num_kv_heads: the layer's key / value heads Hkv.
        head_dim: the layer's head dim D.
        page_size: None (default): a contiguous cache; an int: a paged one, pages of page_size tokens, each
            sequence its own ``ceil(capacity / page_size)`` pages.
        leftpad: int32 ``[B]``: a left-padded batch of prompts, whose first ``leftpad[b]`` tokens are never
            attended (cache_leftpad); None = no padding.
        dtype: the cache's dtype (the layer's); default torch's default dtype.
        device: the cache's device; default torch's default device.

    Attributes:
        k, v: zeros at first: ``[B, capacity, Hkv, D]``, or paged ``[B * ceil(capacity / page_size), page_size,
            Hkv, D]``.
        block_table: int32 ``[B, ceil(capacity / page_size)]`` (sequence b's pages), or None when contiguous.
        seqlens: int32 ``[B]``: tokens cached per sequence, padding included; zeros at first.
        leftpad: as given.
    """

    def __init__(self, batch: int, capacity: int, num_kv_heads: int, head_dim: int, *, page_size: int | None = None,
                 leftpad: torch.Tensor | None = None, dtype=None, device=None):
        if page_size is None:
            self.k = torch.zeros(batch, capacity, num_kv_heads, head_dim, dtype=dtype, device=device)
            self.block_table = None
        else:
            pages = -(-capacity // page_size)
            self.k = torch.zeros(batch * pages, page_size, num_kv_heads, head_dim, dtype=dtype, device=device)
            self.block_table = torch.arange(batch * pages, dtype=torch.int32, device=self.k.device).view(batch, pages)
        self.v = torch.zeros_like(self.k)
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=self.k.device)
        self.leftpad = leftpad


class LlamaAttention(nn.Module):
    """Llama-style self-attention: q/k/v/o projections (no bias by default), grouped-query attention
    (num_kv_heads <= num_heads) and RoPE fused into the attention kernels (never materialized).

    Args:
        hidden_size: the model width.
        num_heads: the query heads Hq.
        num_kv_heads: the key / value heads Hkv, dividing num_heads; default num_heads.
        head_dim: default ``hidden_size // num_heads``.
        rotary: the ``Rotary`` spec; default ``Rotary()`` (base 10000, all channels, GPT-NeoX pairs).
        bias: projections with bias; default False.
        dropout: attention dropout probability, applied in training mode only (not with a cache); default 0.0.
        causal: causal self-attention; default True.
        backend: as in ``flashattn_py.attention``: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda",
            "torch" or "reference".
        device, dtype: of the projections' parameters.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
                 rotary: Rotary | None = None, bias: bool = False, dropout: float = 0.0, causal: bool = True,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rotary = Rotary() if rotary is None else rotary
        self.dropout, self.causal, self.backend = dropout, causal, backend
        factory = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias, **factory)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias, **factory)

    def _check_cache(self, cache, k: torch.Tensor) -> None:
        """The cache holds this layer's keys for x's batch: said in KVCache's terms (the attention call
        underneath would name its own arguments)."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a flashattn_py.modules.KVCache, got {type(cache).__name__}")
        want = dict(batch=k.shape[0], num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, dtype=k.dtype,
                    device=k.device)
        got = dict(batch=cache.seqlens.shape[0], num_kv_heads=cache.k.shape[2], head_dim=cache.k.shape[3],
                   dtype=cache.k.dtype, device=cache.k.device)
        if got != want:
            wrong = ", ".join(f"{name}={got[name]} (needs {want[name]})" for name in want if got[name] != want[name])
            raise ValueError(f"cache does not fit this layer and input: {wrong}; make it with "
                             f"KVCache(batch, capacity, num_kv_heads, head_dim, dtype=, device=) to match")

    def forward(self, x: torch.Tensor, positions=None, attn_bias: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Self-attention of x; with ``cache``, one generation step against it (inference only: no backward).

        Args:
            x: ``[B, S, hidden_size]``, the parameters' dtype.
            positions: None (0..S-1), an int or ``[B]`` int offset, or ``[B, S]`` int position ids. Not with cache.
            attn_bias: as in ``flashattn_py.attention``, broadcastable to ``[B, Hq, S, S]`` (e.g. a ``[B, 1, 1, S]``
                bool key-padding mask, True = keep); None = none. Not with cache.
            cache: a ``KVCache`` (inference): x's tokens follow the cached ones (prefill, then one per step);
                their keys and values are appended, positions continue from ``cache.seqlens`` (advanced by S in
                place) and padding is ``cache.leftpad``. None (default): no cache.

        Returns:
            ``[B, S, hidden_size]``, x's dtype.
        """
        batch, seqlen, _ = x.shape
        q = self.q_proj(x).view(batch, seqlen, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seqlen, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seqlen, self.num_kv_heads, self.head_dim)
        if cache is not None:
            if positions is not None or attn_bias is not None:
                raise ValueError("with cache=, positions continue from cache.seqlens and padding is cache.leftpad: "
                                 "pass neither positions nor attn_bias")
            self._check_cache(cache, k)
            out = flash_attn_with_kvcache(q, cache.k, cache.v, k, v, cache_seqlens=cache.seqlens,
                                          cache_leftpad=cache.leftpad, block_table=cache.block_table,
                                          causal=self.causal, rotary=self.rotary, backend=self.backend)
            cache.seqlens += seqlen
            return self.o_proj(out.reshape(batch, seqlen, -1))
        out = api.attention(q, k, v, causal=self.causal, rotary=self.rotary, q_positions=positions,
                            k_positions=positions, attn_bias=attn_bias,
                            dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        return self.o_proj(out.reshape(batch, seqlen, -1))
