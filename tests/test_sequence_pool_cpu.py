"""The per-sequence kernel calls of the CPU path on a pool of single-threaded workers
(backends/sequence_pool.py): taken when torch has several threads, results those of the calls run one
after the other, gradients too, the caller's thread count kept, a worker's error raised to the caller."""
import threading

import pytest
import torch

import flashattn_py as fa
from flashattn_py.backends import sequence_pool, torch_fused
from flashattn_py.varlen import flash_attn_varlen_func

from tolerance import DEVICE, seed_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path of per-sequence lengths")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kernel_threads(monkeypatch, without_cpu_kernels):
    """(name of the calling thread, its torch thread count) per call of torch's fused kernels (the CPU kernels,
    which would take these short calls first, turned off; tests/test_cpu_kernels.py runs them on the pool)."""
    names = []
    for attr in ("FLASH", "FLASH_BACKWARD"):
        kernel = getattr(torch_fused, attr)

        def called(*args, kernel=kernel, **kwargs):
            names.append((threading.current_thread().name, torch.get_num_threads()))
            return kernel(*args, **kwargs)
        monkeypatch.setattr(torch_fused, attr, called)
    return names


def _inline(monkeypatch):
    monkeypatch.setattr(sequence_pool, "_pool", lambda: None)


def _split(calls) -> bool:
    """Whether the calls ran on the workers, each kernel on one thread."""
    return bool(calls) and all(name.startswith("flashattn_cpu") and threads == 1 for name, threads in calls)


def _inline_calls(calls) -> bool:
    return bool(calls) and all(name == "MainThread" and threads == torch.get_num_threads() for name, threads in calls)


def _decode_inputs(gen, batch=24, capacity=48):
    q = torch.randn(batch, 1, 8, 16, generator=gen)
    k_cache, v_cache = (torch.randn(batch, capacity, 2, 16, generator=gen) for _ in range(2))
    seqlens = torch.randperm(capacity, generator=gen)[:batch].to(torch.int32)  # all different: a call each
    return q, k_cache, v_cache, seqlens


def test_decoding_calls_run_on_the_workers_with_the_same_results(request, two_threads, kernel_threads, monkeypatch):
    q, k_cache, v_cache, seqlens = _decode_inputs(torch.Generator().manual_seed(seed_of(request)))
    got = fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, return_softmax_lse=True)
    assert _split(kernel_threads), set(kernel_threads)
    assert torch.get_num_threads() == 2  # the caller's count kept (the workers have their own)
    kernel_threads.clear()
    _inline(monkeypatch)
    expected = fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, return_softmax_lse=True)
    assert _inline_calls(kernel_threads), set(kernel_threads)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-6)


def test_packed_forward_and_backward_on_the_workers_match_the_inline_calls(request, two_threads, kernel_threads,
                                                                           monkeypatch):
    gen = torch.Generator().manual_seed(seed_of(request))
    lengths = torch.randint(17, 40, (12,), generator=gen)  # longer than packed_windows takes
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    q, k, v, dout = (torch.randn(int(cu[-1]), 4, 16, generator=gen) for _ in range(4))

    def run():
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash_attn_varlen_func(*leaves, cu, cu, 40, 40, causal=True)
        return (out.detach(), *torch.autograd.grad(out, leaves, dout))

    got = run()
    backward_calls = kernel_threads[len(kernel_threads) // 2:]  # as many backward calls as forward ones
    assert _split(kernel_threads) and _split(backward_calls), kernel_threads
    _inline(monkeypatch)
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, run()):
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-6), name


def test_one_thread_runs_inline(kernel_threads):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        q, k_cache, v_cache, seqlens = _decode_inputs(torch.Generator().manual_seed(0))
        fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens)
    finally:
        assert _inline_calls(kernel_threads), set(kernel_threads)
        torch.set_num_threads(before)


def test_a_workers_error_reaches_the_caller(two_threads):
    def work(item):
        if item == 5:
            raise ValueError("item 5")

    with pytest.raises(ValueError, match="item 5"):
        sequence_pool.run(list(range(10)), work, cost=lambda item: 1)


def test_every_item_runs_once(two_threads):
    seen = []
    sequence_pool.run(list(range(37)), seen.append, cost=lambda item: item % 5 + 1)
    assert sorted(seen) == list(range(37))


def test_threads_started_later_keep_the_process_count(two_threads):
    """The workers' own count of 1 does not leak into threads the program starts afterwards (torch gives a
    new thread the process-wide count on its first use)."""
    sequence_pool.run(list(range(8)), lambda item: None, cost=lambda item: 1)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("state", ["inference_mode", "autocast_bf16"])
def test_workers_see_the_callers_inference_mode_and_autocast(request, two_threads, kernel_threads, monkeypatch,
                                                             state):
    """Under torch.inference_mode (outputs are inference tensors, written by the workers) and CPU autocast,
    the workers' results are the inline calls'."""
    q, k_cache, v_cache, seqlens = _decode_inputs(torch.Generator().manual_seed(seed_of(request)))

    def step():
        context = torch.inference_mode() if state == "inference_mode" else torch.autocast("cpu", torch.bfloat16)
        with context:
            return fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, return_softmax_lse=True)

    got = step()
    assert _split(kernel_threads), set(kernel_threads)
    _inline(monkeypatch)
    for g, e in zip(got, step()):
        assert g.dtype == e.dtype and torch.equal(g, e)
