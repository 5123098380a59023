"""HuggingFace transformers integration: ``attn_implementation="fa_py"``.

    import flashattn_py.integrations.transformers as fa_hf
    fa_hf.register()
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="fa_py")

`register()` adds two entries under the same name, both needed: the attention function to
transformers' ``AttentionInterface``, and a mask function to its ``AttentionMaskInterface`` (for a
name missing there transformers builds no mask at all, and causal / padding masking would silently be
lost). The mask function is transformers' own ``sdpa_mask``: a boolean (batch, 1, seqlen_q, seqlen_k)
mask, True = attend, or None when ``is_causal`` alone describes it (no padding) -- the same contract
as "sdpa", which our kernels take as an attention bias read through its strides (no copy, no float
S x S tensor, no repeat of K/V for GQA).

Semantics follow transformers' "sdpa" integration: a mask (boolean keep-mask or additive float) is
applied as given (top-left aligned, as torch's SDPA); without a mask, ``is_causal`` (the call's, else
``module.is_causal``) applies for more than one query. ``dropout`` is what the module passes
(``attention_dropout`` in training, else 0), ``scaling`` the softmax scale, ``sliding_window`` and
``softcap`` (Gemma 2's logit softcapping) are taken from kwargs when present.

Padding-free batches (several sequences packed into one row, as ``DataCollatorWithFlattening``
makes them): with ``return_flash_attn_kwargs=True`` the model receives ``cu_seq_lens_q/k`` and
``max_length_q/k``, and we run ``flash_attn_varlen_func`` on them, so attention costs the sum of the
sequences' squares and transformers' mask is not read (its flash implementations do the same). With
position_ids alone, transformers makes a block-diagonal mask of the row, which we apply as any
mask: right, but read for every tile of the full row.
"""
from __future__ import annotations

import functools

import torch

from .. import api
from ..varlen import flash_attn_varlen_func

# transformers treats any implementation name containing "flash" as a FlashAttention kernel (unpadding,
# varlen calls, a kernel looked up on the Hub), so ours is not named "flashattn_py" there.
NAME = "fa_py"

# What DataCollatorWithFlattening(return_flash_attn_kwargs=True) adds to the model's kwargs.
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _sliding_window(is_causal: bool, sliding_window: int | None) -> tuple[int, int]:
    """Our window_size for transformers' causal sliding window: query i sees keys
    i - sliding_window < j <= i (transformers' sliding_window_overlay)."""
    return (int(sliding_window) - 1, 0) if is_causal and sliding_window is not None else (-1, -1)


def _packed_attention(query, key, value, kwargs, **options) -> torch.Tensor:
    """Sequences packed along the rows (bhsd, usually batch 1) as described by transformers' varlen
    kwargs -> output (batch, seqlen_q, heads, head_dim). The row views are read in place."""
    cu_q, cu_k, max_q, max_k = (kwargs[name] for name in VARLEN_KWARGS)
    q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (query, key, value))  # (total, heads, head_dim)
    out = flash_attn_varlen_func(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k),
                                 **options)
    return out.unflatten(0, (query.shape[0], query.shape[2]))


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    *,
    backend: str = "auto",
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query (batch, heads, seqlen_q, head_dim), key/value
    (batch, kv_heads, seqlen_k, head_dim) -> (output (batch, seqlen_q, heads, head_dim), no weights)."""
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError("flashattn_py attention does not take a learned position_bias (T5-style); use "
                                  "attn_implementation='sdpa' or 'eager' for this model")
    q_length, kv_length = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if all(kwargs.get(name) is not None for name in VARLEN_KWARGS):
        # The sequence boundaries replace the mask; causal and the window apply within each sequence.
        is_causal = bool(is_causal)
        out = _packed_attention(query, key, value, kwargs, causal=is_causal, softmax_scale=scaling,
                                window_size=_sliding_window(is_causal, sliding_window), dropout_p=float(dropout),
                                softcap=float(softcap or 0.0), backend=backend)
        return out, None
    # As transformers' sdpa: a given mask already holds causality, padding and the sliding window.
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    if is_causal and kv_length > q_length:
        # Prefill into an empty static cache: the keys past q_length are unused slots (as sdpa does).
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    window_size = _sliding_window(is_causal, sliding_window)
    out = api.run(query, key, value, layout="bhsd", backend=backend,
                  return_lse=False, causal=is_causal, softmax_scale=scaling, window_size=window_size,
                  dropout_p=float(dropout), softcap=float(softcap or 0.0), attn_bias=attention_mask,
                  bias_name="attention_mask", alignment="top_left")
    # out has q's memory layout; transformers' projections give bshd memory, so this is usually no copy.
    return out.transpose(1, 2).contiguous(), None


def register(backend: str = "auto") -> None:
    """Make ``attn_implementation="fa_py"`` available to every transformers model, running on
    ``backend`` (flashattn_py.attention's: "auto", "triton", "cuda", "torch", "reference")."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("flashattn_py.integrations.transformers needs transformers with AttentionInterface and "
                          "AttentionMaskInterface (>= 4.53): pip install -U transformers") from err
    AttentionInterface.register(NAME, attention_forward if backend == "auto"
                                else functools.partial(attention_forward, backend=backend))
    AttentionMaskInterface.register(NAME, sdpa_mask)
