"""Forward, lse and all gradients of every backend against the float64 reference.

Shapes cross tile boundaries (interpreter tiles are 32x16 / 16x32; GPU tiles up to 128) and cover
seqlen_q <, =, > seqlen_k, non-power-of-two head dims, GQA ratios 1, 2, 4 and MQA.
"""
import pytest
import torch

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

BACKENDS = ["triton", "cuda", "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim)
SHAPES = [
    (1, 1, 1, 2, 2, 16),
    (2, 17, 17, 4, 2, 64),      # GQA 2, one partial tile
    (2, 130, 97, 4, 4, 40),     # sq > sk, head_dim 40 padded to a 64 tile
    (1, 17, 130, 4, 1, 128),    # sq < sk, MQA (ratio 4)
    (1, 128, 128, 2, 1, 32),    # exact multiples of every tile size
    (1, 130, 17, 2, 2, 64),     # sq >> sk: most rows see no key under causal
    (2, 3, 70, 8, 2, 32),       # decoding lengths, GQA 4: the forward packs the 4 heads into one tile
]
MASKS = {
    "full": dict(),
    "causal": dict(causal=True),
    "window": dict(window_size=(5, 3)),
    "causal_window": dict(causal=True, window_size=(20, -1)),
}


def shape_id(shape):
    b, sq, sk, hq, hkv, d = shape
    return f"b{b}-sq{sq}-sk{sk}-h{hq}/{hkv}-d{d}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(request, backend, dtype, mask, shape):
    q, k, v, dout = random_qkv(*shape, dtype, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, **MASKS[mask])


@pytest.mark.parametrize("backend", BACKENDS)
# Any head dim in [1, 256], as FlashAttention 2: odd and unaligned ones (1, 3, 59; 12 and 20 in small
# models) run in a masked power-of-two tile (Triton) or zero-padded to a compiled one (CUDA).
@pytest.mark.parametrize("head_dim", [1, 3, 8, 12, 20, 24, 59, 72, 96, 136, 200, 256])
def test_every_head_dim_up_to_256(request, backend, head_dim):
    q, k, v, dout = random_qkv(1, 33, 40, 2, 1, head_dim, torch.float16, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softmax_scale", [0.01, 0.3, 2.0])
def test_softmax_scale(request, backend, softmax_scale):
    q, k, v, dout = random_qkv(1, 40, 50, 2, 2, 32, torch.float32, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, softmax_scale=softmax_scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(70, 30), (30, 70)])
def test_causal_bottom_right_alignment(request, backend, seqlen_q, seqlen_k):
    """Query i sees keys j <= i + seqlen_k - seqlen_q, checked element-wise on a one-hot probe."""
    q, k, v, dout = random_qkv(1, seqlen_q, seqlen_k, 1, 1, 16, torch.float32, seed=seed_of(request))
    # With q = 0 every visible key gets equal weight: out_i = mean of visible v_j, a direct readout of the mask.
    q = torch.zeros_like(q)
    got = check_against_reference(backend, q, k, v, dout, causal=True)[0]
    for i in (0, seqlen_q // 2, seqlen_q - 1):
        last = i + seqlen_k - seqlen_q
        expected = v[0, : last + 1, 0].double().mean(0) if last >= 0 else torch.zeros(16, dtype=torch.float64)
        torch.testing.assert_close(got[0, i, 0].double(), expected.to(DEVICE), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(70, 30), (30, 70)])
@pytest.mark.parametrize("window", [(-1, 0), (8, 3)])
def test_top_left_alignment(request, backend, dtype, seqlen_q, seqlen_k, window):
    """SDPA's alignment (query i at key i), with causal and a window, on every backend."""
    q, k, v, dout = random_qkv(2, seqlen_q, seqlen_k, 4, 2, 64, dtype, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, window_size=window, alignment="top_left")
