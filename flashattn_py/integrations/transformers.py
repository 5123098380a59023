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

Model-specific keywords: ``s_aux`` (GPT-OSS's learned attention sinks, one logit per query head) runs
as our ``sinks=``; ``position_bias`` (T5's learned relative position bias, added to the unscaled scores,
the mask kept apart) runs as ``attn_bias``, combined with the mask, and gets its gradient. Any other
keyword that could change the result is refused, naming it and the module (`_check_kwargs`): a
silently ignored argument gives plausible, wrong logits. ``output_attentions=True`` warns once (no
weights are materialized, as with transformers' sdpa / flash integrations).

transformers gives a registered attention function no hook at model load, so head dims are checked at
each call: up to 256 (params.MAX_HEAD_DIM), value's equal to query's; other models should use
attn_implementation="sdpa".
"""
from __future__ import annotations

import functools
import warnings

import torch

from .. import api
from ..params import MAX_HEAD_DIM
from ..varlen import flash_attn_varlen_func

# transformers treats any implementation name containing "flash" as a FlashAttention kernel (unpadding,
# varlen calls, a kernel looked up on the Hub), so ours is not named "flashattn_py" there.
NAME = "fa_py"

# What DataCollatorWithFlattening(return_flash_attn_kwargs=True) adds to the model's kwargs.
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

# Keywords that reach the attention function without changing its result: accepted and not read.
# Surveyed in transformers 5.25: the keywords of every attention_interface(...) call in
# models/*/modeling_*.py, and what TransformersKwargs / the decoder layers forward to it in **kwargs.
HARMLESS_KWARGS = frozenset({
    # Positions are already in q and k (the model applied RoPE); a packed row's mask is built from them
    # by transformers before the call, and with the varlen kwargs the boundaries come from those.
    "position_ids",
    # Cache bookkeeping: the model updated its cache before the call; key / value already hold it.
    "use_cache", "cache_position", "cache", "past_key_value", "past_key_values", "layer_idx",
    # Requests for other outputs or the loss, read by the model, not by attention.
    "output_hidden_states", "output_router_logits", "return_dict", "num_items_in_batch",
    # Sequence index of each token of a packed batch, read by Mamba-style layers; attention gets the
    # boundaries from the varlen kwargs or the mask.
    "seq_idx",
})
# Keywords attention_forward reads from **kwargs: a warning once (output_attentions; no weights are
# returned, as with transformers' sdpa / flash integrations), sinks, learned relative position bias,
# packed sequences. Any keyword in neither list, with a value other than None, is refused (_check_kwargs).
# deterministic: ModernBERT's FlashAttention flag, passed on (README, `deterministic`).
HANDLED_KWARGS = frozenset({"output_attentions", "s_aux", "position_bias", "deterministic", *VARLEN_KWARGS})

_warned: set[str] = set()  # messages already warned in this process (a model calls us once per layer)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)  # the model's attention module, past us


def _check_kwargs(module: torch.nn.Module, kwargs: dict) -> None:
    """Refuse keywords we do not implement: ignoring one would give wrong logits with no error."""
    # None is how transformers passes a feature a layer does not use (s_aux=None in MiMo's full layers).
    unknown = sorted(name for name, value in kwargs.items()
                     if value is not None and name not in HARMLESS_KWARGS and name not in HANDLED_KWARGS)
    if unknown:
        raise TypeError(f"{type(module).__name__} passed {', '.join(map(repr, unknown))} to the attention function, "
                        f"which attn_implementation={NAME!r} does not implement (ignoring it would change the "
                        "result); use attn_implementation='sdpa' or 'eager' for this model")
    if kwargs.get("output_attentions"):
        _warn_once(f"attn_implementation={NAME!r} does not compute attention weights: output_attentions=True "
                   "returns none; use attn_implementation='eager' to get them")


def _check_head_dims(module: torch.nn.Module, query: torch.Tensor, value: torch.Tensor) -> None:
    """The kernels' head-dim range, refused with the model's name (transformers has no load-time hook)."""
    head_dim, value_head_dim = query.shape[-1], value.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{type(module).__name__} has head_dim {head_dim}; attn_implementation={NAME!r} takes head "
                         f"dims up to {MAX_HEAD_DIM}: use attn_implementation='sdpa' for this model")
    if value_head_dim != head_dim:
        raise ValueError(f"{type(module).__name__} has value head_dim {value_head_dim} != query head_dim {head_dim}; "
                         f"attn_implementation={NAME!r} needs them equal: use attn_implementation='sdpa' for this "
                         "model")


def _bias_with_mask(position_bias: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One additive bias from T5's position_bias and transformers' mask (bool keep-mask or additive
    float). Masked scores become -inf, which our kernels treat as masked (a row with none left gives 0),
    and torch.where sends the bias gradient only to the kept positions. The result is a (batch, heads,
    seqlen_q, seqlen_k) tensor, as transformers' sdpa builds for this model."""
    if attention_mask is None:
        return position_bias
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, float("-inf"))
    return position_bias + attention_mask


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
    (batch, kv_heads, seqlen_k, head_dim) -> (output (batch, seqlen_q, heads, head_dim), no weights).
    s_aux (in kwargs): GPT-OSS's sinks, float (heads,); position_bias (in kwargs): T5's additive bias,
    broadcastable to (batch, heads, seqlen_q, seqlen_k), without the mask."""
    _check_kwargs(module, kwargs)
    _check_head_dims(module, query, value)
    sinks, position_bias = kwargs.get("s_aux"), kwargs.get("position_bias")
    deterministic = bool(kwargs.get("deterministic") or False)
    q_length, kv_length = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if all(kwargs.get(name) is not None for name in VARLEN_KWARGS):
        if position_bias is not None:
            raise ValueError(f"{type(module).__name__} passed position_bias with packed sequences (cu_seq_lens_q/k); "
                             f"attn_implementation={NAME!r} takes no bias on packed rows: pad the batch instead")
        # The sequence boundaries replace the mask; causal and the window apply within each sequence.
        is_causal = bool(is_causal)
        out = _packed_attention(query, key, value, kwargs, causal=is_causal, softmax_scale=scaling,
                                window_size=_sliding_window(is_causal, sliding_window), dropout_p=float(dropout),
                                softcap=float(softcap or 0.0), learnable_sink=sinks, deterministic=deterministic,
                                backend=backend)
        return out, None
    # As transformers' sdpa: a given mask already holds causality, padding and the sliding window.
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    if is_causal and kv_length > q_length:
        # Prefill into an empty static cache: the keys past q_length are unused slots (as sdpa does).
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        if position_bias is not None and position_bias.shape[-1] == kv_length:
            position_bias = position_bias[..., :q_length]
    window_size = _sliding_window(is_causal, sliding_window)
    bias, bias_name = attention_mask, "attention_mask"
    if position_bias is not None:  # T5: the mask is not in position_bias; causal (no mask) still applies
        bias, bias_name = _bias_with_mask(position_bias, attention_mask), "position_bias"
    out = api.run(query, key, value, layout="bhsd", backend=backend,
                  return_lse=False, causal=is_causal, softmax_scale=scaling, window_size=window_size,
                  dropout_p=float(dropout), softcap=float(softcap or 0.0), attn_bias=bias,
                  bias_name=bias_name, alignment="top_left", sinks=sinks, deterministic=deterministic)
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
