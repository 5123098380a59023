"""Random valid calls (hypothesis): every backend agrees with the float64 reference on any shape and
option mix (seqlens, head dims, GQA, causal, window, RoPE/sinusoidal and the K strategy, dtype), not
only on the hand-picked cases (plus softcap, ALiBi and top-left alignment). Bounded so CI stays fast."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashattn_py.params import Rotary, Sinusoidal

from tolerance import DEVICE, check_against_reference, random_qkv


@st.composite
def attention_calls(draw):
    nheads_kv = draw(st.sampled_from([1, 2]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 70)), draw(st.integers(1, 70)),
             nheads_kv * draw(st.sampled_from([1, 2, 3])), nheads_kv, draw(st.integers(2, 96)))  # any head dim
    options = dict(causal=draw(st.booleans()))
    if draw(st.booleans()):
        options["window_size"] = (draw(st.integers(-1, 40)), draw(st.integers(-1, 40)))
        if draw(st.booleans()):  # FlashAttention 2's own tests pass a 2-element integer tensor
            options["window_size"] = torch.tensor(options["window_size"])
    encoding = draw(st.sampled_from(["none", "rotary", "rotary_interleaved", "sinusoidal"]))
    if encoding.startswith("rotary"):
        options["rotary"] = Rotary(interleaved=encoding.endswith("interleaved"),
                                   rotary_dim=2 * draw(st.integers(1, shape[-1] // 2)))
    elif encoding == "sinusoidal":
        options["sinusoidal"] = Sinusoidal(scale=draw(st.floats(0.25, 2.0)))
    if encoding != "none":
        options["pe_k_strategy"] = draw(st.sampled_from(["in_kernel", "prepass"]))
    if draw(st.booleans()):  # score modifications (score_mods.py), and where the diagonal sits
        if draw(st.booleans()):
            options["softcap"] = draw(st.floats(0.5, 50.0))
        if draw(st.booleans()):
            gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
            options["alibi_slopes"] = torch.rand(shape[3], generator=gen).to(DEVICE)
        options["alignment"] = draw(st.sampled_from(["bottom_right", "top_left"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    backend = draw(st.sampled_from(["triton", "triton", "torch"]))  # every backend; the kernels most
    return backend, shape, dtype, options, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(attention_calls())
def test_random_valid_calls_match_reference(call):
    backend, shape, dtype, options, seed = call
    q, k, v, dout = random_qkv(*shape, dtype, seed=seed)
    check_against_reference(backend, q, k, v, dout, **options)
