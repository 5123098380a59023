"""torch.compile(fullgraph=True) traces every entry point without graph breaks, forward and backward,
through the flashattn_py::attention_forward / attention_backward custom ops (ops.py); compiled results
and gradients equal eager ones. fullgraph=True raises on any graph break, so passing proves there is none.

The Triton backend compiles too (CPU: its launches run under TRITON_INTERPRET inside the opaque custom
op, which dynamo does not trace into)."""
import pytest
import torch

import flashattn_py as fa
from flashattn_py import ops
from flashattn_py.validation.attention import attention_params

from tolerance import DEVICE

BACKENDS = ["torch", "triton"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class RotaryGQABlock(torch.nn.Module):
    """A self-attention block of the kind users compile: projections, causal GQA attention with RoPE."""

    def __init__(self, dim=64, nheads=4, nheads_kv=2, backend="auto"):
        super().__init__()
        self.nheads, self.nheads_kv, self.head_dim, self.backend = nheads, nheads_kv, dim // nheads, backend
        self.q_proj = torch.nn.Linear(dim, dim, bias=False)
        self.kv_proj = torch.nn.Linear(dim, 2 * nheads_kv * self.head_dim, bias=False)
        self.out_proj = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.nheads, self.head_dim)
        k, v = self.kv_proj(x).view(b, s, 2, self.nheads_kv, self.head_dim).unbind(2)
        out = fa.attention(q, k, v, causal=True, rotary=fa.Rotary(), backend=self.backend)
        return self.out_proj(out.reshape(b, s, -1))


class PaddedSDPABlock(torch.nn.Module):
    """torch-style bhsd attention through fa.scaled_dot_product_attention with a key-padding mask."""

    def __init__(self, dim=64, nheads=4, backend="auto"):
        super().__init__()
        self.nheads, self.head_dim, self.backend = nheads, dim // nheads, backend
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x, key_padding_mask):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.nheads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = key_padding_mask[:, None, None, :]  # (b, 1, 1, s) bool, True = attend: a broadcast view
        out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=self.backend)
        return out.transpose(1, 2).reshape(b, s, -1)


def _eager_and_compiled(module, inputs, compile_backend="inductor"):
    """Outputs and parameter/input gradients of module(*inputs), eager and compiled with fullgraph=True."""
    results = []
    for fn in (module, torch.compile(module, fullgraph=True, backend=compile_backend)):
        module.zero_grad()
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        (out.float() ** 2).sum().backward()
        grads = [p.grad.clone() for p in module.parameters()] + [t.grad for t in leaves if t.requires_grad]
        results.append((out.detach(), grads))
    return results


def _assert_same(eager, compiled):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    assert len(grads_e) == len(grads_c) and all(g is not None for g in grads_c)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_causal_gqa_rotary_block_matches_eager(backend):
    torch.manual_seed(0)
    module = RotaryGQABlock(backend=backend).to(DEVICE)
    x = torch.randn(2, 24, 64, device=DEVICE)
    eager, compiled = _eager_and_compiled(module, [x])
    _assert_same(eager, compiled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_sdpa_with_key_padding_mask_matches_eager(backend):
    torch.manual_seed(0)
    module = PaddedSDPABlock(backend=backend).to(DEVICE)
    x = torch.randn(3, 20, 64, device=DEVICE)
    lengths = torch.tensor([20, 13, 5], device=DEVICE)
    key_padding_mask = torch.arange(20, device=DEVICE)[None, :] < lengths[:, None]
    eager, compiled = _eager_and_compiled(module, [x, key_padding_mask])
    _assert_same(eager, compiled)


def test_compiled_graph_holds_the_custom_ops():
    """The attention is one opaque op in the graph (forward) and one in the backward graph, not traced
    Python: what dynamo sees is exactly flashattn_py::attention_forward / attention_backward."""
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm

    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(0)
    module = RotaryGQABlock(backend="torch").to(DEVICE)
    compiled = torch.compile(module, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    compiled(torch.randn(1, 8, 64, device=DEVICE)).sum().backward()
    assert any("flashattn_py.attention_forward" in t for t in seen), seen
    assert any("flashattn_py.attention_backward" in t for t in seen), seen


def test_compiled_dropout_regenerates_the_forward_mask():
    """With dropout the seed is drawn per call outside the op (validation/attention.py) and passed to both
    ops: it is not baked into the graph (two calls drop differently, torch.manual_seed reproduces a call), and
    compiled gradients equal eager ones for the same seed, i.e. the backward op regenerated the forward's mask."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        return fa.attention(q, k, v, dropout_p=0.3, backend="torch")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert not torch.equal(compiled(q, k, v), compiled(q, k, v))
    torch.manual_seed(5)
    out_c = compiled(q, k, v)
    grads_c = torch.autograd.grad(out_c.sum(), (q, k, v))
    torch.manual_seed(5)
    out_e = f(q, k, v)
    grads_e = torch.autograd.grad(out_e.sum(), (q, k, v))
    torch.testing.assert_close(out_c, out_e)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e)


def _op_samples(backend):
    """Forward-op argument sets covering the flattened options: plain, causal GQA + rotary from tables with
    position ids, sinusoidal, softcap + ALiBi + a bool mask, window + float bias, dropout."""
    torch.manual_seed(0)
    b, sq, sk, h, hkv, d = 2, 9, 12, 4, 2, 16

    def qkv():
        return (torch.randn(b, sq, h, d, device=DEVICE, requires_grad=True),
                torch.randn(b, sk, hkv, d, device=DEVICE, requires_grad=True),
                torch.randn(b, sk, hkv, d, device=DEVICE, requires_grad=True))

    def params_of(q, k, v, **options):
        return attention_params(q, k, v, **options)

    angles = torch.arange(20, device=DEVICE)[:, None] * torch.rand(d // 4, device=DEVICE)
    cos, sin = angles.cos(), angles.sin()
    positions = torch.randint(0, 20, (b, sq), device=DEVICE)
    key_mask = torch.rand(b, 1, 1, sk, device=DEVICE) > 0.3
    cases = [
        dict(),
        dict(causal=True, rotary=fa.Rotary(rotary_dim=d // 2, cos=cos, sin=sin), q_positions=positions),
        dict(sinusoidal=fa.Sinusoidal(scale=0.5), k_positions=3),
        dict(softcap=5.0, alibi_slopes=torch.rand(h, device=DEVICE), attn_bias=key_mask, alignment="top_left"),
        dict(window_size=(3, 2), attn_bias=torch.randn(1, h, sq, sk, device=DEVICE)),
        dict(dropout_p=0.25),
        dict(causal=True, sinks=torch.randn(h, device=DEVICE, requires_grad=True),
             attn_bias=torch.randn(1, h, sq, sk, device=DEVICE, requires_grad=True)),
    ]
    for options in cases:
        q, k, v = qkv()
        yield (q, k, v), ops.op_args(params_of(q, k, v, **options), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_attention_ops(backend):
    # test_aot_dispatch_dynamic compiles every sample under the Triton interpreter: minutes; the other
    # utilities (schema, autograd registration, fake tensors) run for both backends.
    test_utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if backend == "torch":
        test_utils += ("test_aot_dispatch_dynamic",)
    for (q, k, v), args in _op_samples(backend):
        torch.library.opcheck(ops.attention_forward, (q, k, v), args, test_utils=test_utils)
        out, lse, aux = ops.attention_forward(q, k, v, **args)
        dout = torch.randn_like(out)
        bias = args["attn_bias"]
        # The dbias output too; the backward op is not differentiated again, so its inputs are detached.
        args = {name: value.detach() if isinstance(value, torch.Tensor) else value for name, value in args.items()}
        args["bias_grad"] = bias is not None and bias.requires_grad
        torch.library.opcheck(ops.attention_backward, (dout, q.detach(), k.detach(), v.detach(), out.detach(),
                                                       lse, aux), args, test_utils=test_utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_args_round_trip(backend):
    """op_args and params_from_op_args are inverses: the op sees the call the validation described."""
    for (q, k, v), args in _op_samples(backend):
        again = ops.op_args(ops.params_from_op_args(q, k, args), backend)
        assert again.keys() == args.keys()
        for name, value in args.items():
            assert again[name] is value if isinstance(value, torch.Tensor) else again[name] == value, name


class PackedBlock(torch.nn.Module):
    """Packed variable-length attention (flash_attn_varlen_func) and a padded batch with seqused_k."""

    def __init__(self, dim=32, nheads=2, backend="auto"):
        super().__init__()
        self.nheads, self.head_dim, self.backend = nheads, dim // nheads, backend
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x, cu_seqlens, used):
        total = x.shape[0]
        q, k, v = self.qkv(x).view(total, 3, self.nheads, self.head_dim).unbind(1)
        packed = fa.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, 9, 9, causal=True, rotary=fa.Rotary(),
                                           backend=self.backend)
        padded = fa.attention(q[None, :9], k[None, :9], v[None, :9], causal=True, seqused_k=used,
                              backend=self.backend)
        return packed.sum(0) + padded.sum((0, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_packed_and_seqused_k_calls_match_eager(backend):
    torch.manual_seed(0)
    module = PackedBlock(backend=backend).to(DEVICE)
    x = torch.randn(16, 32, device=DEVICE)
    cu_seqlens = torch.tensor([0, 7, 7, 16], dtype=torch.int32, device=DEVICE)
    used = torch.tensor([6], dtype=torch.int32, device=DEVICE)
    eager, compiled = _eager_and_compiled(module, [x, cu_seqlens, used], compile_backend="aot_eager")
    _assert_same(eager, compiled)
