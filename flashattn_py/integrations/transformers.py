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
"""
from __future__ import annotations

import functools

import torch

from .. import api

# transformers treats any implementation name containing "flash" as a FlashAttention kernel (unpadding,
# varlen calls, a kernel looked up on the Hub), so ours is not named "flashattn_py" there.
NAME = "fa_py"


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
    # As transformers' sdpa: a given mask already holds causality, padding and the sliding window.
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    window_size = (-1, -1)
    if is_causal and kv_length > q_length:
        # Prefill into an empty static cache: the keys past q_length are unused slots (as sdpa does).
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    if is_causal and sliding_window is not None:
        # Query i sees keys i - sliding_window < j <= i (transformers' sliding_window_overlay).
        window_size = (int(sliding_window) - 1, 0)
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
