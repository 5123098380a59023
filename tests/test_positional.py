"""RoPE and sinusoidal encodings fused into attention, and the standalone ops, vs the float64 reference."""
import pytest
import torch

import flashattn_py as fa
from flashattn_py.params import Rotary, Sinusoidal
from flashattn_py.semantics import positional
from flashattn_py.validation.positional import resolve as resolve_encoding

from tolerance import ATOL, DEVICE, assert_within_naive_error, check_against_reference, random_qkv, seed_of

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def table_rotary(rows, rotary_dim, **spec):
    """Rotary with scaled-RoPE style tables: angles of positions / 4 (linear scaling), in fp32."""
    inv_freq = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = (torch.arange(rows, dtype=torch.float64) / 4.0)[:, None] * inv_freq
    return Rotary(rotary_dim=rotary_dim, cos=angles.cos().float().to(DEVICE), sin=angles.sin().float().to(DEVICE),
                  **spec)


ENCODINGS = {
    "neox": lambda d: dict(rotary=Rotary()),
    "gptj": lambda d: dict(rotary=Rotary(interleaved=True, base=500.0)),
    "partial_neox": lambda d: dict(rotary=Rotary(rotary_dim=d // 2)),
    "partial_gptj_tables": lambda d: dict(rotary=table_rotary(300, 16, interleaved=True)),
    "sinusoidal": lambda d: dict(sinusoidal=Sinusoidal(base=1000.0, scale=0.5)),
}
SHAPES = [(2, 37, 50, 4, 2, 64), (1, 70, 33, 2, 1, 40), (2, 5, 40, 8, 2, 32)]  # last: decoding lengths, GQA 4


@pytest.mark.parametrize("backend,strategy",
                         [("triton", "in_kernel"), ("triton", "prepass"), ("cuda", "in_kernel"), ("cuda", "prepass"),
                          ("cuda", "auto"), ("torch", "auto")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_encoding_matches_reference(request, backend, strategy, dtype, encoding, shape):
    q, k, v, dout = random_qkv(*shape, dtype, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, causal=True, pe_k_strategy=strategy,
                            **ENCODINGS[encoding](shape[-1]))


POSITIONS = {
    "int_offsets": lambda b, sq, sk: dict(q_positions=40, k_positions=7),
    "per_batch_offsets": lambda b, sq, sk: dict(q_positions=torch.tensor([3, 90]), k_positions=torch.tensor([0, 5])),
    "position_ids": lambda b, sq, sk: dict(q_positions=torch.randperm(b * sq).view(b, sq),
                                           k_positions=torch.randint(0, 250, (b, sk), dtype=torch.int32)),
}


@pytest.mark.parametrize("backend,strategy",
                         [("triton", "in_kernel"), ("triton", "prepass"), ("cuda", "in_kernel"), ("cuda", "prepass"),
                          ("cuda", "auto"), ("torch", "auto")])
@pytest.mark.parametrize("encoding", ["neox", "partial_gptj_tables", "sinusoidal"])
@pytest.mark.parametrize("positions", POSITIONS)
def test_positions_offsets_and_ids(request, backend, strategy, encoding, positions):
    torch.manual_seed(seed_of(request))
    q, k, v, dout = random_qkv(2, 30, 45, 2, 2, 32, torch.float16, seed=seed_of(request))
    pos = {name: t.to(DEVICE) if isinstance(t, torch.Tensor) else t
           for name, t in POSITIONS[positions](2, 30, 45).items()}
    check_against_reference(backend, q, k, v, dout, window_size=(10, 4), pe_k_strategy=strategy,
                            **ENCODINGS[encoding](32), **pos)


@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("encoding", ["neox", "gptj", "partial_neox", "sinusoidal"])
def test_fused_equals_encode_then_attend(request, backend, dtype, encoding):
    """attention(q, k, v, rotary=R) == attention(apply_rotary(q, R), apply_rotary(k, R), v), same for sinusoidal."""
    q, k, v, dout = random_qkv(2, 40, 40, 2, 2, 32, dtype, seed=seed_of(request))
    options = ENCODINGS[encoding](32)
    spec = options.get("rotary") or options["sinusoidal"]
    if isinstance(spec, Rotary):
        q_enc, k_enc = (fa.apply_rotary(t, spec, backend=backend) for t in (q, k))
    else:
        q_enc, k_enc = (fa.add_sinusoidal(t, scale=spec.scale, base=spec.base, backend=backend) for t in (q, k))
    fused = fa.attention(q, k, v, causal=True, backend=backend, **options)
    unfused = fa.attention(q_enc, k_enc, v, causal=True, backend=backend)
    torch.testing.assert_close(fused, unfused, atol=ATOL[dtype], rtol=0)


def test_hf_position_embeddings_map_to_tables(request):
    """HF Llama passes cos/sin of shape (batch, seqlen, head_dim) = cat(freqs, freqs) and rotates with
    q * cos + rotate_half(q) * sin; our tables are their first head_dim/2 columns (README)."""
    b, s, h, d = 2, 24, 2, 32
    q, k, v, _ = random_qkv(b, s, s, h, h, d, torch.float32, seed=seed_of(request))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32, device=DEVICE) / d))
    freqs = torch.arange(s, device=DEVICE, dtype=torch.float32)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos_hf, sin_hf = emb.cos()[None].expand(b, s, d), emb.sin()[None].expand(b, s, d)

    def hf_rotate(x):  # the formula HF documents, on bshd x
        rotated_half = torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)
        return x * cos_hf[:, :, None] + rotated_half * sin_hf[:, :, None]

    ours = fa.attention(q, k, v, causal=True, rotary=Rotary(cos=cos_hf[0, :, : d // 2], sin=sin_hf[0, :, : d // 2]))
    theirs = fa.reference.attention(hf_rotate(q), hf_rotate(k), v, causal=True)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=0)


STANDALONE = {
    "rotary_neox_4d": (lambda x: dict(rotary=Rotary()), (2, 19, 3, 40)),
    "rotary_gptj_partial_offset": (lambda x: dict(rotary=Rotary(rotary_dim=24, interleaved=True), positions=9),
                                   (2, 19, 3, 40)),
    "rotary_tables_ids": (lambda x: dict(rotary=table_rotary(64, 8),
                                         positions=torch.randint(0, 64, (2, 19)).to(DEVICE)), (2, 19, 3, 16)),
    "sinusoidal_embeddings_3d": (lambda x: dict(scale=3.0), (2, 33, 52)),
    "rotary_partial_odd_head_dim": (lambda x: dict(rotary=Rotary(rotary_dim=20), positions=5), (2, 19, 3, 59)),
    "sinusoidal_odd_dim": (lambda x: dict(scale=0.5), (2, 33, 59)),
}


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STANDALONE)
def test_standalone_ops_match_reference(request, backend, dtype, case):
    make_options, shape = STANDALONE[case]
    gen = torch.Generator().manual_seed(seed_of(request))
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    grad = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    options = make_options(x)
    op = fa.add_sinusoidal if case.startswith("sinusoidal") else fa.apply_rotary

    def run(op_backend, input_dtype):
        leaf = x.to(input_dtype).requires_grad_()
        out = op(leaf, **options, backend=op_backend)
        return out, torch.autograd.grad(out, leaf, grad.to(input_dtype))[0]

    def reference(input_dtype):
        """positional.encode in plain torch, differentiated by autograd (not by our inverse formula)."""
        leaf = x.to(input_dtype).requires_grad_()
        bshd = leaf if leaf.dim() == 4 else leaf.unsqueeze(2)
        spec = options.get("rotary") or Sinusoidal(scale=options["scale"])
        enc = resolve_encoding(*((spec, None) if isinstance(spec, Rotary) else (None, spec)), batch=shape[0],
                                 seqlen_q=shape[1], seqlen_k=shape[1], head_dim=shape[-1], device=x.device,
                                 q_positions=options.get("positions"))
        out = positional.encode(bshd, enc, enc.q_positions).view(shape)
        return out, torch.autograd.grad(out, leaf, grad.to(input_dtype))[0]

    with fa.poisoned_outputs():
        got = run(backend, dtype)
    exact = reference(torch.float64)
    naive = reference(dtype)  # the same math rounded to the input precision
    for name, g, e, n in zip(("out", "grad"), got, exact, naive):
        assert g.dtype == dtype and g.shape == x.shape
        assert_within_naive_error(name, g, e, n, dtype)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_apply_rotary_inplace_writes_into_x_and_matches_out_of_place(request, backend):
    x = torch.randn(2, 17, 2, 32, generator=torch.Generator().manual_seed(seed_of(request))).to(DEVICE)
    spec = Rotary(interleaved=True)
    out_of_place = x.clone().requires_grad_()
    expected = fa.apply_rotary(out_of_place, spec, positions=3, backend=backend)
    expected.sum().backward()

    base = x.clone().requires_grad_()
    y = base * 1.0  # a non-leaf, so the in-place op stays differentiable
    out = fa.apply_rotary(y, spec, positions=3, inplace=True, backend=backend)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    out.sum().backward()
    torch.testing.assert_close(base.grad, out_of_place.grad, atol=0, rtol=0)


def test_auto_strategy_encodes_in_kernel_only_for_few_streamed_reads():
    from flashattn_py.triton_kernels.pe_strategy import IN_KERNEL_MAX_READS, encoded_streams
    from flashattn_py.validation.attention import attention_params

    q, k, v, _ = random_qkv(1, 8, 8, 1, 1, 16, torch.float32)
    params = attention_params(q, k, v, rotary=Rotary())
    short = encoded_streams(params, q=q, k=k, streamed_reads=IN_KERNEL_MAX_READS)
    long = encoded_streams(params, q=q, k=k, streamed_reads=IN_KERNEL_MAX_READS + 1)
    assert short.q_in_kernel and short.k_in_kernel and short.k is k and short.q is q and short.scratch == ()
    assert not long.q_in_kernel and not long.k_in_kernel and long.scratch == (long.k,)
    assert long.k is not k and long.q is not q
    reused = encoded_streams(params, q=q, k=k, streamed_reads=IN_KERNEL_MAX_READS + 1, k_encoded=long.k)
    assert reused.k is long.k


def qkv(d=32):
    return random_qkv(1, 8, 8, 2, 2, d, torch.float32)[:3]


def ones(*shape, dtype=torch.float32, device=None):
    return torch.ones(*shape, dtype=dtype, device=device or DEVICE)


PE_ERRORS = [
    ("odd_rotary_dim", lambda: dict(rotary=Rotary(rotary_dim=15)), ValueError, "rotary_dim must be even"),
    ("odd_head_dim_default_rotary_dim", lambda: dict(rotary=Rotary()), ValueError,
     r"rotary_dim must be even .* got 59 \(rotary_dim defaults to head_dim, which is odd: pass an even rotary_dim\)"),
    ("rotary_dim_too_big", lambda: dict(rotary=Rotary(rotary_dim=40)), ValueError,
     r"rotary_dim must be even and in \[2, head_dim=32\]"),
    ("table_shape", lambda: dict(rotary=Rotary(cos=ones(8, 8), sin=ones(8, 8))), ValueError,
     r"rotary cos must have shape \(seqlen_ro, rotary_dim / 2 = 16\)"),
    ("table_dtype", lambda: dict(rotary=Rotary(cos=ones(8, 16, dtype=torch.int32), sin=ones(8, 16, dtype=torch.int32))),
     TypeError, "rotary cos must be a floating-point tensor"),
    ("table_device", lambda: dict(rotary=Rotary(cos=ones(8, 16, device="meta"), sin=ones(8, 16, device="meta"))),
     ValueError, "rotary cos is on meta but q is on"),
    ("tables_differ", lambda: dict(rotary=Rotary(cos=ones(8, 16), sin=ones(9, 16))), ValueError, "differ in shape"),
    ("one_table", lambda: dict(rotary=Rotary(cos=ones(8, 16))), ValueError,
     "cos and sin tables must be given together"),
    ("beyond_table", lambda: dict(rotary=Rotary(cos=ones(8, 16), sin=ones(8, 16)), q_positions=1), ValueError,
     "reach position 8 but the rotary cos/sin tables have 8 rows"),
    ("ids_beyond_table", lambda: dict(rotary=Rotary(cos=ones(8, 16), sin=ones(8, 16)),
                                      k_positions=torch.full((1, 8), 8, device=DEVICE)), ValueError,
     "k_positions reach position 8"),
    ("both", lambda: dict(rotary=Rotary(), sinusoidal=Sinusoidal()), ValueError, "rotary or sinusoidal, not both"),
    ("positions_alone", lambda: dict(q_positions=3), ValueError, "need a positional encoding"),
    ("positions_shape", lambda: dict(rotary=Rotary(), q_positions=torch.zeros(3, 8, dtype=torch.int64, device=DEVICE)),
     ValueError, r"q_positions must have shape \(1,\)"),
    ("positions_dtype", lambda: dict(rotary=Rotary(), k_positions=ones(1, 8)), TypeError,
     "k_positions must be an int32 or int64"),
    ("positions_device", lambda: dict(rotary=Rotary(), k_positions=torch.zeros(1, 8, dtype=torch.int64, device="meta")),
     ValueError, "k_positions is on meta but q is on"),
    ("negative_offset", lambda: dict(rotary=Rotary(), q_positions=-1), ValueError, "q_positions offset must be >= 0"),
    ("negative_id", lambda: dict(rotary=Rotary(), q_positions=torch.full((1, 8), -2, device=DEVICE)), ValueError,
     "q_positions must be >= 0"),
    ("base", lambda: dict(rotary=Rotary(base=0.0)), ValueError, "rotary base must be a positive"),
    ("sinusoidal_scale", lambda: dict(sinusoidal=Sinusoidal(scale=float("inf"))), ValueError,
     "sinusoidal scale must be"),
    ("spec_type", lambda: dict(rotary="rope"), TypeError, "rotary must be a Rotary"),
    ("strategy", lambda: dict(rotary=Rotary(), pe_k_strategy="fast"), ValueError, "pe_k_strategy must be one of"),
]


@pytest.mark.parametrize("make_options,error,message", [c[1:] for c in PE_ERRORS], ids=[c[0] for c in PE_ERRORS])
def test_bad_encoding_raises_clear_error(request, make_options, error, message):
    with pytest.raises(error, match=message):
        fa.attention(*qkv(59 if "odd_head_dim" in request.node.name else 32), **make_options())


@pytest.mark.parametrize("call,error,message", [
    (lambda x: fa.apply_rotary(x[0, 0], Rotary()), ValueError, "x must be"),
    (lambda x: fa.apply_rotary(x.int(), Rotary()), TypeError, "x has dtype torch.int32"),
    (lambda x: fa.apply_rotary(x, Rotary(rotary_dim=6), positions=torch.zeros(2)), TypeError,
     "^positions must be an int32"),
    (lambda x: fa.add_sinusoidal(x, positions=(1, 2)), TypeError, "^positions must be None"),
    (lambda x: fa.apply_rotary(x.requires_grad_(), inplace=True), ValueError, "inplace=True on a leaf"),
], ids=["rank", "dtype", "positions_dtype", "positions_type", "inplace_leaf"])
def test_standalone_ops_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(2, 5, 2, 8, device=DEVICE))


@pytest.mark.parametrize("strategy", ["in_kernel", "prepass"])
@pytest.mark.parametrize("head_dim,encoding", [(16, "neox"), (96, "gptj"), (128, "partial_neox"), (256, "neox"),
                                               (200, "partial_gptj_tables"), (256, "sinusoidal"), (12, "neox"),
                                               (20, "gptj"), (59, "partial_gptj_tables"), (59, "sinusoidal"),
                                               (3, "sinusoidal")])
def test_fused_encoding_at_every_head_dim_class(request, strategy, head_dim, encoding):
    """Head dims that fill their tile (16, 128, 256), padded ones (96 -> 128, 200 -> 256) and odd ones
    (59, 3: sinusoidal's last channel 2i takes sin; RoPE an even rotary_dim)."""
    q, k, v, dout = random_qkv(1, 21, 35, 2, 1, head_dim, torch.float16, seed=seed_of(request))
    check_against_reference("triton", q, k, v, dout, causal=True, pe_k_strategy=strategy,
                            **ENCODINGS[encoding](head_dim))
