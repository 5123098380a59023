"""flashattn_py.layers.rotary: FlashAttention 2's rotary ops (apply_rotary_emb and its qkv / kv in-place
variants) against the float64 rotation written here from the formula; out of place and in place,
values and gradients (the gradient of a rotation is the inverse rotation)."""
import inspect

import pytest
import torch

import flashattn_py as fa
from flashattn_py.layers import rotary as fa_rotary
from flashattn_py.layers.rotary import (
    apply_rotary_emb,
    apply_rotary_emb_func,
    apply_rotary_emb_kv_,
    apply_rotary_emb_qkv_,
)

from tolerance import DEVICE, assert_within_naive_error, seed_of

BACKENDS = ["triton", "torch"]


def tables(rows, rotary_dim, gen, dtype=torch.float32):
    """Random-frequency cos / sin tables (rows, rotary_dim / 2), as a scaled RoPE would give."""
    angles = torch.arange(rows, dtype=torch.float64)[:, None] * torch.rand(rotary_dim // 2, generator=gen,
                                                                           dtype=torch.float64)
    return angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype)


def rotate(x, cos, sin, positions, interleaved, dtype, inverse=False):
    """x (..., seqlen, nheads, headdim) rotated at positions (..., seqlen), computed in `dtype` with the
    tables rounded to it: float64 is the exact reference, the input dtype the naive one (the error
    bound's baseline). Written here from the formula, apart from positional.rotate."""
    r = 2 * cos.shape[1]
    x = x.to(dtype)
    c, s = cos.to(dtype)[positions][..., None, :], sin.to(dtype)[positions][..., None, :]
    if inverse:
        s = -s
    rot, rest = x[..., :r], x[..., r:]
    a, b = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., : r // 2], rot[..., r // 2:])
    first, second = a * c - b * s, b * c + a * s
    rotated = torch.stack((first, second), dim=-1).flatten(-2) if interleaved else torch.cat((first, second), dim=-1)
    return torch.cat((rotated, rest), dim=-1)


# name: (shape, packed lengths or None, rotary_dim, interleaved, seqlen_offsets as (batch) -> int | tensor)
CASES = {
    "neox_full": ((2, 19, 3, 32), None, 32, False, lambda b: 0),
    "gptj_partial_int_offset": ((2, 19, 3, 40), None, 24, True, lambda b: 5),
    "neox_partial_tensor_offsets": ((2, 19, 2, 40), None, 16, False,
                                    lambda b: torch.tensor([3, 11], dtype=torch.int32, device=DEVICE)),
    "gptj_odd_head_dim": ((1, 9, 2, 59), None, 20, True, lambda b: 2),
    "packed_neox_tensor_offsets": ((18, 3, 32), [5, 0, 12, 1], 32, False,
                                   lambda b: torch.tensor([0, 4, 7, 30], device=DEVICE)),
    "packed_gptj_partial_int_offset": ((18, 2, 40), [5, 0, 12, 1], 16, True, lambda b: 3),
}


def _positions(case_shape, lengths, offsets):
    """(batch, seqlen) positions of a dense x, or (total,) of a packed one."""
    if lengths is None:
        batch, seqlen = case_shape[:2]
        base = torch.as_tensor(offsets, device=DEVICE).to(torch.int64).reshape(-1, 1)
        return (base + torch.arange(seqlen, device=DEVICE)).expand(batch, seqlen)
    offsets = torch.as_tensor(offsets, device=DEVICE).to(torch.int64).expand(len(lengths))
    return torch.cat([offsets[b] + torch.arange(n, device=DEVICE) for b, n in enumerate(lengths)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("case", CASES)
def test_apply_rotary_emb_matches_reference(request, backend, dtype, inplace, case):
    shape, lengths, rotary_dim, interleaved, make_offsets = CASES[case]
    gen = torch.Generator().manual_seed(seed_of(request))
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    grad = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    cos, sin = tables(64, rotary_dim, gen)
    offsets = make_offsets(len(lengths) if lengths else shape[0])
    packed = {} if lengths is None else dict(
        cu_seqlens=torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE),
        max_seqlen=max(lengths))
    positions = _positions(shape, lengths, offsets)

    leaf = x.clone().requires_grad_()
    with fa.poisoned_outputs():
        y = leaf * 1  # a non-leaf: in place is then differentiable (autograd marks it modified)
        out = apply_rotary_emb(y, cos, sin, interleaved, inplace, offsets, **packed, backend=backend)
    assert (out is y) == inplace and out.shape == x.shape and out.dtype == dtype
    (dx,) = torch.autograd.grad(out, leaf, grad)

    for name, got, source, inverse in (("out", out, x, False), ("dx", dx, grad, True)):
        exact, naive = (rotate(source, cos, sin, positions, interleaved, dt, inverse) for dt in (torch.float64, dtype))
        assert_within_naive_error(name, got, exact, naive, dtype)
    if rotary_dim < shape[-1]:  # channels past rotary_dim pass through unchanged, gradients too
        assert torch.equal(out[..., rotary_dim:], x[..., rotary_dim:]) and torch.equal(dx[..., rotary_dim:],
                                                                                     grad[..., rotary_dim:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["qkv5d", "qkv_gqa", "qkv5d_cos_k", "kv"])
def test_packed_variants_rotate_q_and_k_in_place(request, backend, layout):
    """qkv (batch, seqlen, 3, h, d) / GQA (batch, seqlen, hq + 2 hk, d) with num_heads_q / kv: q and k
    rotated in place (k with cos_k / sin_k when given), v untouched; gradients through the packed tensor."""
    gen = torch.Generator().manual_seed(seed_of(request))
    batch, seqlen, d, dtype = 2, 13, 24, torch.float16
    shape = {"qkv5d": (batch, seqlen, 3, 2, d), "qkv5d_cos_k": (batch, seqlen, 3, 2, d),
             "qkv_gqa": (batch, seqlen, 4 + 2 * 2, d), "kv": (batch, seqlen, 2, 3, d)}[layout]
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    grad = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    (cos, sin), (cos_k, sin_k) = tables(40, 16, gen), tables(40, 16, gen)
    offsets = torch.tensor([2, 9], device=DEVICE)
    positions = _positions((batch, seqlen), None, offsets)

    def parts(t):  # (q, k, v) views, q None for kv
        if layout == "kv":
            return None, t[:, :, 0], t[:, :, 1]
        if layout == "qkv_gqa":
            return t[:, :, :4], t[:, :, 4:6], t[:, :, 6:]
        return t[:, :, 0], t[:, :, 1], t[:, :, 2]

    leaf = x.clone().requires_grad_()
    with fa.poisoned_outputs():
        y = leaf * 1
        if layout == "kv":
            out = apply_rotary_emb_kv_(y, cos, sin, True, offsets, backend=backend)
        elif layout == "qkv_gqa":
            out = apply_rotary_emb_qkv_(y, cos, sin, None, None, False, offsets, num_heads_q=4, backend=backend)
        else:
            extra = (cos_k, sin_k) if layout == "qkv5d_cos_k" else (None, None)
            out = apply_rotary_emb_qkv_(y, cos, sin, *extra, False, offsets, backend=backend)
    assert out is y
    (dx,) = torch.autograd.grad(out, leaf, grad)
    interleaved = layout == "kv"
    k_tables = (cos_k, sin_k) if layout == "qkv5d_cos_k" else (cos, sin)
    for name, got, source, g, dg, tabs in zip(("q", "k"), parts(out)[:2], parts(x)[:2], parts(dx)[:2],
                                              parts(grad)[:2], ((cos, sin), k_tables)):
        if got is None:
            continue
        for label, value, inputs, inverse in ((name, got, source, False), (f"d{name}", g, dg, True)):
            exact, naive = (rotate(inputs, *tabs, positions, interleaved, dt, inverse) for dt in (torch.float64, dtype))
            assert_within_naive_error(label, value, exact, naive, dtype)
    assert torch.equal(parts(out)[2], parts(x)[2]) and torch.equal(parts(dx)[2], parts(grad)[2])


def test_signatures_and_alias_match_flash_attention_2():
    names = lambda f: [p.name for p in inspect.signature(f).parameters.values() if p.kind != p.KEYWORD_ONLY]  # noqa: E731
    assert names(apply_rotary_emb) == ["x", "cos", "sin", "interleaved", "inplace", "seqlen_offsets", "cu_seqlens",
                                       "max_seqlen"]
    assert names(apply_rotary_emb_qkv_) == ["qkv", "cos", "sin", "cos_k", "sin_k", "interleaved", "seqlen_offsets",
                                            "num_heads_q"]
    assert names(apply_rotary_emb_kv_) == ["kv", "cos", "sin", "interleaved", "seqlen_offsets"]
    assert apply_rotary_emb_func is apply_rotary_emb and fa_rotary.apply_rotary_emb is apply_rotary_emb


def _x(*shape):
    return torch.randn(*shape, device=DEVICE)


COS, SIN = torch.ones(16, 4, device=DEVICE), torch.zeros(16, 4, device=DEVICE)
CU = torch.tensor([0, 3, 8], dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("call,error,message", [
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16).requires_grad_(), COS, SIN, inplace=True), ValueError,
     "inplace=True on a leaf"),
    (lambda: apply_rotary_emb_qkv_(_x(2, 8, 3, 2, 16).requires_grad_(), COS, SIN), ValueError,
     "or a view of one"),
    (lambda: apply_rotary_emb(_x(8, 2, 16), COS, SIN), ValueError, "x must be .batch, seqlen, nheads, headdim."),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS, SIN, cu_seqlens=CU, max_seqlen=5), ValueError,
     "x must be packed"),
    (lambda: apply_rotary_emb(_x(8, 2, 16), COS, SIN, cu_seqlens=CU, max_seqlen=4), ValueError, "max_seqlen 4"),
    (lambda: apply_rotary_emb(_x(9, 2, 16), COS, SIN, cu_seqlens=CU, max_seqlen=5), ValueError,
     "end at the packed length 9"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS, SIN, seqlen_offsets=9), ValueError,
     "seqlen_offsets reach position 16 but the rotary cos/sin tables have 16 rows"),
    (lambda: apply_rotary_emb(_x(8, 2, 16), COS, SIN, seqlen_offsets=torch.tensor([0, 12], device=DEVICE),
                              cu_seqlens=CU, max_seqlen=5), ValueError, "seqlen_offsets reach position 16"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS, SIN, seqlen_offsets=torch.zeros(3, dtype=torch.int32,
                                                                                    device=DEVICE)),
     ValueError, r"seqlen_offsets must have shape \(2,\)"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS, SIN, seqlen_offsets=1.5), TypeError, "seqlen_offsets must be"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 6), COS, SIN), ValueError,
     r"rotary_dim must be even and in \[2, head_dim=6\]"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS[0], SIN[0]), ValueError, "cos must be .seqlen_rotary"),
    (lambda: apply_rotary_emb(_x(2, 8, 2, 16), COS, SIN[:, :3]), ValueError, "rotary sin must have shape"),
    (lambda: apply_rotary_emb_qkv_(_x(2, 8, 8, 16), COS, SIN), TypeError, "num_heads_q must be an int"),
    (lambda: apply_rotary_emb_qkv_(_x(2, 8, 7, 16), COS, SIN, num_heads_q=4), ValueError, "does not split"),
    (lambda: apply_rotary_emb_qkv_(_x(2, 8, 3, 2, 16), COS, SIN, cos_k=COS), ValueError, "cos_k and sin_k"),
    (lambda: apply_rotary_emb_kv_(_x(2, 8, 3, 2, 16), COS, SIN), ValueError, r"kv must be \(batch, seqlen, 2"),
], ids=["inplace_leaf", "inplace_view_of_leaf", "rank", "packed_rank", "max_seqlen", "cu_seqlens_total",
        "offsets_past_table", "packed_offsets_past_table", "offsets_shape", "offsets_type", "rotary_dim_too_big",
        "table_rank", "table_shapes", "num_heads_q_missing", "num_heads_q_split", "cos_k_alone", "kv_shape"])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
