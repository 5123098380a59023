"""Attention as two ``torch.library`` custom ops, so ``torch.compile(..., fullgraph=True)`` traces every
entry point (forward and backward) without graph breaks, and their autograd.

``flashattn_py::attention_forward`` and ``flashattn_py::attention_backward`` take only tensors and
primitive scalars: an `AttentionParams` is flattened into op arguments and rebuilt inside the op. The
argument list is written once, `FIELDS`: each field's name, schema type and how it is read from the
params; the ops' schemas, `op_args` and the names the autograd saves are generated from it, and
`params_from_op_args` is its one inverse. The backend travels by name, chosen once per call by
`backends.select` before the op.

Outputs of the forward op: ``(out, lse, aux)``. A backend's ``scratch`` (backends/interface.py) is per
backend and of varying length, which a fake (meta) implementation cannot know, so the op keeps a fixed
third output instead:
- a backend with ``keeps_lse_log2`` (Triton): ``aux`` is the log-sum-exp in base-2 units, (batch,
  nheads_q, seqlen_q) fp32, which its backward reads (docs/design.md, "Known limits"). The K encoded by
  the forward's positional-encoding pre-pass is *not* kept: the backward re-encodes K from the user's
  k, one extra pass over K instead of a (batch, seqlen_k, nheads_kv, head_dim) tensor kept alive
  between forward and backward.
- every other backend keeps no scratch: ``aux`` is an empty (0,) fp32 tensor.
lse is not differentiable (as in FlashAttention), nor is aux.

The dropout seed is an op argument, drawn outside the ops by the validation, so the backward op
regenerates the forward's mask. Under torch.compile the draw stays in the graph (a new seed each call,
reproduced by torch.manual_seed; tests/test_compile.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import torch

from . import backends
from .backends.split_k import split_count
from .params import NO_SCORE_MODS, AttentionParams, Encoding, Rotary, ScoreMods, SequenceLengths, Sinusoidal
from .semantics import score_mods

# Positional encoding kinds, as op arguments.
PE_NONE, PE_ROTARY, PE_SINUSOIDAL = 0, 1, 2


def _spec(params: AttentionParams):
    return None if params.encoding is None else params.encoding.spec


def _lengths(params: AttentionParams, name: str):
    return None if params.lengths is None else getattr(params.lengths, name)


def _pe_kind(params: AttentionParams) -> int:
    spec = _spec(params)
    return PE_NONE if spec is None else PE_ROTARY if isinstance(spec, Rotary) else PE_SINUSOIDAL


def _rotary_table(params: AttentionParams, name: str):
    spec = _spec(params)
    return getattr(spec, name) if isinstance(spec, Rotary) else None


class Field(NamedTuple):
    name: str
    schema: str  # its type in the op schema (SymInt: an int torch.compile may keep symbolic, e.g. the dropout seed)
    read: Callable[[AttentionParams], Any]  # its value for a call's params


# Every op argument after the tensors (q, k, v): AttentionParams, minus what q, k, v's shapes and dtype say.
FIELDS = (
    Field("softmax_scale", "float", lambda p: p.softmax_scale),
    Field("window_left", "SymInt", lambda p: p.window[0]),
    Field("window_right", "SymInt", lambda p: p.window[1]),
    Field("diagonal_offset", "SymInt", lambda p: p.diagonal_offset),
    Field("pe_kind", "SymInt", _pe_kind),
    Field("pe_base", "float", lambda p: 1.0 if _spec(p) is None else float(_spec(p).base)),
    Field("pe_scale", "float", lambda p: float(_spec(p).scale) if isinstance(_spec(p), Sinusoidal) else 1.0),
    Field("rotary_dim", "SymInt", lambda p: 0 if p.encoding is None else p.encoding.rotary_dim),
    Field("rotary_interleaved", "bool", lambda p: isinstance(_spec(p), Rotary) and bool(_spec(p).interleaved)),
    Field("rotary_cos", "Tensor?", lambda p: _rotary_table(p, "cos")),
    Field("rotary_sin", "Tensor?", lambda p: _rotary_table(p, "sin")),
    Field("q_positions", "Tensor?", lambda p: None if p.encoding is None else p.encoding.q_positions),
    Field("k_positions", "Tensor?", lambda p: None if p.encoding is None else p.encoding.k_positions),
    Field("pe_k_strategy", "str", lambda p: p.pe_k_strategy),
    Field("dropout_p", "float", lambda p: p.dropout_p),
    Field("dropout_seed", "SymInt", lambda p: p.dropout_seed),
    Field("softcap", "float", lambda p: p.mods.softcap),
    Field("alibi_slopes", "Tensor?", lambda p: p.mods.alibi_slopes),
    Field("attn_bias", "Tensor?", lambda p: p.mods.bias_source),
    Field("sinks", "Tensor?", lambda p: p.mods.sinks),
    Field("cu_seqlens_q", "Tensor?", lambda p: _lengths(p, "cu_seqlens_q")),
    Field("cu_seqlens_k", "Tensor?", lambda p: _lengths(p, "cu_seqlens_k")),
    Field("seqused_k", "Tensor?", lambda p: _lengths(p, "seqused_k")),
    Field("max_seqlen_q", "SymInt", lambda p: p.seqlen_q),
    Field("max_seqlen_k", "SymInt", lambda p: p.seqlen_k),
    Field("num_splits", "SymInt", lambda p: p.num_splits),
    Field("deterministic", "bool", lambda p: p.deterministic),
)
NAMES = ("backend",) + tuple(f.name for f in FIELDS)  # the shared arguments, in schema order
TENSOR_NAMES = tuple(f.name for f in FIELDS if f.schema == "Tensor?")
_SHARED_SCHEMA = ", ".join(["str backend"] + [f"{f.schema} {f.name}" for f in FIELDS])


def op_args(params: AttentionParams, backend: str) -> dict:
    """The ops' keyword arguments (after q, k, v) for a call described by params, on `backend` (by name)."""
    return dict(backend=backend, **{f.name: f.read(params) for f in FIELDS})


def params_from_op_args(q, k, args: dict) -> AttentionParams:
    """The inverse of `op_args`: the AttentionParams the backends read, from bshd q, k and the op arguments."""
    a = args
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, lengths = k.shape[1], None
    if a["cu_seqlens_q"] is not None:  # packed: q, k are (1, total, heads, head_dim)
        lengths = SequenceLengths(a["cu_seqlens_q"], a["cu_seqlens_k"], total_q=q.shape[1], total_k=k.shape[1])
        batch, seqlen_q, seqlen_k = a["cu_seqlens_q"].shape[0] - 1, a["max_seqlen_q"], a["max_seqlen_k"]
    elif a["seqused_k"] is not None:
        lengths = SequenceLengths(seqused_k=a["seqused_k"])
    encoding = None
    if a["pe_kind"] != PE_NONE:
        spec = (Rotary(base=a["pe_base"], rotary_dim=a["rotary_dim"], interleaved=a["rotary_interleaved"],
                       cos=a["rotary_cos"], sin=a["rotary_sin"]) if a["pe_kind"] == PE_ROTARY
                else Sinusoidal(base=a["pe_base"], scale=a["pe_scale"]))
        encoding = Encoding(spec=spec, rotary_dim=a["rotary_dim"], q_positions=a["q_positions"],
                            k_positions=a["k_positions"])
    mods = score_mods.with_bias(ScoreMods(a["softcap"], a["alibi_slopes"], sinks=a["sinks"]), a["attn_bias"],
                                (batch, nheads_q, seqlen_q, seqlen_k))
    return AttentionParams(
        batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q, nheads_kv=k.shape[2],
        head_dim=head_dim, softmax_scale=a["softmax_scale"], window=(a["window_left"], a["window_right"]),
        dtype=q.dtype, encoding=encoding, pe_k_strategy=a["pe_k_strategy"], dropout_p=a["dropout_p"],
        dropout_seed=a["dropout_seed"], mods=mods if mods.active else NO_SCORE_MODS,
        diagonal_offset=a["diagonal_offset"], lengths=lengths, num_splits=a["num_splits"],
        deterministic=a["deterministic"],
    )


def _named(shared: tuple) -> tuple[dict, bool]:
    """The ops' arguments after the tensors, by name, and the backward's trailing bias_grad (False when the
    dispatcher leaves the default out)."""
    return dict(zip(NAMES, shared)), bool(shared[len(NAMES)]) if len(shared) > len(NAMES) else False


def _lse_shape(q: torch.Tensor, cu_seqlens_q) -> tuple:
    """(batch, nheads_q, seqlen_q); packed sequences (q is (1, total_q, ...)): (nheads_q, total_q)."""
    return (q.shape[2], q.shape[1]) if cu_seqlens_q is not None else (q.shape[0], q.shape[2], q.shape[1])


def _laid_out_like(result: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """result with the strides torch.empty_like(template) has (what the fake implementations promise)."""
    if result.stride() == torch.empty_like(template, device="meta").stride():
        return result
    return torch.empty_like(template).copy_(result)


def _empty(q: torch.Tensor) -> torch.Tensor:
    """A fresh (0,) fp32 placeholder output (op outputs may not alias each other)."""
    return torch.empty(0, dtype=torch.float32, device=q.device)


@torch.library.custom_op("flashattn_py::attention_forward", mutates_args=(),
                         schema=f"(Tensor q, Tensor k, Tensor v, {_SHARED_SCHEMA}) -> (Tensor, Tensor, Tensor)")
def attention_forward(q, k, v, *shared):
    """bshd q, k, v -> (out like q, lse fp32 (batch, nheads_q, seqlen_q), aux: see the module docstring).
    num_splits 0 is decided here, where the backend that launches the programs is known."""
    args = dict(zip(NAMES, shared))
    params = params_from_op_args(q, k, args)
    backend = backends.registered(args["backend"])
    params = dataclasses.replace(params, num_splits=split_count(params.num_splits, params, q.device, backend))
    out, lse, scratch = backends.for_lengths(backend, params).forward(q, k, v, params)
    aux = _empty(q)
    if backend.keeps_lse_log2:
        aux = scratch[0]
        if aux.untyped_storage().data_ptr() == lse.untyped_storage().data_ptr():
            aux = aux.clone()  # op outputs may not alias each other (an empty call returns one tensor twice)
    return _laid_out_like(out, q), lse.contiguous(), aux.contiguous()


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, *shared):
    args = dict(zip(NAMES, shared))
    lse_shape = _lse_shape(q, args["cu_seqlens_q"])
    aux_shape = lse_shape if backends.registered(args["backend"]).keeps_lse_log2 else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32), q.new_empty(aux_shape,
                                                                                         dtype=torch.float32)


@torch.library.custom_op(
    "flashattn_py::attention_backward", mutates_args=(),
    schema=(f"(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor aux, {_SHARED_SCHEMA}, "
            "bool bias_grad=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"))
def attention_backward(dout, q, k, v, out, lse, aux, *shared):
    """(dq, dk, dv) shaped, typed and laid out like q, k, v (w.r.t. the unencoded q and k), then dsinks
    (like sinks; (0,) without sinks) and dbias (like attn_bias; (0,) unless bias_grad). num_splits, the
    forward's schedule, does not change them."""
    args, bias_grad = _named(shared)
    params = params_from_op_args(q, k, args)
    backend = backends.registered(args["backend"])
    attn_bias, sinks = args["attn_bias"], args["sinks"]
    dbias = None
    if bias_grad:
        # fp32 accumulator of the bias's own (broadcast) shape; a bias with one value per row is a
        # closed form of lse and delta (score_mods.key_broadcast_bias_grad), not kernel work.
        dbias = torch.zeros(attn_bias.shape, dtype=torch.float32, device=q.device)
    kernel_dbias = None if dbias is None or score_mods.bias_broadcast_along_keys(attn_bias) else dbias
    scratch = (aux,) if backend.keeps_lse_log2 else ()
    grads = backends.for_lengths(backend, params).backward(dout, q, k, v, out, lse, scratch, params,
                                                           dbias=kernel_dbias)
    grads = tuple(_laid_out_like(g, t) for g, t in zip(grads, (q, k, v)))
    dsinks = _empty(q)
    if sinks is not None or (dbias is not None and kernel_dbias is None):
        delta = _row_delta(dout, out, params)
    if sinks is not None:
        dsinks = score_mods.sink_grad(sinks, lse, delta).to(sinks.dtype)
    if dbias is not None and kernel_dbias is None:
        dbias += score_mods.key_broadcast_bias_grad(sinks, lse, delta).sum_to_size(dbias.shape)
    return (*grads, dsinks, _empty(q) if dbias is None else dbias.to(attn_bias.dtype))


def _row_delta(dout: torch.Tensor, out: torch.Tensor, params: AttentionParams) -> torch.Tensor:
    """delta = rowsum(dO * O) in fp32, shaped like the lse: (batch, nheads_q, seqlen_q), packed (nheads_q, total_q)."""
    delta = (dout.float() * out.float()).sum(-1)  # (batch, seqlen, heads)
    return delta[0].transpose(0, 1) if params.is_varlen else delta.transpose(1, 2)


@attention_backward.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, aux, *shared):
    args, bias_grad = _named(shared)
    sinks, bias = args["sinks"], args["attn_bias"]
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(0, dtype=torch.float32) if sinks is None else torch.empty_like(sinks),
            bias.new_empty(bias.shape) if bias_grad else q.new_empty(0, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    q, k, v, *shared = inputs
    args = dict(zip(NAMES, shared))
    out, lse, aux = output
    ctx.save_for_backward(q, k, v, out, lse, aux, *(args[name] for name in TENSOR_NAMES))
    ctx.scalars = {name: value for name, value in args.items() if name not in TENSOR_NAMES}
    ctx.mark_non_differentiable(lse, aux)


def _backward(ctx, dout, _dlse, _daux):
    q, k, v, out, lse, aux, *tensors = ctx.saved_tensors
    args = dict(ctx.scalars, **dict(zip(TENSOR_NAMES, tensors)))
    # Only a float bias can require grad (validation); a boolean mask never does.
    bias_grad = args["attn_bias"] is not None and ctx.needs_input_grad[3 + NAMES.index("attn_bias")]
    dq, dk, dv, dsinks, dbias = attention_backward(dout, q, k, v, out, lse, aux, *(args[n] for n in NAMES),
                                                   bias_grad)
    grads = dict(attn_bias=dbias if bias_grad else None, sinks=dsinks if args["sinks"] is not None else None)
    return (dq, dk, dv) + tuple(grads.get(name) for name in NAMES)


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, params: AttentionParams, backend: backends.Backend):
    """(out, lse) of bshd q, k, v described by params, through the forward op (differentiable w.r.t. q, k,
    v): the path of the entry points that build their params themselves (packed sequences, context
    parallelism); api.run is the dense one."""
    out, lse, _ = attention_forward(*unit_stride(q, k, v), **op_args(params, backend.name))
    return out, lse


def unit_stride(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The kernels index the head dim with unit stride: a tensor without it is copied (the one copy the
    entry points allow; any other stride is read as it is)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


class _InferenceOnly(torch.autograd.Function):
    """Passes an inference-only call's output through; its backward says why there is none."""

    @staticmethod
    def forward(ctx, why, out, *inputs):
        ctx.why = why
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(ctx.why)


def inference_only(out: torch.Tensor, inputs, why: str) -> torch.Tensor:
    """out, joined to the graph of `inputs` (when grad mode is on and one of them requires grad) through
    a backward raising NotImplementedError(why): a training step through a call without a backward
    (the KV-cache and paged calls) then fails loudly, instead of leaving the inputs without gradients."""
    inputs = [t for t in inputs if isinstance(t, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _InferenceOnly.apply(why, out, *inputs)
    return out
