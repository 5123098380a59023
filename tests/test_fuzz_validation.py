"""Hypothesis throws 1000+ random invalid calls; each must raise ValueError/TypeError naming the
argument at fault (and never crash or return). One corruption per call, on random valid sizes."""
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flashattn_py as fa
from flashattn_py.params import Rotary


def _in_bhsd_too(t: torch.Tensor) -> bool:
    """Deterministic coin (odd seqlen): whether to replay a call in bhsd layout."""
    return bool(t.shape[1] % 2)


def _tensors(batch, sq, sk, hkv, group, head_dim):
    return (torch.randn(batch, sq, hkv * group, head_dim), torch.randn(batch, sk, hkv, head_dim),
            torch.randn(batch, sk, hkv, head_dim))


@st.composite
def invalid_calls(draw):
    """(q, k, v, options, exception types, substring the message must contain)."""
    batch, sq, sk = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    hkv, group, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 3)), 8 * draw(st.integers(1, 4))
    q, k, v = _tensors(batch, sq, sk, hkv, group, head_dim)
    options = {"backend": "torch"}
    kind = draw(st.sampled_from([
        "rank", "not_tensor", "dtype", "mixed_dtype", "head_dim", "head_dim_mismatch", "gqa", "batch",
        "kv_seqlen", "kv_heads", "window_value", "window_type", "scale", "causal", "backend", "layout",
        "rotary_dim", "positions_shape", "positions_dtype", "strategy", "deterministic", "table_rows", "dropout",
        "softcap", "alibi_shape", "alibi_dtype", "bias_shape", "bias_dtype", "seqused_k", "alignment",
    ]))
    bad_scalar = st.sampled_from(["x", [1.0], object()])  # None is the valid default
    if kind == "rank":
        which = draw(st.sampled_from(["q", "k", "v"]))
        t = {"q": q, "k": k, "v": v}[which]
        t = t[0] if draw(st.booleans()) else t[..., None]
        q, k, v = (t if n == which else o for n, o in zip("qkv", (q, k, v)))
        options["layout"] = draw(st.sampled_from(["bshd", "bhsd"]))
        return q, k, v, options, ValueError, f"{which} must have 4 dims"
    if kind == "not_tensor":
        which = draw(st.sampled_from(["q", "k", "v"]))
        bad = draw(st.sampled_from([None, 1.0, "q", np.zeros((1, 1, 1, 8))]))
        q, k, v = (bad if n == which else o for n, o in zip("qkv", (q, k, v)))
        options["layout"] = draw(st.sampled_from(["bshd", "bhsd"]))
        return q, k, v, options, TypeError, f"{which} must be a torch.Tensor"
    if kind == "dtype":
        which = draw(st.sampled_from(["q", "k", "v"]))
        dtype = draw(st.sampled_from([torch.float64, torch.int32, torch.int64, torch.bool, torch.uint8]))
        q, k, v = (o.to(dtype) if n == which else o for n, o in zip("qkv", (q, k, v)))
        return q, k, v, options, TypeError, f"{which} has dtype"
    if kind == "mixed_dtype":
        return q.half(), k, v, options, TypeError, "share a dtype"
    if kind == "head_dim":
        bad = draw(st.one_of(st.just(0), st.integers(257, 300)))
        q, k, v = _tensors(batch, sq, sk, hkv, group, bad)
        return q, k, v, options, ValueError, "head_dim"
    if kind == "head_dim_mismatch":
        other = head_dim + 8
        if draw(st.booleans()):
            return q, _tensors(batch, sq, sk, hkv, group, other)[1], v, options, ValueError, "k has head_dim"
        return q, k, _tensors(batch, sq, sk, hkv, group, other)[2], options, ValueError, "v has head_dim"
    if kind == "gqa":
        nheads_q = draw(st.integers(1, 12).filter(lambda h: h % (hkv + 1)))
        return torch.randn(batch, sq, nheads_q, head_dim), *_tensors(batch, sq, sk, hkv + 1, 1, head_dim)[1:], \
            options, ValueError, "GQA"
    if kind == "batch":
        return _tensors(batch + 1, sq, sk, hkv, group, head_dim)[0], k, v, options, ValueError, "batch"
    if kind == "kv_seqlen":
        return q, k, _tensors(batch, sq, sk + 1, hkv, group, head_dim)[2], options, ValueError, "seqlen"
    if kind == "kv_heads":
        return q, k, _tensors(batch, sq, sk, hkv + 1, 1, head_dim)[2], options, ValueError, "heads"
    if kind == "window_value":
        options["window_size"] = (draw(st.integers(-100, -2)),
                                  draw(st.integers(-1, 5)))[:: draw(st.sampled_from([1, -1]))]
        return q, k, v, options, ValueError, "window_size"
    if kind == "window_type":
        options["window_size"] = draw(st.sampled_from([3, "3", (1,), (1, 2, 3), (1.5, 0), (0, None), (True, 0),
                                                     torch.tensor([0.5, 1.0]), torch.tensor([1, 2, 3]),
                                                     torch.tensor([True, False]), (torch.tensor(1.0), 0)]))
        return q, k, v, options, TypeError, "window_size"
    if kind == "scale":
        bad = draw(st.one_of(bad_scalar, st.sampled_from([math.nan, math.inf, -math.inf, True])))
        options["softmax_scale"] = bad
        return q, k, v, options, (TypeError, ValueError), "softmax_scale"
    if kind == "causal":
        options["causal"] = draw(st.sampled_from([1, 0, "yes", None, 1.0]))
        return q, k, v, options, TypeError, "causal"
    if kind == "backend":
        options["backend"] = draw(st.text(max_size=8).filter(
            lambda b: b not in ("auto", "triton", "torch", "reference")))
        return q, k, v, options, ValueError, "backend"
    if kind == "layout":
        options["layout"] = draw(st.text(max_size=5).filter(lambda name: name not in ("bshd", "bhsd")))
        return q, k, v, options, ValueError, "layout"
    if kind == "rotary_dim":
        bad = draw(st.one_of(st.integers(-4, 0), st.integers(1, 64).map(lambda r: 2 * r + 1),
                             st.integers(head_dim // 2 + 1, 200).map(lambda r: 2 * r)))
        options["rotary"] = Rotary(rotary_dim=bad)
        return q, k, v, options, ValueError, "rotary_dim"
    if kind == "positions_shape":
        options["rotary"] = Rotary()
        shape = draw(st.sampled_from([(batch + 1,), (batch, sq + 1), (batch, sq, 1), ()]))
        options["q_positions"] = torch.zeros(shape, dtype=torch.int64)
        return q, k, v, options, ValueError, "q_positions"
    if kind == "positions_dtype":
        options["rotary"] = Rotary()
        options["k_positions"] = draw(st.sampled_from([torch.zeros(batch, sk), 1.5, "0", [0]]))
        return q, k, v, options, TypeError, "k_positions"
    if kind == "strategy":
        options["rotary"] = Rotary()
        options["pe_k_strategy"] = draw(st.text(max_size=8).filter(lambda s: s not in ("auto", "in_kernel", "prepass")))
        return q, k, v, options, ValueError, "pe_k_strategy"
    if kind == "dropout":
        bad = draw(st.one_of(st.floats(1.0, 10.0), st.floats(-10.0, -1e-6), st.sampled_from([math.nan, "0.1", True])))
        options["dropout_p"] = bad
        return q, k, v, options, (TypeError, ValueError), "dropout_p"
    if kind == "deterministic":
        options["deterministic"] = draw(st.sampled_from([1, "yes", None]))
        return q, k, v, options, TypeError, "deterministic"
    if kind == "softcap":
        options["softcap"] = draw(st.one_of(st.floats(-10.0, -1e-6), st.sampled_from([math.inf, math.nan, "1", True])))
        return q, k, v, options, (TypeError, ValueError), "softcap"
    if kind == "alibi_shape":
        heads = hkv * group
        options["alibi_slopes"] = torch.ones(draw(st.sampled_from([(heads + 1,), (batch + 1, heads), (heads, 1, 1)])))
        return q, k, v, options, ValueError, "alibi_slopes must have shape"
    if kind == "alibi_dtype":
        options["alibi_slopes"] = torch.ones(hkv * group, dtype=draw(st.sampled_from([torch.float16, torch.int32])))
        return q, k, v, options, TypeError, "alibi_slopes must be float32"
    if kind == "bias_shape":
        options["attn_bias"] = torch.zeros(draw(st.sampled_from([(sq + 1, sk), (sq, sk + 1), (batch + 1, 1, sq, sk),
                                                                 (1, 1, 1, 1, sk)])))
        return q, k, v, options, ValueError, "attn_bias of shape"
    if kind == "bias_dtype":
        options["attn_bias"] = torch.zeros(sq, sk, dtype=draw(st.sampled_from([torch.int32, torch.uint8, torch.int64])))
        return q, k, v, options, TypeError, "attn_bias must be bool"
    if kind == "seqused_k":
        bad = draw(st.sampled_from(["too_long", "int64", "shape"]))
        options["seqused_k"] = {"too_long": torch.full((batch,), sk + 1, dtype=torch.int32),
                                "int64": torch.full((batch,), 1, dtype=torch.int64),
                                "shape": torch.ones(batch + 1, dtype=torch.int32)}[bad]
        return q, k, v, options, ValueError, "seqused_k"
    if kind == "alignment":
        options["alignment"] = draw(st.sampled_from(["top", "bottom-right", "", "left"]))
        return q, k, v, options, ValueError, "alignment must be one of"
    rows = draw(st.integers(1, max(sq, sk) - 1)) if max(sq, sk) > 1 else None
    if rows is None:  # a one-token call cannot overrun a table: shape it wrong instead
        options["rotary"] = Rotary(cos=torch.ones(4, head_dim), sin=torch.ones(4, head_dim))
        return q, k, v, options, ValueError, "rotary cos must have shape"
    options["rotary"] = Rotary(cos=torch.ones(rows, head_dim // 2), sin=torch.ones(rows, head_dim // 2))
    return q, k, v, options, ValueError, "rotary cos/sin tables have"


@settings(max_examples=1200, deadline=None, derandomize=True)
@given(invalid_calls())
def test_invalid_calls_raise_errors_naming_the_argument(call):
    q, k, v, options, error, fragment = call
    if "layout" not in options and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)):
        # Half the time the same call in SDPA's layout: errors must not depend on it.
        if _in_bhsd_too(q):
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            options["layout"] = "bhsd"
    try:
        fa.attention(q, k, v, **options)
    except error as exc:
        assert fragment in str(exc), f"message {str(exc)!r} does not name {fragment!r}"
    else:
        raise AssertionError(f"no error for an invalid call ({fragment}): {options}")
