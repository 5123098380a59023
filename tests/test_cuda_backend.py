"""backend="cuda" where the kernels cannot run: importing flashattn_py never needs the extension, and
asking for the CUDA backend fails with an error that says what is missing. Its numerical tests are
the shared suites (test_attention.py etc.), which run it whenever a GPU is present."""
import dataclasses
import subprocess
import sys

import pytest
import torch

import flashattn_py as fa
from flashattn_py import backends
from flashattn_py.backends import cuda_backend
from flashattn_py.semantics import positional
from flashattn_py.validation.attention import attention_params

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_import_does_not_load_the_extension():
    code = "import sys, flashattn_py; assert 'flashattn_py._cuda' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"


def test_cuda_is_a_backend_name_and_auto_keeps_triton():
    assert "cuda" in backends.NAMES
    if torch.cuda.is_available():
        assert backends.select("auto", torch.device("cuda")).name == "triton"


@needs_no_gpu
def test_backend_cuda_without_gpu_raises_a_clear_error():
    q = torch.randn(1, 8, 2, 32, dtype=torch.float16)
    if cuda_backend.is_built():
        with pytest.raises(RuntimeError, match=r"backend='cuda' needs an NVIDIA GPU \(sm_80\+\)"):
            fa.attention(q, q, q, backend="cuda")
    else:
        with pytest.raises(RuntimeError, match=r"not built.*FLASHATTN_BUILD_CUDA=1 pip install \."):
            fa.attention(q, q, q, backend="cuda")


def test_missing_extension_error_says_how_to_build(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_ext", None)
    monkeypatch.delattr(fa, "_cuda", raising=False)
    monkeypatch.setitem(sys.modules, "flashattn_py._cuda", None)  # import fails as if never built
    with pytest.raises(RuntimeError, match=r"FLASHATTN_BUILD_CUDA=1 pip install \."):
        backends.select("cuda", torch.device("cpu"))


@needs_no_gpu
def test_extension_call_without_gpu_raises_no_cuda_device():
    if not cuda_backend.is_built():
        pytest.skip("flashattn_py._cuda is not built (FLASHATTN_BUILD_CUDA=1 pip install .)")
    ext = cuda_backend.extension()
    assert ext.device_count() == 0
    with pytest.raises(RuntimeError, match=r"no CUDA device .*needs an NVIDIA GPU \(sm_80\+\)"):
        ext.forward(ext.AttentionParams(), 0, 0)


def test_extension_params_fields_round_trip():
    if not cuda_backend.is_built():
        pytest.skip("flashattn_py._cuda is not built (FLASHATTN_BUILD_CUDA=1 pip install .)")
    ext = cuda_backend.extension()
    p = ext.AttentionParams()
    p.q, p.lse, p.pe.q_pos = 2**40 + 8, 2**47 - 16, 4096
    p.head_dim, p.window_left, p.softmax_scale = 96, 7, 0.125
    p.q_strides = ext.Strides(2**33, 1024, 128)
    p.pe.kind, p.pe.dim = ext.PE_ROTARY, 64
    assert (p.q, p.lse, p.pe.q_pos) == (2**40 + 8, 2**47 - 16, 4096)
    assert (p.head_dim, p.window_left, p.softmax_scale) == (96, 7, 0.125)
    assert (p.q_strides.batch, p.q_strides.seq, p.q_strides.head) == (2**33, 1024, 128)
    assert (p.pe.kind, p.pe.dim) == (1, 64)
    # The per-sequence layout fields (csrc/sequence.h).
    p.cu_seqlens_q, p.seqused_k, p.block_table, p.out_accum = 2**40 + 64, 2**41, 2**42 + 4, 2**43 + 16
    p.block_table_stride, p.page_size, p.num_splits = 7, 16, 3
    assert (p.cu_seqlens_q, p.seqused_k, p.block_table, p.out_accum) == (2**40 + 64, 2**41, 2**42 + 4, 2**43 + 16)
    assert (p.block_table_stride, p.page_size, p.num_splits) == (7, 16, 3)


@pytest.mark.parametrize("dtype,options,error,message", [
    (torch.float32, {}, ValueError, r"float16 and bfloat16.*backend='triton'"),
    (torch.float16, {"dropout_p": 0.1}, NotImplementedError, r"dropout_p=0.1"),
])
def test_unsupported_by_design_raises_clear_errors(dtype, options, error, message):
    q = torch.randn(1, 8, 2, 32, dtype=dtype)
    with pytest.raises(error, match=message):
        cuda_backend.check_supported(attention_params(q, q, q, **options))


def test_too_many_splits_are_refused():
    q = torch.randn(1, 1, 2, 32, dtype=torch.float16)
    params = dataclasses.replace(attention_params(q, q, q), num_splits=300)
    with pytest.raises(ValueError, match=r"num_splits <= 256"):
        cuda_backend.check_supported(params)


@pytest.mark.parametrize("head_dim,kernel", [(1, 32), (3, 32), (8, 32), (12, 32), (20, 32), (32, 32), (59, 64),
                                             (40, 64), (64, 64), (72, 96), (96, 96), (104, 128), (128, 128), (136, 256),
                                             (256, 256)])
def test_head_dims_run_in_the_next_compiled_one(head_dim, kernel):
    assert cuda_backend.kernel_head_dim(head_dim) == kernel


@pytest.mark.parametrize("change,message", [
    (lambda p: dict(mods=dataclasses.replace(p.mods, bias=torch.zeros(1, 2, 8, 12))), r"attn_mask / bias.*triton"),
    (lambda p: dict(mods=dataclasses.replace(p.mods, sinks=torch.zeros(2))), r"sinks.*backend='triton'"),
    (lambda p: dict(diagonal_offset=1), r"bottom-right or top-left.*backend='triton'"),
])
def test_features_without_a_params_field_are_refused(change, message):
    """What csrc/params.h cannot express raises instead of running without it."""
    q, k = torch.randn(1, 8, 2, 32, dtype=torch.float16), torch.randn(1, 12, 2, 32, dtype=torch.float16)
    params = attention_params(q, k, k, causal=True)
    with pytest.raises(NotImplementedError, match=message):
        cuda_backend.check_supported(dataclasses.replace(params, **change(params)))


def test_softcap_and_alibi_are_supported():
    """The kernels apply them (csrc/score_mods.h): no refusal, with masks, GQA and both together."""
    q, k = torch.randn(1, 8, 4, 32, dtype=torch.float16), torch.randn(1, 12, 2, 32, dtype=torch.float16)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    for options in ({"softcap": 30.0}, {"alibi_slopes": slopes}, {"softcap": 5.0, "alibi_slopes": slopes}):
        cuda_backend.check_supported(attention_params(q, k, k, causal=True, window_size=(3, 0), **options))


def _built_extension():
    if not cuda_backend.is_built():
        pytest.skip("flashattn_py._cuda is not built (FLASHATTN_BUILD_CUDA=1 pip install .)")
    return cuda_backend.extension()


def test_packed_batches_reach_the_kernel_params():
    """What csrc/sequence.h reads for a packed call: the cu_seqlens arrays, total_q (the lse row length
    the caller allocated) and batch strides 0 (rows are addressed from each sequence's first row)."""
    from flashattn_py.validation.sequences import varlen_params

    ext = _built_extension()
    q, k = torch.zeros(9, 4, 64, dtype=torch.float16), torch.zeros(12, 2, 64, dtype=torch.float16)
    cu_q, cu_k = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 7, 12], dtype=torch.int32)
    params = varlen_params(q, k, k, cu_q, cu_k, 5, 7, causal=True, rotary=fa.Rotary())
    p, keep_alive = cuda_backend._kernel_params(ext, params, 64, with_encoding=True)
    assert (p.cu_seqlens_q, p.cu_seqlens_k) == (cu_q.data_ptr(), cu_k.data_ptr())  # contiguous: no copy
    assert (p.total_q, p.batch, p.seqlen_q, p.seqlen_k) == (9, 2, 5, 7)
    assert p.total_k == 12  # the K/V rows: the Hopper forward's TMA maps span them (csrc/hopper/route.h)
    assert p.seqused_k == 0 and p.block_table == 0 and p.num_splits == 1
    strides = cuda_backend._strides(ext, q[None], params)
    assert (strides.batch, strides.seq, strides.head) == (0, 4 * 64, 64)
    assert p.pe.kind == ext.PE_ROTARY and p.pe.q_pos == params.encoding.q_positions.data_ptr()


def test_paged_decoding_reaches_the_kernel_params():
    """A paged, seqused_k call: the block table (made contiguous when it is not, and kept alive), its
    row stride and the page size; a strided seqused_k is passed as a contiguous copy."""
    from flashattn_py.params import PagedKV

    ext = _built_extension()
    q = torch.zeros(3, 1, 4, 64, dtype=torch.float16)
    shape_k = torch.zeros(1, 1, 2, 64, dtype=torch.float16).expand(3, 48, 2, 64)
    used = torch.tensor([5, 0, 1, 0, 48, 0], dtype=torch.int32)[::2]  # strided view
    table = torch.arange(18, dtype=torch.int32).reshape(6, 3).t()  # (3, 6), not contiguous
    params = dataclasses.replace(attention_params(q, shape_k, shape_k, causal=True, seqused_k=used),
                                 paged=PagedKV(table, 8), num_splits=3)
    cuda_backend.check_supported(params)
    p, keep_alive = cuda_backend._kernel_params(ext, params, 64, with_encoding=False)
    copies = {t.data_ptr(): t for t in keep_alive}
    assert p.seqused_k in copies and copies[p.seqused_k].tolist() == [5, 1, 48]
    assert p.block_table in copies and torch.equal(copies[p.block_table], table)
    assert (p.block_table_stride, p.page_size) == (6, 8)
    assert p.cu_seqlens_q == 0 and p.total_q == 0


@pytest.mark.parametrize("slopes_shape", [(4,), (2, 4)])
def test_score_mods_reach_the_kernel_params(slopes_shape):
    """softcap, and ALiBi slopes as the (batch, nheads_q) fp32 view validation makes of them: a per-head
    vector is broadcast over the batch (stride 0), a per-(batch, head) tensor is read with its strides."""
    ext = _built_extension()
    q = torch.zeros(2, 8, 4, 64, dtype=torch.float16)
    k = torch.zeros(2, 8, 2, 64, dtype=torch.float16)
    slopes = torch.rand(slopes_shape)
    params = attention_params(q, k, k, causal=True, softcap=30.0, alibi_slopes=slopes)
    p, _ = cuda_backend._kernel_params(ext, params, 64, with_encoding=False)
    assert p.mods.softcap == 30.0 and p.mods.alibi_slopes == slopes.data_ptr()
    assert (p.mods.alibi_stride_b, p.mods.alibi_stride_h) == ((0, 1) if len(slopes_shape) == 1 else (4, 1))
    plain, _ = cuda_backend._kernel_params(ext, attention_params(q, k, k), 64, with_encoding=False)
    assert plain.mods.softcap == 0.0 and plain.mods.alibi_slopes == 0


def test_left_padding_and_packed_pages_reach_the_kernel_params(monkeypatch):
    """cache_leftpad reaches leftpad_k (a strided view as a contiguous copy); a packed batch against
    pages passes the page stride for k / v (q stays addressed from packed rows, batch stride 0), and
    runs unsplit: the split scratch rows are laid out for dense batches."""
    from flashattn_py.params import PagedKV
    from flashattn_py.validation.sequences import varlen_params

    ext = _built_extension()
    q = torch.zeros(3, 1, 4, 64, dtype=torch.float16)
    shape_k = torch.zeros(1, 1, 2, 64, dtype=torch.float16).expand(3, 48, 2, 64)
    params = attention_params(q, shape_k, shape_k, causal=True, seqused_k=torch.tensor([9, 3, 48], dtype=torch.int32))
    leftpad = torch.tensor([4, 0, 0, 0, 17, 0], dtype=torch.int32)[::2]  # strided view
    params = dataclasses.replace(params, lengths=dataclasses.replace(params.lengths, leftpad_k=leftpad))
    p, keep_alive = cuda_backend._kernel_params(ext, params, 64, with_encoding=False)
    copies = {t.data_ptr(): t for t in keep_alive}
    assert p.leftpad_k in copies and copies[p.leftpad_k].tolist() == [4, 0, 17]

    launched = []
    monkeypatch.setattr(cuda_backend, "_launch", lambda fn, p, device, keep, **kw: launched.append(p))
    q_packed, cache = torch.zeros(1, 5, 4, 64, dtype=torch.float16), torch.zeros(6, 16, 2, 64, dtype=torch.float16)
    cu_q, cu_k = torch.tensor([0, 1, 5], dtype=torch.int32), torch.tensor([0, 20, 27], dtype=torch.int32)
    params = varlen_params(q_packed[0], cache[0, :1].expand(27, 2, 64), cache[0, :1].expand(27, 2, 64), cu_q, cu_k,
                           4, 20, causal=True)
    table = torch.tensor([[4, 1], [0, 5]], dtype=torch.int32)
    cuda_backend.BACKEND.forward(q_packed, cache, cache,
                                 dataclasses.replace(params, paged=PagedKV(table, 16), num_splits=3))
    (p,) = launched
    assert p.num_splits == 1 and p.cu_seqlens_q != 0 and p.block_table != 0 and p.page_size == 16
    assert (p.k_strides.batch, p.v_strides.batch, p.q_strides.batch) == (16 * 2 * 64, 16 * 2 * 64, 0)


@pytest.mark.parametrize("strategy, seqlen_q, pre_encoded", [
    ("auto", 300, True),  # 3 query tiles of 128 would each re-encode every K tile: encoded once before
    ("auto", 128, False),  # one query tile: encoded as the kernels load the tiles
    ("in_kernel", 300, False),
    ("prepass", 16, True),
])
def test_rope_is_encoded_once_before_the_kernels_past_a_few_query_tiles(monkeypatch, strategy, seqlen_q,
                                                                         pre_encoded):
    """pe_k_strategy and the rule the Triton backend uses decide (prepass_chosen): pre-encoded, the kernels
    get q and k rotated by the standalone kernel and no encoding; otherwise the user's q, k and the encoding."""
    ext = _built_extension()
    launched = []
    monkeypatch.setattr(cuda_backend, "_launch", lambda fn, p, device, keep, **kw: launched.append((p, keep)))
    gen = torch.Generator().manual_seed(seqlen_q)
    q, k = (torch.randn(1, n, 2, 64, generator=gen).to(torch.float16) for n in (seqlen_q, 40))
    params = attention_params(q, k, k, rotary=fa.Rotary(), pe_k_strategy=strategy)
    cuda_backend.BACKEND.forward(q, k, k, params)
    (p, keep), = launched
    assert (p.pe.kind == ext.PE_ROTARY) != pre_encoded
    read = {t.data_ptr(): t for t in keep}
    if not pre_encoded:
        assert (p.q, p.k) == (q.data_ptr(), k.data_ptr())
        return
    enc = params.encoding
    for ptr, x, positions in ((p.q, q, enc.q_positions), (p.k, k, enc.k_positions)):
        expected = positional.encode(x.double(), enc, positions)
        torch.testing.assert_close(read[ptr].double(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("route", ["", "head_dim 96 (the kernel has 64, 128, 256)"])
def test_hopper_route_pre_encodes_k_only_when_it_takes_the_call(monkeypatch, route):
    """Opted in (FLASHATTN_CUDA_SM90=1) with RoPE encoded in the kernels: when csrc/hopper/route.h takes the
    call, K alone goes through the standalone encode kernel and the params say so (pe.k_encoded), q stays
    the user's (the Hopper kernel encodes it); otherwise nothing changes. The opt-in reaches the launch."""
    ext = _built_extension()
    launched = []
    monkeypatch.setattr(cuda_backend, "_launch", lambda fn, p, device, keep, **kw: launched.append((p, keep, kw)))
    monkeypatch.setenv(cuda_backend.SM90_ENV, "1")
    monkeypatch.setattr(cuda_backend, "sm90_route", lambda ext, p, device: route)
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, n, 2, 64, generator=gen).to(torch.float16) for n in (128, 40))
    params = attention_params(q, k, k, rotary=fa.Rotary(), pe_k_strategy="in_kernel")
    cuda_backend.BACKEND.forward(q, k, k, params)
    (p, keep, kw), = launched
    assert kw == {"sm90": True} and p.pe.kind == ext.PE_ROTARY and p.q == q.data_ptr()
    if route:
        assert p.k == k.data_ptr() and p.pe.k_encoded == 0
        return
    assert p.k != k.data_ptr() and p.pe.k_encoded == 1
    read = {t.data_ptr(): t for t in keep}
    expected = positional.encode(k.double(), params.encoding, params.encoding.k_positions)
    torch.testing.assert_close(read[p.k].double(), expected, atol=2e-3, rtol=2e-3)


def test_pre_encoded_gradients_are_mapped_back_through_the_inverse(monkeypatch):
    """The backward encodes q, k again and hands the kernels' dq, dk (w.r.t. the encoded q, k) to the
    encoding's inverse; dv passes through. The kernel is stood in for by known gradients."""
    import ctypes

    _built_extension()
    gen = torch.Generator().manual_seed(5)
    q, k, v, out, dout = (torch.randn(1, 300, 2, 64, generator=gen).to(torch.float16) for _ in range(5))
    known = [torch.randn(1, 300, 2, 64, generator=gen).to(torch.float16) for _ in range(3)]

    def kernel(fn, p, device, keep, **kw):
        for ptr, grad in zip((p.dq, p.dk, p.dv), known):
            ctypes.memmove(ptr, grad.data_ptr(), grad.numel() * grad.element_size())

    monkeypatch.setattr(cuda_backend, "_launch", kernel)
    params = attention_params(q, k, v, causal=True, rotary=fa.Rotary(rotary_dim=32, interleaved=True))
    lse = torch.zeros(params.lse_shape)
    dq, dk, dv = cuda_backend.BACKEND.backward(dout, q, k, v, out, lse, (), params)
    enc = params.encoding
    for got, grad, positions in ((dq, known[0], enc.q_positions), (dk, known[1], enc.k_positions)):
        expected = positional.encode(grad.double(), enc, positions, inverse=True)
        torch.testing.assert_close(got.double(), expected, atol=2e-3, rtol=2e-3)
    assert torch.equal(dv, known[2])


@pytest.mark.parametrize("route", ["", "deterministic (the kernel adds dQ with unordered TMA reduce-adds)"])
def test_hopper_backward_takes_q_encoded_and_maps_back_itself(monkeypatch, route):
    """Opted in with RoPE, when csrc/hopper/route.h takes the backward: q alone goes through the standalone
    encode kernel (pe.q_encoded: the kernel encodes its K block and applies both inverses), k is the user's,
    a zeroed fp32 dq_accum shaped like q is given, and the kernels' dq, dk come back as they are. Refused,
    the call is the mma.sync one of before (300 queries: q and k pre-encoded, the inverse applied here)."""
    import ctypes

    ext = _built_extension()
    gen = torch.Generator().manual_seed(7)
    q, k, v, out, dout = (torch.randn(1, 300, 2, 64, generator=gen).to(torch.float16) for _ in range(5))
    known = [torch.randn(1, 300, 2, 64, generator=gen).to(torch.float16) for _ in range(3)]
    launched = []

    def kernel(fn, p, device, keep, **kw):
        launched.append((p, {t.data_ptr(): t.clone() for t in keep}, kw))
        for ptr, grad in zip((p.dq, p.dk, p.dv), known):
            ctypes.memmove(ptr, grad.data_ptr(), grad.numel() * grad.element_size())

    monkeypatch.setattr(cuda_backend, "_launch", kernel)
    monkeypatch.setenv(cuda_backend.SM90_ENV, "1")
    monkeypatch.setattr(cuda_backend, "sm90_backward_route", lambda ext, p, device, deterministic: route)
    params = attention_params(q, k, v, causal=True, rotary=fa.Rotary())
    dq, dk, dv = cuda_backend.BACKEND.backward(dout, q, k, v, out, torch.zeros(params.lse_shape), (), params)
    (p, read, kw), = launched
    assert kw == {"sm90": True, "deterministic": False}
    enc = params.encoding
    if route:  # the mma.sync path: both pre-encoded, no encoding in the params, the inverse applied here
        assert p.dq_accum == 0 and p.pe.kind == ext.PE_NONE and p.pe.q_encoded == 0
        expected = positional.encode(known[0].double(), enc, enc.q_positions, inverse=True)
        torch.testing.assert_close(dq.double(), expected, atol=2e-3, rtol=2e-3)
        return
    assert p.pe.kind == ext.PE_ROTARY and p.pe.q_encoded == 1 and p.k == k.data_ptr()
    torch.testing.assert_close(read[p.q].double(), positional.encode(q.double(), enc, enc.q_positions),
                               atol=2e-3, rtol=2e-3)
    accum = read[p.dq_accum]
    assert accum.dtype == torch.float32 and accum.shape == q.shape and not accum.any()
    assert (p.dq_accum_strides.seq, p.dq_accum_strides.head) == (2 * 64, 64)
    assert torch.equal(dq, known[0]) and torch.equal(dk, known[1]) and torch.equal(dv, known[2])
