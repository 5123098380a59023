"""The PyTorch path's CPU fast lane (flashattn_py/backends/torch_fused.py): torch's fused CPU flash attention,
called on slices of the keys for our bottom-right causal masks and merged through the lse.

The float64-reference suites (test_attention, test_positional, ...) already run their backend="torch"
cases through it; here: the slicing at every diagonal position, that plain calls really take it, the
calls it must leave to the chunked path, and memory that stays linear in seqlen."""
import resource

import pytest
import torch

import flashattn_py as fa
from flashattn_py.backends import torch_backend, torch_fused
from flashattn_py.validation import attention as checks

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="torch's fused CPU attention runs on CPU tensors")


# (seqlen_q, seqlen_k, window, alignment): the diagonal before the first key, on it, inside, past the
# last key; top-left with seqlen_q < seqlen_k; a window bounded on the right only (a shifted diagonal).
DIAGONALS = [
    (40, 17, (-1, 0), "bottom_right"),   # queries 0..22 see no key
    (17, 17, (-1, 0), "bottom_right"),   # SDPA's own causal square
    (17, 40, (-1, 0), "bottom_right"),   # keys 0..22 seen by all, then a causal square: two calls merged
    (17, 40, (-1, 0), "top_left"),
    (30, 30, (-1, 5), "bottom_right"),   # diagonal 5 keys right of the square's
    (30, 12, (-1, 30), "bottom_right"),  # every query sees every key
    (5, 1, (-1, 0), "bottom_right"),     # one key, four queries without any
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gqa", [1, 3])
@pytest.mark.parametrize("diagonal", DIAGONALS, ids=str)
def test_fused_slices_match_reference_at_every_diagonal(request, fused_calls, dtype, gqa, diagonal):
    sq, sk, window, alignment = diagonal
    q, k, v, dout = random_qkv(2, sq, sk, 2 * gqa, 2, 24, dtype, seed=seed_of(request))
    check_against_reference("torch", q, k, v, dout, window_size=window, alignment=alignment)
    assert fused_calls["forward"] >= 1 and fused_calls["backward"] >= 1


@pytest.mark.parametrize("encoding", ["rope", "sinusoidal"])
def test_fused_path_with_encodings_matches_reference(request, fused_calls, encoding):
    q, k, v, dout = random_qkv(2, 33, 47, 4, 2, 32, torch.float16, seed=seed_of(request))
    spec = dict(rotary=fa.Rotary()) if encoding == "rope" else dict(sinusoidal=fa.Sinusoidal())
    check_against_reference("torch", q, k, v, dout, causal=True, q_positions=7, k_positions=3, **spec)
    assert fused_calls["forward"] and fused_calls["backward"]


def test_plain_calls_take_the_fused_path(fused_calls):
    """backend="auto" on CPU: plain, causal and GQA calls, forward and backward, never the chunked loop."""
    q, k, v, dout = random_qkv(1, 64, 64, 4, 2, 32, torch.float32)
    for options in (dict(), dict(causal=True), dict(causal=True, rotary=fa.Rotary())):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fa.attention(*leaves, **options).backward(dout)
    assert fused_calls == {"forward": 3, "backward": 3}


@pytest.mark.parametrize("options", [dict(dropout_p=0.1), dict(softcap=3.0), dict(window_size=(4, 0)),
                                     dict(sinks="per-head"), dict(attn_bias="float")], ids=str)
def test_what_it_cannot_express_runs_chunked(fused_calls, options):
    q, k, v, _ = random_qkv(1, 20, 20, 2, 2, 16, torch.float32)
    if options.get("sinks"):
        options = dict(sinks=torch.zeros(2))
    if options.get("attn_bias"):
        options = dict(attn_bias=torch.randn(20, 20))
    params = checks.attention_params(q, k, v, **options)
    assert not torch_fused.expressible(params, q.device)
    fa.attention(q, k, v, **options)
    assert fused_calls == {"forward": 0, "backward": 0}


def test_chunked_path_skips_keys_the_window_hides():
    """A chunk of queries computes only the keys its window lets it see (masks.key_range)."""
    q, k, _, _ = random_qkv(1, 4096, 4096, 1, 1, 8, torch.float32)
    params = checks.attention_params(q, k, k, window_size=(64, 0))
    spans = [torch_backend._key_span(params, start, end) for start, end in torch_backend._chunks(params)]
    assert all(span.stop - span.start <= (end - start) + 64 for span, (start, end)
               in zip(spans, torch_backend._chunks(params)))
    assert sum(span.stop - span.start for span in spans) < 4096 * len(spans) // 2


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_memory_stays_linear_in_seqlen():
    """seqlen 32768, one head: the scores alone would be 4 GiB in fp32; forward + backward stay within
    a few hundred MiB (fused kernel: blocked; the inputs are 8 MiB each)."""
    q, k, v, dout = random_qkv(1, 32768, 32768, 1, 1, 64, torch.float32)
    before = _peak_rss_mib()
    leaves = [t.requires_grad_() for t in (q, k, v)]
    fa.attention(*leaves, causal=True).backward(dout)
    assert _peak_rss_mib() - before < 1024, f"peak RSS grew by {_peak_rss_mib() - before:.0f} MiB"
