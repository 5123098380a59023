"""Attention as two ``torch.library`` custom ops, so ``torch.compile(..., fullgraph=True)`` traces every
entry point (forward and backward) without graph breaks.

``flashattn_py::attention_forward`` and ``flashattn_py::attention_backward`` take only tensors and
primitive scalars: an `AttentionParams` (checks.py) is flattened into op arguments by `op_args` and
rebuilt inside the op by `params_from_op_args` -- the one place that conversion is written. The
backend is passed by name ("triton" | "torch" | "reference" | "cuda", "auto" resolved beforehand).

Outputs of the forward op: ``(out, lse, aux)``. A backend's ``scratch`` (autograd.py) is per backend
and of varying length, which a fake (meta) implementation cannot know, so the op keeps a fixed
third output instead:
- backend "triton": ``aux`` is the log-sum-exp in base-2 units, (batch, nheads_q, seqlen_q) fp32,
  which the Triton backward reads (docs/design.md, "Known limits"). The K encoded by the forward's
  positional-encoding pre-pass is *not* kept: the backward op re-encodes K from the user's k
  (pe_strategy.encoded_streams with k_encoded=None), one extra pass over K instead of a
  (batch, seqlen_k, nheads_kv, head_dim) tensor kept alive between forward and backward.
- every other backend keeps no scratch: ``aux`` is an empty (0,) fp32 tensor.
lse is not differentiable (as in FlashAttention), nor is aux.

The dropout seed is an op argument, drawn outside the ops by checks.attention_params, so the
backward op regenerates the forward's mask. Under torch.compile the draw stays in the graph (a new
seed each call, reproduced by torch.manual_seed; tests/test_compile.py).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from . import backends, score_mods
from .checks import AttentionParams, SequenceLengths
from .positional import Encoding, Rotary, Sinusoidal
from .score_mods import ScoreMods
from .split_k import split_count

# Positional encoding kinds, as op arguments.
PE_NONE, PE_ROTARY, PE_SINUSOIDAL = 0, 1, 2
# Backends whose forward keeps the base-2 lse as scratch[0] for the backward.
_LSE_LOG2_BACKENDS = ("triton",)


def backend_name(module) -> str:
    """The name of a backend module returned by backends.select ("flashattn_py.triton_backend" -> "triton")."""
    return module.__name__.rsplit(".", 1)[-1].removesuffix("_backend")


def op_args(params: AttentionParams, backend: str) -> dict:
    """AttentionParams (minus what q, k, v's shapes and dtype say) -> the ops' keyword arguments."""
    enc, mods, lengths = params.encoding, params.mods, params.lengths
    spec = None if enc is None else enc.spec
    rotary = isinstance(spec, Rotary)
    return dict(
        backend=backend,
        softmax_scale=params.softmax_scale,
        window_left=params.window[0],
        window_right=params.window[1],
        diagonal_offset=params.diagonal_offset,
        pe_kind=PE_NONE if enc is None else (PE_ROTARY if rotary else PE_SINUSOIDAL),
        pe_base=1.0 if spec is None else float(spec.base),
        pe_scale=float(spec.scale) if isinstance(spec, Sinusoidal) else 1.0,
        rotary_dim=0 if enc is None else enc.rotary_dim,
        rotary_interleaved=bool(rotary and spec.interleaved),
        rotary_cos=spec.cos if rotary else None,
        rotary_sin=spec.sin if rotary else None,
        q_positions=None if enc is None else enc.q_positions,
        k_positions=None if enc is None else enc.k_positions,
        pe_k_strategy=params.pe_k_strategy,
        dropout_p=params.dropout_p,
        dropout_seed=params.dropout_seed,
        softcap=mods.softcap,
        alibi_slopes=mods.alibi_slopes,
        attn_bias=mods.bias_source,
        sinks=mods.sinks,
        cu_seqlens_q=None if lengths is None else lengths.cu_seqlens_q,
        cu_seqlens_k=None if lengths is None else lengths.cu_seqlens_k,
        seqused_k=None if lengths is None else lengths.seqused_k,
        max_seqlen_q=params.seqlen_q,
        max_seqlen_k=params.seqlen_k,
        num_splits=params.num_splits,
        deterministic=params.deterministic,
    )


def params_from_op_args(q, k, *, backend, softmax_scale, window_left, window_right, diagonal_offset, pe_kind,
                        pe_base, pe_scale, rotary_dim, rotary_interleaved, rotary_cos, rotary_sin, q_positions,
                        k_positions, pe_k_strategy, dropout_p, dropout_seed, softcap, alibi_slopes,
                        attn_bias, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
                        max_seqlen_k, num_splits, deterministic) -> AttentionParams:
    """The inverse of `op_args`: the AttentionParams the backends read, from bshd q, k and the op arguments."""
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, lengths = k.shape[1], None
    if cu_seqlens_q is not None:  # packed: q, k are (1, total, heads, head_dim)
        lengths = SequenceLengths(cu_seqlens_q, cu_seqlens_k, total_q=q.shape[1], total_k=k.shape[1])
        batch, seqlen_q, seqlen_k = cu_seqlens_q.shape[0] - 1, max_seqlen_q, max_seqlen_k
    elif seqused_k is not None:
        lengths = SequenceLengths(seqused_k=seqused_k)
    encoding = None
    if pe_kind != PE_NONE:
        spec = (Rotary(base=pe_base, rotary_dim=rotary_dim, interleaved=rotary_interleaved, cos=rotary_cos,
                       sin=rotary_sin) if pe_kind == PE_ROTARY else Sinusoidal(base=pe_base, scale=pe_scale))
        encoding = Encoding(spec=spec, rotary_dim=rotary_dim, q_positions=q_positions, k_positions=k_positions)
    mods = score_mods.with_bias(ScoreMods(softcap, alibi_slopes, sinks=sinks), attn_bias,
                                (batch, nheads_q, seqlen_q, seqlen_k))
    return AttentionParams(
        batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q, nheads_kv=k.shape[2],
        head_dim=head_dim, softmax_scale=softmax_scale, window=(window_left, window_right), dtype=q.dtype,
        encoding=encoding, pe_k_strategy=pe_k_strategy, dropout_p=dropout_p, dropout_seed=dropout_seed,
        mods=mods if mods.active else score_mods.NONE, diagonal_offset=diagonal_offset, lengths=lengths,
        num_splits=num_splits, deterministic=deterministic,
    )


def _backend(name: str, device: torch.device, params: AttentionParams):
    """The backend module, or for per-sequence lengths on a backend without variable-length kernels
    the adapter that runs it sequence by sequence (varlen.PerSequence)."""
    impl = backends.select(name, device)
    if params.lengths is not None and not getattr(impl, "SUPPORTS_PACKED_SEQUENCES", False):
        from .varlen import PerSequence

        return PerSequence(impl)
    return impl


@contextlib.contextmanager
def autograd_inside_op():
    """Autograd usable inside an op's implementation (the reference backend's backward differentiates
    the float64 reference): the dispatcher runs custom-op implementations with the autograd dispatch
    keys excluded, which torch.enable_grad() alone does not undo."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView"):
        if hasattr(torch._C.DispatchKey, key):
            exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _lse_shape(q: torch.Tensor, cu_seqlens_q) -> tuple:
    """(batch, nheads_q, seqlen_q); packed sequences (q is (1, total_q, ...)): (nheads_q, total_q)."""
    return (q.shape[2], q.shape[1]) if cu_seqlens_q is not None else (q.shape[0], q.shape[2], q.shape[1])


def _aux_shape(q: torch.Tensor, backend: str, cu_seqlens_q) -> tuple:
    return _lse_shape(q, cu_seqlens_q) if backend in _LSE_LOG2_BACKENDS else (0,)


def _scratch(aux: torch.Tensor, backend: str) -> tuple:
    """The backend's scratch tuple rebuilt from the forward op's aux output."""
    return (aux,) if backend in _LSE_LOG2_BACKENDS else ()


def _laid_out_like(result: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """result with the strides torch.empty_like(template) has (what the fake implementations promise)."""
    if result.stride() == torch.empty_like(template, device="meta").stride():
        return result
    return torch.empty_like(template).copy_(result)


@torch.library.custom_op("flashattn_py::attention_forward", mutates_args=())
def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, softmax_scale: float, window_left: int,
    window_right: int, diagonal_offset: int, pe_kind: int, pe_base: float, pe_scale: float, rotary_dim: int,
    rotary_interleaved: bool, rotary_cos: torch.Tensor | None, rotary_sin: torch.Tensor | None,
    q_positions: torch.Tensor | None, k_positions: torch.Tensor | None, pe_k_strategy: str, dropout_p: float,
    dropout_seed: int, softcap: float, alibi_slopes: torch.Tensor | None, attn_bias: torch.Tensor | None,
    sinks: torch.Tensor | None, cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
    seqused_k: torch.Tensor | None, max_seqlen_q: int, max_seqlen_k: int, num_splits: int, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bshd q, k, v -> (out like q, lse fp32 (batch, nheads_q, seqlen_q), aux: see the module docstring).
    num_splits 0 is decided here, where the backend that launches the programs is known."""
    args = {name: value for name, value in locals().items() if name not in ("q", "k", "v")}
    params = params_from_op_args(q, k, **args)
    impl = _backend(backend, q.device, params)
    params = dataclasses.replace(params, num_splits=split_count(num_splits, params, q.device, impl))
    out, lse, scratch = impl.forward(q, k, v, params)
    if backend in _LSE_LOG2_BACKENDS:
        aux = scratch[0]
        if aux.untyped_storage().data_ptr() == lse.untyped_storage().data_ptr():
            aux = aux.clone()  # op outputs may not alias each other (an empty call returns one tensor twice)
    else:
        aux = torch.empty(0, dtype=torch.float32, device=q.device)
    return _laid_out_like(out, q), lse.contiguous(), aux.contiguous()


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, backend, *args):
    cu_seqlens_q = dict(zip(_SHARED, (backend, *args)))["cu_seqlens_q"]
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q), dtype=torch.float32)
    return torch.empty_like(q), lse, q.new_empty(_aux_shape(q, backend, cu_seqlens_q), dtype=torch.float32)


@torch.library.custom_op("flashattn_py::attention_backward", mutates_args=())
def attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    aux: torch.Tensor, backend: str, softmax_scale: float, window_left: int, window_right: int,
    diagonal_offset: int, pe_kind: int, pe_base: float, pe_scale: float, rotary_dim: int, rotary_interleaved: bool,
    rotary_cos: torch.Tensor | None, rotary_sin: torch.Tensor | None, q_positions: torch.Tensor | None,
    k_positions: torch.Tensor | None, pe_k_strategy: str, dropout_p: float, dropout_seed: int, softcap: float,
    alibi_slopes: torch.Tensor | None, attn_bias: torch.Tensor | None, sinks: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None, seqused_k: torch.Tensor | None,
    max_seqlen_q: int, max_seqlen_k: int, num_splits: int, deterministic: bool, bias_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) shaped, typed and laid out like q, k, v (w.r.t. the unencoded q and k), then dsinks
    (like sinks; (0,) without sinks) and dbias (like attn_bias; (0,) unless bias_grad). num_splits, the
    forward's schedule, does not change them."""
    args = {name: value for name, value in locals().items()
            if name not in ("dout", "q", "k", "v", "out", "lse", "aux", "bias_grad")}
    params = params_from_op_args(q, k, **args)
    impl = _backend(backend, q.device, params)
    dbias = None
    if bias_grad:
        # fp32 accumulator of the bias's own (broadcast) shape; a bias with one value per row is a
        # closed form of lse and delta (score_mods.key_broadcast_bias_grad), not kernel work.
        dbias = torch.zeros(attn_bias.shape, dtype=torch.float32, device=q.device)
    kernel_dbias = None if dbias is None or score_mods.bias_broadcast_along_keys(attn_bias) else dbias
    grads = impl.backward(dout, q, k, v, out, lse, _scratch(aux, backend), params, dbias=kernel_dbias)
    grads = tuple(_laid_out_like(g, t) for g, t in zip(grads, (q, k, v)))
    def empty():  # a fresh one each time: op outputs may not alias each other
        return torch.empty(0, dtype=torch.float32, device=q.device)

    dsinks = empty()
    if sinks is not None or (dbias is not None and kernel_dbias is None):
        delta = _row_delta(dout, out, params)
    if sinks is not None:
        dsinks = score_mods.sink_grad(sinks, lse, delta).to(sinks.dtype)
    if dbias is not None and kernel_dbias is None:
        dbias += score_mods.key_broadcast_bias_grad(sinks, lse, delta).sum_to_size(dbias.shape)
    return (*grads, dsinks, empty() if dbias is None else dbias.to(attn_bias.dtype))


def _row_delta(dout: torch.Tensor, out: torch.Tensor, params: AttentionParams) -> torch.Tensor:
    """delta = rowsum(dO * O) in fp32, shaped like the lse: (batch, nheads_q, seqlen_q), packed (nheads_q, total_q)."""
    delta = (dout.float() * out.float()).sum(-1)  # (batch, seqlen, heads)
    return delta[0].transpose(0, 1) if params.is_varlen else delta.transpose(1, 2)


@attention_backward.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, aux, backend, *args, **kwargs):
    shared = dict(zip(_SHARED, (backend, *args)), **kwargs)
    sinks, bias = shared["sinks"], shared["attn_bias"]
    bias_grad = args[len(_SHARED) - 1] if len(args) >= len(_SHARED) else shared.get("bias_grad", False)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(0, dtype=torch.float32) if sinks is None else torch.empty_like(sinks),
            bias.new_empty(bias.shape) if bias_grad else q.new_empty(0, dtype=torch.float32))


# Names of the scalar/optional arguments shared by both ops, in schema order.
_SHARED = ("backend", "softmax_scale", "window_left", "window_right", "diagonal_offset", "pe_kind", "pe_base",
           "pe_scale", "rotary_dim", "rotary_interleaved", "rotary_cos", "rotary_sin", "q_positions", "k_positions",
           "pe_k_strategy", "dropout_p", "dropout_seed", "softcap", "alibi_slopes", "attn_bias", "sinks",
           "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "max_seqlen_q", "max_seqlen_k", "num_splits",
           "deterministic")
_SHARED_TENSORS = ("rotary_cos", "rotary_sin", "q_positions", "k_positions", "alibi_slopes", "attn_bias", "sinks",
                   "cu_seqlens_q", "cu_seqlens_k", "seqused_k")


def _setup_context(ctx, inputs, output):
    q, k, v, *shared = inputs
    shared = dict(zip(_SHARED, shared))
    out, lse, aux = output
    ctx.save_for_backward(q, k, v, out, lse, aux, *(shared[name] for name in _SHARED_TENSORS))
    ctx.scalars = {name: value for name, value in shared.items() if name not in _SHARED_TENSORS}
    ctx.mark_non_differentiable(lse, aux)


def _backward(ctx, dout, _dlse, _daux):
    q, k, v, out, lse, aux, *tensors = ctx.saved_tensors
    shared = dict(ctx.scalars, **dict(zip(_SHARED_TENSORS, tensors)))
    # Only a float bias can require grad (checks.py); a boolean mask never does.
    bias_grad = shared["attn_bias"] is not None and ctx.needs_input_grad[3 + _SHARED.index("attn_bias")]
    dq, dk, dv, dsinks, dbias = attention_backward(dout, q, k, v, out, lse, aux, **shared, bias_grad=bias_grad)
    grads = dict(attn_bias=dbias if bias_grad else None, sinks=dsinks if shared["sinks"] is not None else None)
    return (dq, dk, dv) + tuple(grads.get(name) for name in _SHARED)


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, params: AttentionParams, backend: str):
    """(out, lse) of bshd q, k, v through the forward op (differentiable w.r.t. q, k, v)."""
    out, lse, _aux = attention_forward(q, k, v, **op_args(params, backend))
    return out, lse

