"""backend="cuda" where the kernels cannot run: importing flashattn_py never needs the extension, and
asking for the CUDA backend fails with an error that says what is missing. Its numerical tests are
the shared suites (test_attention.py etc.), which run it whenever a GPU is present."""
import dataclasses
import subprocess
import sys

import pytest
import torch

import flashattn_py as fa
from flashattn_py import backends, cuda_backend
from flashattn_py.checks import attention_params

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_import_does_not_load_the_extension():
    code = "import sys, flashattn_py; assert 'flashattn_py._cuda' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"


def test_cuda_is_a_backend_name_and_auto_keeps_triton():
    assert "cuda" in backends.BACKENDS
    if torch.cuda.is_available():
        assert backends.select("auto", torch.device("cuda")).__name__.endswith("triton_backend")


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


@pytest.mark.parametrize("head_dim,kernel", [(8, 32), (32, 32), (40, 64), (64, 64), (72, 96), (96, 96),
                                             (104, 128), (128, 128), (136, 256), (256, 256)])
def test_head_dims_run_in_the_next_compiled_one(head_dim, kernel):
    assert cuda_backend.kernel_head_dim(head_dim) == kernel


@pytest.mark.parametrize("change,message", [
    (lambda p: dict(mods=dataclasses.replace(p.mods, softcap=30.0)), r"softcap.*backend='triton'"),
    (lambda p: dict(diagonal_offset=1), r"bottom-right or top-left.*backend='triton'"),
])
def test_features_without_a_params_field_are_refused(change, message):
    """What csrc/params.h cannot express raises instead of running without it."""
    q, k = torch.randn(1, 8, 2, 32, dtype=torch.float16), torch.randn(1, 12, 2, 32, dtype=torch.float16)
    params = attention_params(q, k, k, causal=True)
    with pytest.raises(NotImplementedError, match=message):
        cuda_backend.check_supported(dataclasses.replace(params, **change(params)))
