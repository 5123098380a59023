"""The public functional API."""
from __future__ import annotations

import dataclasses

import torch

from . import backends, checks, ops


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

    q: (batch, seqlen_q, nheads_q, head_dim); k, v: (batch, seqlen_k, nheads_kv, head_dim), with
    nheads_q divisible by nheads_kv (GQA/MQA). ``layout="bhsd"`` takes and returns
    (batch, nheads, seqlen, head_dim) instead; any strides work, only a last dim that is not
    contiguous is copied. ``causal`` aligns bottom-right when seqlen_q != seqlen_k; ``window_size``
    = (left, right) keys around the aligned diagonal, -1 = unbounded. Queries that see no key give 0.
    Returns out (same layout, dtype as q), plus lse (batch, nheads_q, seqlen_q) fp32 if return_lse.
    backend: "auto" (Triton on CUDA, the memory-efficient PyTorch path on CPU), "triton", "cuda"
    (the CUDA C++ kernels of csrc/, when the extension is built: fp16/bf16 on sm_80+, no dropout),
    "torch", "reference" (float64 naive, materializes scores).

    Positional encodings, applied to q and k inside the kernels (the user never sees a rotated
    tensor; gradients are w.r.t. the unencoded q and k): ``rotary=Rotary(...)`` or
    ``sinusoidal=Sinusoidal(...)`` (see flashattn_py.positional). ``q_positions`` / ``k_positions``:
    None (0..seqlen-1), an int or (batch,) tensor offset, or (batch, seqlen) position ids.
    ``pe_k_strategy``: "in_kernel" encodes q/k tiles as they are loaded, "prepass" encodes q and k
    once into scratch buffers (encoded K reused by the backward), "auto" picks by how often each
    streamed tile is loaded and by head_dim (docs/design.md).

    ``dropout_p``: attention dropout (weights dropped with this probability, the rest scaled by
    1 / (1 - p)); the mask comes from a counter-based RNG keyed by a seed drawn from torch's generator,
    regenerated in the backward, so ``torch.manual_seed`` reproduces it. Masks are per backend.

    Score modifications (flashattn_py.score_mods, in FlashAttention 2's order): ``softcap`` > 0 caps
    scores with ``softcap * tanh(s / softcap)`` (Gemma 2); ``alibi_slopes`` fp32 (nheads_q,) or
    (batch, nheads_q) adds ``-slope * |i + seqlen_k - seqlen_q - j|``; ``attn_bias`` broadcastable to
    (batch, nheads_q, seqlen_q, seqlen_k): float values are added to the scores, bool ones keep the
    True positions (the kernels read it through its strides: a broadcast key-padding mask costs no
    S x S tensor). A row whose every key is masked returns 0 (lse -inf), as elsewhere here.

    ``sinks``: attention sinks (GPT-OSS; FlashAttention 3's ``learnable_sink``), a float (nheads_q,) tensor:
    one learned logit per query head that joins every row's softmax normalizer with no value vector, so
    a row's weights sum to less than one (a row that sees no key returns 0). The returned lse includes
    it. Differentiable: sinks.grad = -sum over rows of exp(sink - lse) * rowsum(dO * O).
    A float ``attn_bias`` that requires grad gets its gradient (dS summed over the dimensions it is
    broadcast along), e.g. T5's learned relative position bias.

    ``alignment``: "bottom_right" (FlashAttention, default) or "top_left" (SDPA's ``is_causal``): where
    the causal diagonal, the window and ALiBi distances sit when seqlen_q != seqlen_k.

    ``seqused_k``: int32 (batch,) — sequence b attends to its first seqused_k[b] keys only (a padded
    batch of different lengths without a mask tensor); the causal diagonal sits bottom-right of each
    sequence's used keys. Packed variable-length batches: flashattn_py.flash_attn_varlen_func.

    ``num_splits`` (FlashAttention 3's): split-K of the forward over key ranges, merged through the lse
    (flashattn_py/split_k.py). 0 decides: on a GPU, without dropout, at most 64 queries per sequence and
    too few programs to fill the GPU, the keys are split (FlashAttention 2's dense forward does the
    same); 1 never splits; n > 1 forces n splits (no dropout). A schedule: the results are the same.

    ``deterministic``: as in FlashAttention. False (the default): the Triton backward is one fused pass
    that adds dQ up with fp32 atomics, whose order varies, so dq may differ in the last bits run to run.
    True: the atomic-free backward (dK/dV, then dQ, each recomputing P: about 1.4x the backward's
    matmul work), bit-identical gradients run to run. The other backends are deterministic either way.
    """
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    return run(q, k, v, layout=layout, backend=backend, return_lse=return_lse, causal=causal,
               softmax_scale=softmax_scale, window_size=window_size, rotary=rotary, sinusoidal=sinusoidal,
               q_positions=q_positions, k_positions=k_positions, pe_k_strategy=pe_k_strategy, dropout_p=dropout_p,
               softcap=softcap, alibi_slopes=alibi_slopes, attn_bias=attn_bias, alignment=alignment,
               seqused_k=seqused_k, num_splits=num_splits, sinks=sinks, deterministic=deterministic)


def run(q, k, v, *, layout: str, backend: str, return_lse: bool, num_splits: int = 0, deterministic: bool = False,
        **options):
    """Every entry point's common path: layout -> checks.attention_params(**options) -> backend
    -> the attention custom op (ops.py: torch.compile traces it, autograd differentiates it) -> layout.
    num_splits: 0 lets the op decide (split_k.py)."""
    q, k, v = (checks.to_bshd(t, layout, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    params = checks.attention_params(q, k, v, **options)
    params = dataclasses.replace(params, num_splits=checks.check_num_splits(num_splits, params),
                                 deterministic=deterministic)
    out, lse = run_params(q, k, v, params, backend)
    out = checks.to_bshd(out, layout, "out")
    return (out, lse) if return_lse else out


def run_params(q, k, v, params: checks.AttentionParams, backend: str):
    """(out, lse) of bshd q, k, v described by params, on `backend`."""
    impl = backends.select(backend, q.device, sinks=params.mods.sinks is not None)
    # Kernels index the head dim with unit stride; this is the one copy we allow (DESIGN.md).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return ops.attention(q, k, v, params, ops.backend_name(impl))
