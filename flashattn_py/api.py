"""The public functional API: `attention`, and `run`, the path every dense entry point takes to the op."""
from __future__ import annotations

import torch

from . import backends, ops
from .validation.attention import attention_params, to_bshd


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    return_lse: bool = False,
    backend: str = "auto",
    layout: str = "bshd",
    rotary=None,
    sinusoidal=None,
    q_positions=None,
    k_positions=None,
    pe_k_strategy: str = "auto",
    deterministic: bool = False,
    dropout_p: float = 0.0,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    alignment: str = "bottom_right",
    seqused_k: torch.Tensor | None = None,
    num_splits: int = 0,
    sinks: torch.Tensor | None = None,
):
    """Exact attention ``softmax(softmax_scale * q k^T + mask) v``, fused and memory-linear in seqlen.
    Every option in detail: docs/attention.md.

    Args:
        q: ``[B, Sq, Hq, D]`` float16 / bfloat16 / float32 (``[B, Hq, Sq, D]`` with ``layout="bhsd"``);
            any strides, D in [1, 256].
        k, v: ``[B, Sk, Hkv, D]``, q's dtype and device; Hq divisible by Hkv (GQA / MQA).
        causal: mask keys after the query, aligned bottom-right when Sq != Sk (see ``alignment``).
        softmax_scale: default ``1 / sqrt(D)``.
        window_size: ``(left, right)`` keys around the aligned diagonal; -1 = unbounded.
        return_lse: also return the log-sum-exp.
        backend: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda", "torch" or "reference".
        layout: "bshd" or "bhsd", for q, k, v and the output.
        rotary, sinusoidal: a ``Rotary`` / ``Sinusoidal`` encoding applied to q and k inside the kernels.
        q_positions, k_positions: None (0..S-1), an int or ``[B]`` int offset, or ``[B, S]`` int position ids.
        pe_k_strategy: "auto", "in_kernel" or "prepass": where K is encoded.
        deterministic: bit-identical gradients run to run (the atomic-free backward).
        dropout_p: attention dropout probability, in [0, 1).
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``.
        attn_bias: broadcastable to ``[B, Hq, Sq, Sk]``: float (added to the scores, differentiable) or
            bool (True = attend).
        alignment: "bottom_right" (FlashAttention) or "top_left" (SDPA's ``is_causal``).
        seqused_k: int32 ``[B]``: sequence b attends to its first ``seqused_k[b]`` keys.
        num_splits: split-K of the forward; 0 decides, 1 never splits.
        sinks: float ``[Hq]``: one learned logit per query head in every row's normalizer (GPT-OSS).

    Returns:
        out: like q (shape, layout, dtype). With ``return_lse``: ``(out, lse)``, lse float32 ``[B, Hq, Sq]``
        (natural log; sinks included; -inf for a row that sees no key, whose output is 0).
    """
    return run(q, k, v, layout=layout, backend=backend, return_lse=return_lse, causal=causal,
               softmax_scale=softmax_scale, window_size=window_size, rotary=rotary, sinusoidal=sinusoidal,
               q_positions=q_positions, k_positions=k_positions, pe_k_strategy=pe_k_strategy, dropout_p=dropout_p,
               softcap=softcap, alibi_slopes=alibi_slopes, attn_bias=attn_bias, alignment=alignment,
               seqused_k=seqused_k, num_splits=num_splits, sinks=sinks, deterministic=deterministic)


def run(q, k, v, *, layout: str, backend: str, return_lse: bool, **options):
    """Every dense entry point's path: layout -> validation (options: attention_params's) -> one backend
    selection -> the attention custom op (ops.py: torch.compile traces it, autograd differentiates it)
    -> layout. num_splits defaults to 0 here: the op decides (backends/split_k.py)."""
    q, k, v = (to_bshd(t, layout, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    params = attention_params(q, k, v, **{"num_splits": 0, **options})
    chosen = backends.select(backend, q.device, sinks=params.mods.sinks is not None)
    out, lse, _ = ops.attention_forward(*ops.unit_stride(q, k, v), **ops.op_args(params, chosen.name))
    out = to_bshd(out, layout, "out")
    return (out, lse) if return_lse else out
