"""Split-K (flash-decoding) of the dense forward: forced splits give the float64 reference's output,
lse and gradients (the backward reads the merged lse), and the automatic rule splits only where
FlashAttention 2 would: on a GPU, without dropout, few queries, long keys, too few programs."""
import types

import pytest
import torch

import flashattn_py as fa
from flashattn_py.backends import split_k, triton_backend
from flashattn_py.validation import attention as checks

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

OPTIONS = {
    "causal": lambda b, sk: dict(causal=True),
    "window": lambda b, sk: dict(window_size=(40, 3)),
    "rotary_in_kernel": lambda b, sk: dict(causal=True, rotary=fa.Rotary(), q_positions=sk - 13,
                                           pe_k_strategy="in_kernel"),
    "sinusoidal_prepass": lambda b, sk: dict(sinusoidal=fa.Sinusoidal(), pe_k_strategy="prepass"),
    "softcap_alibi": lambda b, sk: dict(softcap=2.0, alibi_slopes=torch.rand(4, device=DEVICE)),
    "key_padding_mask": lambda b, sk: dict(attn_bias=(torch.arange(sk, device=DEVICE) < torch.tensor(
        [[sk], [sk // 3]], device=DEVICE)[:b])[:, None, None, :]),
}


@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("seqlen_q", [1, 13])
@pytest.mark.parametrize("num_splits", [3, 11])
def test_forced_splits_match_reference(request, backend, options, seqlen_q, num_splits):
    # 11 splits of 300 keys leave some splits with no key block: they must merge as nothing.
    batch, seqlen_k = 2, 300
    opts = OPTIONS[options](batch, seqlen_k)
    if backend == "cuda" and options in ("softcap_alibi", "key_padding_mask"):
        pytest.skip("backend='cuda' has no softcap / ALiBi / bias kernels; they run on backend='triton'")
    q, k, v, dout = random_qkv(batch, seqlen_q, seqlen_k, 4, 1, 32, torch.float16, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, num_splits=num_splits, **opts)


@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("head_dim", [20, 59])
def test_forced_splits_at_odd_head_dims(request, backend, head_dim):
    q, k, v, dout = random_qkv(2, 3, 200, 4, 2, head_dim, torch.bfloat16, seed=seed_of(request))
    check_against_reference(backend, q, k, v, dout, num_splits=3, causal=True)


def _params(seqlen_q=1, seqlen_k=8192, batch=1, nheads_q=32, nheads_kv=8, dropout_p=0.0):
    q = torch.empty(batch, seqlen_q, nheads_q, 128, dtype=torch.float16)
    k = torch.empty(batch, seqlen_k, nheads_kv, 128, dtype=torch.float16)
    return checks.attention_params(q, k, k, dropout_p=dropout_p)


def test_the_automatic_rule_splits_only_short_query_long_key_inference(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(
        multi_processor_count=132))
    gpu = torch.device("cuda")

    def auto(**shape):
        return split_k.split_count(0, _params(**shape), gpu, triton_backend.BACKEND)

    assert auto() > 1  # one decoding token per sequence against 8k keys: a handful of programs
    assert auto() == 8192 // split_k.MIN_KEYS_PER_SPLIT  # bounded by the work per split
    assert auto(seqlen_k=100_000) == 2 * 132 // 8  # by the SMs: 8 programs (4 query heads packed per KV head)
    assert auto(nheads_q=1, nheads_kv=1, seqlen_k=100_000) == split_k.MAX_SPLITS
    assert auto(seqlen_q=65) == 1  # query tiles enough
    assert auto(seqlen_k=511) == 1  # too little work to share
    assert auto(dropout_p=0.1) == 1  # training with dropout: never (FlashAttention 2's rule)
    assert auto(batch=64) == 1  # the batch fills the GPU already
    assert split_k.split_count(0, _params(), torch.device("cpu"), triton_backend.BACKEND) == 1
    # as requested (checked earlier)
    assert split_k.split_count(5, _params(dropout_p=0.1), gpu, triton_backend.BACKEND) == 5


def test_forced_splits_with_dropout_are_refused():
    q = torch.zeros(1, 1, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="num_splits=2 splits the forward over keys, which is not done with dropout"):
        fa.attention(q, q, q, dropout_p=0.1, num_splits=2)
    with pytest.raises(ValueError, match="num_splits must be an int >= 0"):
        fa.attention(q, q, q, num_splits=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the automatic split needs a GPU (it is 1 on the CPU)")
def test_automatic_splits_on_a_gpu_equal_no_split():
    q, k, v, dout = random_qkv(1, 1, 8192, 32, 8, 128, torch.bfloat16, seed=1)
    assert split_k.split_count(0, _params(), q.device, triton_backend.BACKEND) > 1
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    auto = fa.attention(*leaves, causal=True)
    auto.backward(dout)
    plain = fa.attention(q, k, v, causal=True, num_splits=1)
    torch.testing.assert_close(auto, plain, atol=2e-3, rtol=0)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
