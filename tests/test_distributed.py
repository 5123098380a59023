"""Context parallelism (flashattn_py.distributed) on CPU: real process groups (gloo), one process per
rank (torch.multiprocessing, forked from a server that has imported this module: _spawn). Each rank's
output, lse and the gradients of its q, k, v shards are compared with the float64 reference attention over
the whole sequence, within the package's tolerance rule (2x the error of the naive attention in the same
precision, + atol)."""
import multiprocessing
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashattn_py as fa
from flashattn_py.distributed import context_parallel_attention, shard_sequence, unshard_sequence
from flashattn_py.tools import accuracy

# (batch, seqlen per rank, heads, kv_heads, head_dim, options); every case runs on every rank.
CASES = {
    "plain": (2, 8, 2, 2, 16, dict()),
    "causal_gqa": (1, 8, 4, 2, 16, dict(causal=True)),
    "causal_rope": (2, 6, 2, 1, 16, dict(causal=True, rotary=fa.Rotary())),
    "sinusoidal": (1, 8, 2, 2, 16, dict(sinusoidal=fa.Sinusoidal())),
    # Sliding windows by global position: pieces skipped, whole or masked at their own diagonal.
    "window": (1, 8, 2, 2, 16, dict(window_size=(5, 3))),
    "causal_window_rope": (2, 6, 2, 1, 16, dict(causal=True, window_size=(4, -1), rotary=fa.Rotary())),
}


# Each test starts fresh rank processes, as torch.multiprocessing.spawn would, but forks them from a
# forkserver (one per pytest process, started on the first call) that has already imported torch,
# flashattn_py with both backends, this module and the cp benchmark: a spawned rank spends about 3 s of
# CPU importing them before it does anything, and on CI's two cores that start-up was most of this file's
# time (the refusal test, which computes nothing, took 16 s). The server only imports (no process group,
# no tensors computed: the state a spawned rank has after its imports); each test still gets new processes
# and a new process group.
_PRELOAD = [__name__, "flashattn_py.backends.torch_backend", "flashattn_py.backends.triton_backend",
            "flashattn_py.tools.bench.context_parallel"]


def _spawn(fn, nprocs, *args):
    """torch.multiprocessing.spawn(fn, args, nprocs) with the ranks forked from the preloaded forkserver:
    rank i runs fn(i, *args); any rank's exception fails the call (and ends the other ranks)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(name, got, exact, naive, dtype):
    err, bound = accuracy.max_error(got, exact), accuracy.error_bound(exact, naive, dtype)
    assert err <= bound, f"{name}: error {err:.3e} > bound {bound:.3e}"


def _reference(q, k, v, dout, dtype, options):
    """(out, lse, dq, dk, dv) of the whole sequence, computed in `dtype` by the naive reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = fa.reference.attention(*leaves, return_lse=True, compute_dtype=dtype, **options)
    out.backward(dout.to(out.dtype))
    return (out, lse, *(t.grad for t in leaves))


def _rank_main(rank, world, method, dtype, port, backend="torch"):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for case, (b, s, h, hkv, d, options) in CASES.items():
            gen = torch.Generator().manual_seed(len(case))  # the same whole sequence on every rank
            total = s * world
            q, k, v = (torch.randn(b, total, heads, d, generator=gen).to(dtype) for heads in (h, hkv, hkv))
            dout = torch.randn(b, total, h, d, generator=gen).to(dtype)
            shards = [shard_sequence(t, rank, world, method).requires_grad_() for t in (q, k, v)]
            with fa.poisoned_outputs():
                out, lse = context_parallel_attention(*shards, method=method, return_lse=True, backend=backend,
                                                      **options)
                out.backward(shard_sequence(dout, rank, world, method))
            exact = _reference(q, k, v, dout, torch.float64, options)
            naive = _reference(q, k, v, dout, dtype, options)
            got = (out, lse, *(t.grad for t in shards))
            for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
                if name == "lse":  # (batch, heads, seqlen): shard along dim 2
                    local = tuple(shard_sequence(t.transpose(1, 2), rank, world, method).transpose(1, 2)
                                  for t in (e, n))
                else:
                    local = tuple(shard_sequence(t, rank, world, method) for t in (e, n))
                assert g.dtype == (torch.float32 if name == "lse" else dtype), f"{case} {name}: {g.dtype}"
                _check(f"{method} world {world} rank {rank} {case} {name}", g, *local, dtype)
    finally:
        dist.destroy_process_group()


# World sizes 2 and 3 in both dtypes; 4 (four processes on CI's two cores) in fp32.
WORLDS_AND_DTYPES = [(2, torch.float32), (2, torch.float16), (3, torch.float32), (3, torch.float16),
                     (4, torch.float32)]


@pytest.mark.parametrize("world, dtype", WORLDS_AND_DTYPES, ids=lambda x: str(x))
@pytest.mark.parametrize("method", ("ring", "zigzag", "allgather"))
def test_context_parallel_matches_whole_sequence_reference(world, method, dtype):
    _spawn(_rank_main, world, world, method, dtype, _free_port())


@pytest.mark.parametrize("method", ("ring", "zigzag", "allgather"))
def test_context_parallel_on_the_triton_kernels(method):
    """The same on backend="triton" (the Triton interpreter here; its backward reads the base-2 lse)."""
    _spawn(_rank_main, 2, 2, method, torch.float16, _free_port(), "triton")


def _zero_grads_main(rank, world, method, port):
    """Causal, with no gradient on the second half of the sequence: the keys there are seen only by those
    queries, so their dK and dV must be exactly 0 on whichever rank holds them (a block that should have
    been skipped, or an unwritten buffer, would leave something else)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(3)
        total = 8 * world
        q, k, v, dout = (torch.randn(1, total, 2, 16, generator=gen) for _ in range(4))
        dout[:, total // 2:] = 0
        shards = [shard_sequence(t, rank, world, method).requires_grad_() for t in (q, k, v)]
        with fa.poisoned_outputs():
            out = context_parallel_attention(*shards, method=method, causal=True, backend="torch")
            out.backward(shard_sequence(dout, rank, world, method))
        positions = shard_sequence(torch.arange(total)[None], rank, world, method)[0]
        late = positions >= total // 2
        for name, grad in (("dk", shards[1].grad), ("dv", shards[2].grad)):
            assert torch.equal(grad[:, late], torch.zeros_like(grad[:, late])), f"{method} rank {rank} {name}"
            if (~late).any():  # the early keys of the shard (ring: rank 0's, zigzag: both ranks' first chunk)
                assert grad[:, ~late].abs().sum() > 0, f"{method} rank {rank} {name}: early keys' gradients vanished"
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ("ring", "zigzag", "allgather"))
def test_keys_only_gradient_free_queries_see_get_exact_zero_gradients(method):
    _spawn(_zero_grads_main, 2, 2, method, _free_port())


# Packed batches (cu_seqlens): sequences of these lengths, packed, then split evenly across the ranks, so
# sequences start, end and span anywhere (world 2: 10 rows per rank; world 3: 8).
PACKED_LENGTHS = {2: [7, 9, 4], 3: [5, 11, 0, 8]}
PACKED_CASES = {
    "plain": (2, 2, dict()),
    "causal_gqa": (4, 2, dict(causal=True)),
    "causal_rope_window": (2, 1, dict(causal=True, window_size=(3, 0), rotary=fa.Rotary())),
    "sinusoidal": (2, 2, dict(sinusoidal=fa.Sinusoidal())),
}


def _packed_reference(q, k, v, dout, lengths, dtype, options):
    """(out, lse, dq, dk, dv) of each sequence alone (positions from 0), packed again."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    outs, lses, start = [], [], 0
    for n in lengths:
        rows = slice(start, start + n)
        out, lse = fa.reference.attention(*(t[None, rows] for t in leaves), return_lse=True, compute_dtype=dtype,
                                          **options)
        outs.append(out[0])
        lses.append(lse[0])
        start += n
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    out.backward(dout.to(out.dtype))
    return (out, lse, *(t.grad for t in leaves))


def _packed_main(rank, world, dtype, port, backend):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        lengths = PACKED_LENGTHS[world]
        total = sum(lengths)
        rows = slice(rank * total // world, (rank + 1) * total // world)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        for case, (h, hkv, options) in PACKED_CASES.items():
            gen = torch.Generator().manual_seed(len(case))
            q, k, v = (torch.randn(total, heads, 16, generator=gen).to(dtype) for heads in (h, hkv, hkv))
            dout = torch.randn(total, h, 16, generator=gen).to(dtype)
            shards = [t[rows].clone().requires_grad_() for t in (q, k, v)]
            with fa.poisoned_outputs():
                out, lse = context_parallel_attention(*shards, method="allgather", cu_seqlens=cu, return_lse=True,
                                                      backend=backend, **options)
                out.backward(dout[rows])
            exact = _packed_reference(q, k, v, dout, lengths, torch.float64, options)
            naive = _packed_reference(q, k, v, dout, lengths, dtype, options)
            got = (out, lse, *(t.grad for t in shards))
            for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
                local = (e[:, rows], n[:, rows]) if name == "lse" else (e[rows], n[rows])
                _check(f"packed world {world} rank {rank} {case} {name}", g, *local, dtype)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world, dtype, backend", [(2, torch.float32, "torch"), (3, torch.float16, "torch"),
                                                    (2, torch.float16, "triton")], ids=lambda x: str(x))
def test_packed_batches_spanning_ranks_match_each_sequence_alone(world, dtype, backend):
    """Packed sequences split across ranks wherever the even split falls (allgather): each rank's rows match
    the float64 reference of each sequence alone, outputs, lse and gradients."""
    _spawn(_packed_main, world, world, dtype, _free_port(), backend)


def _errors_main(rank, world, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        q = torch.randn(1, 4 + rank, 2, 16)  # rank 1's shard is longer
        with pytest.raises(ValueError, match="shard shapes differ"):
            context_parallel_attention(q, q, q, backend="torch")
        with pytest.raises(ValueError, match="method must be one of"):
            context_parallel_attention(q, q, q, method="zigzag-ish", backend="torch")
        odd = torch.randn(1, 5, 2, 16)
        with pytest.raises(ValueError, match="even shard length"):
            context_parallel_attention(odd, odd, odd, method="zigzag", backend="torch")
        packed, cu = torch.randn(4, 2, 16), torch.tensor([0, 3, 8], dtype=torch.int32)
        with pytest.raises(ValueError, match="packed batches .* run with method='allgather'"):
            context_parallel_attention(packed, packed, packed, cu_seqlens=cu, backend="torch")
        with pytest.raises(ValueError, match="prefix sums from 0 to the packed length"):
            context_parallel_attention(packed, packed, packed, method="allgather", cu_seqlens=cu[:2], backend="torch")
        with pytest.raises(ValueError, match="causal attention .* or full attention"):
            context_parallel_attention(packed, packed, packed, method="allgather", cu_seqlens=cu, window_size=(2, 2),
                                       backend="torch")
        even = torch.randn(1, 4, 2, 16)
        with pytest.raises(ValueError, match="window_size left must be >= 0"):
            context_parallel_attention(even, even, even, window_size=(-2, 0), backend="torch")
    finally:
        dist.destroy_process_group()


def test_bad_calls_are_refused_naming_the_problem():
    _spawn(_errors_main, 2, 2, _free_port())


@pytest.mark.parametrize("method", ("ring", "zigzag", "allgather"))
def test_shard_and_unshard_are_inverse(method):
    x = torch.arange(2 * 12 * 3).reshape(2, 12, 3)
    shards = [shard_sequence(x, rank, 3, method) for rank in range(3)]
    assert torch.equal(unshard_sequence(shards, method), x)
    if method == "zigzag":  # rank 0 holds the first and the last of 6 chunks
        assert torch.equal(shards[0], torch.cat([x[:, :2], x[:, 10:]], dim=1))
    with pytest.raises(ValueError, match="does not split into"):
        shard_sequence(x[:, :10], 0, 3, method)


def test_without_a_process_group_the_error_says_so():
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match="torch.distributed initialized"):
        context_parallel_attention(q, q, q)


def _bench_main(rank, world, port, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from flashattn_py.tools.bench.context_parallel import main

    assert main(["--seqlen", "32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--iters", "1",
                 "--json", str(out)]) == 0


def test_bench_cp_mode_times_every_method_against_one_device(tmp_path):
    """`torchrun ... -m flashattn_py.bench cp` (here two spawned gloo processes): a row per method and
    mode, with the single-device baseline and, for the ring methods' forward, the overlap."""
    import json

    out = tmp_path / "cp.json"
    _spawn(_bench_main, 2, 2, _free_port(), out)
    rows = json.loads(out.read_text())
    assert {(r["method"], r["mode"]) for r in rows} == {(m, mode) for m in ("ring", "zigzag", "allgather")
                                                       for mode in ("fwd", "fwd+bwd")}
    assert all(r["ms"] > 0 and r["single_device_ms"] > 0 for r in rows)
    assert all(0.0 <= r["overlap"] <= 1.0 for r in rows if r["method"] != "allgather" and r["mode"] == "fwd")
