"""Bad input raises ValueError/TypeError naming the argument and what was expected."""
import pytest
import torch

import flashattn_py as fa


def qkv(b=1, sq=8, sk=8, hq=2, hkv=2, d=16, dtype=torch.float32):
    return (torch.randn(b, sq, hq, d, dtype=dtype), torch.randn(b, sk, hkv, d, dtype=dtype),
            torch.randn(b, sk, hkv, d, dtype=dtype))


CASES = [
    ("rank", lambda: (torch.randn(8, 2, 16), *qkv()[1:]), {}, ValueError, "q must have 4 dims"),
    ("not_tensor", lambda: ([1.0], *qkv()[1:]), {}, TypeError, "q must be a torch.Tensor"),
    ("dtype", lambda: (*qkv()[:2], qkv()[2].double()), {}, TypeError, "v has dtype torch.float64"),
    ("int_dtype", lambda: tuple(t.int() for t in qkv()), {}, TypeError, "q has dtype torch.int32"),
    ("mixed_dtype", lambda: (qkv()[0].half(), *qkv()[1:]), {}, TypeError, "q, k and v must share a dtype"),
    ("head_dim_mismatch", lambda: (qkv(d=32)[0], *qkv()[1:]), {}, ValueError, "k has head_dim 16 but q has 32"),
    ("head_dim_zero", lambda: qkv(d=0), {}, ValueError, "head_dim must be in [1, 256], got 0"),
    ("head_dim_too_big", lambda: qkv(d=257), {}, ValueError, "head_dim must be in [1, 256], got 257"),
    ("gqa_ratio", lambda: qkv(hq=3, hkv=2), {}, ValueError, "GQA/MQA needs nheads_q divisible by nheads_kv"),
    ("kv_heads", lambda: (*qkv()[:2], qkv(hkv=1)[2]), {}, ValueError, "k has 2 heads but v has 1"),
    ("kv_seqlen", lambda: (*qkv()[:2], qkv(sk=9)[2]), {}, ValueError, "k has seqlen 8 but v has 9"),
    ("batch", lambda: (qkv(b=2)[0], *qkv()[1:]), {}, ValueError, "batch sizes differ"),
    ("device", lambda: (qkv()[0].to("meta"), *qkv()[1:]), {}, ValueError, "q, k and v must be on one device"),
    ("deterministic", qkv, dict(deterministic=1), TypeError, "deterministic must be a bool"),
    ("window_type", qkv, dict(window_size=3), TypeError, "window_size must be a pair"),
    ("window_value", qkv, dict(window_size=(-2, 0)), ValueError, "window_size left must be >= 0, or -1"),
    ("window_float", qkv, dict(window_size=(1.5, 0)), TypeError, "window_size left must be an int"),
    ("window_float_tensor", qkv, dict(window_size=torch.tensor([1.0, 0.0])), TypeError,
     "window_size as a tensor must hold 2 integers"),
    ("window_tensor_shape", qkv, dict(window_size=torch.tensor([1, 2, 3])), TypeError,
     "window_size as a tensor must hold 2 integers .left, right., got a torch.int64 tensor of shape"),
    ("window_tensor_value", qkv, dict(window_size=torch.tensor([-3, 0])), ValueError, "window_size left must be >= 0"),
    ("scale_type", qkv, dict(softmax_scale="1"), TypeError, "softmax_scale must be a float"),
    ("scale_nan", qkv, dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be finite"),
    ("causal_type", qkv, dict(causal=1), TypeError, "causal must be a bool"),
    ("backend", qkv, dict(backend="cutlass"), ValueError, "backend must be one of"),
    ("layout", qkv, dict(layout="sbhd"), ValueError, "layout must be one of"),
]


@pytest.mark.parametrize("make_inputs,options,error,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(make_inputs, options, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        fa.attention(*make_inputs(), **options)


def test_triton_on_cpu_without_interpreter_explains_how(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="set TRITON_INTERPRET=1"):
        fa.attention(*qkv(), backend="triton")
