"""Measure one Case: check every implementation against the float64 reference, then time the correct
ones (median ms, TFLOP/s) and record their peak memory. A wrong result is reported, never timed."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from flashattn_py.tools import accuracy

from . import peers as peer_registry
from .cases import Case, attention_flops, check_case


@dataclass
class Row:
    case: Case
    mode: str
    implementation: str
    ours: bool
    status: str  # "ok", "wrong: ...", "unavailable: ...", "failed: ...", "not timed: ..."
    ms: Optional[float] = None
    tflops: Optional[float] = None
    peak_mib: Optional[float] = None
    ratio_to_best_peer: Optional[float] = None  # TFLOP/s / best non-ours TFLOP/s of the same case+mode

    def as_dict(self) -> dict:
        return {**self.case.as_dict(), "mode": self.mode, "implementation": self.implementation, "ours": self.ours,
                "status": self.status, "ms": self.ms, "tflops": self.tflops, "peak_mib": self.peak_mib,
                "ratio_to_best_peer": self.ratio_to_best_peer}


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    """q, k, v, dout (bshd) of the case, N(0, 1) entries."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(heads):
        return torch.randn(case.batch, case.seqlen, heads, case.head_dim, generator=gen).to(device, case.torch_dtype)

    return rand(case.heads), rand(case.kv_heads), rand(case.kv_heads), rand(case.heads)


def _outputs(fn: Callable, q, k, v, dout, with_grads: bool):
    if not with_grads:
        with torch.no_grad():
            return (fn(q, k, v),)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, dout))


def check_references(case: Case, device: torch.device, with_grads: bool):
    """(inputs, float64 results, naive results in the case's dtype) of the check-sized case: computed
    once per case and shared by every implementation's check."""
    small = check_case(case)
    inputs = make_inputs(small, device, seed=1)
    exact = _outputs(peer_registry.reference(small), *inputs, with_grads)
    naive = _outputs(peer_registry.reference(small, compute_dtype=small.torch_dtype), *inputs, with_grads)
    return inputs, exact, naive


def check(case: Case, fn: Callable, device: torch.device, with_grads: bool, references=None) -> str:
    """"ok", or what is wrong: output (and gradients) against float64 within the accuracy rule.
    references: check_references(case, device, with_grads), when several implementations share them."""
    (q, k, v, dout), exact, naive = references or check_references(case, device, with_grads)
    try:
        got = _outputs(fn, q, k, v, dout, with_grads)
    except (RuntimeError, ValueError, NotImplementedError) as err:  # a peer that rejects this case (e.g.
        return f"unavailable: {_first_line(err)}"                     # an SDPA backend without a kernel for it)
    except Exception as err:  # anything else is a bug in the peer or here: reported as such
        return f"failed: {_first_line(err)}"
    for name, g, e, n in zip(("out", "dq", "dk", "dv"), got, exact, naive):
        try:
            err = accuracy.max_error(g, e)
        except AssertionError as problem:
            return f"wrong: {name}: {problem}"
        bound = accuracy.error_bound(e, n, case.torch_dtype)
        if err > bound:
            return f"wrong: {name} error {err:.2e} > bound {bound:.2e}"
    return "ok"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:150] if text else ''}"


def step_for(fn: Callable, mode: str, q, k, v, dout) -> Callable:
    """A zero-argument callable doing one `mode` iteration of fn."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return fn(q, k, v)
        return fwd
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if mode == "bwd":
        out = fn(*leaves)
        return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)
    return lambda: torch.autograd.grad(fn(*leaves), leaves, dout)


def gpu_timer(step: Callable) -> float:
    import triton.testing

    return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")


def cpu_timer(step: Callable, reps: int = 5, budget_s: float = 1.0) -> float:
    """Median ms of at least `reps` runs of one step after a warm-up, more while they fit in budget_s."""
    return interleaved_cpu_timer([step], reps, budget_s)[0]


def interleaved_cpu_timer(steps: list[Callable], reps: int = 5, budget_s: float = 1.0) -> list[float]:
    """Median ms of each step, timed in rounds that run every step once (each round starting one step
    later), at least `reps` rounds after one warm-up round, more while they fit in budget_s per step
    (at most 50). On a small shared CPU the load changes over seconds (another job's compile starts,
    page faults of fresh buffers come and go): steps timed one after the other would each see a
    different machine, steps timed in the same rounds see the same one, so their ratio is fair."""
    for step in steps:
        step()
    times: list[list[float]] = [[] for _ in steps]
    budget_ms = budget_s * 1e3 * len(steps)
    rounds = 0
    while rounds < reps or (sum(map(sum, times)) < budget_ms and rounds < 50):
        for i in range(len(steps)):
            index = (rounds + i) % len(steps)
            start = time.perf_counter()
            steps[index]()
            times[index].append((time.perf_counter() - start) * 1e3)
        rounds += 1
    return [statistics.median(t) for t in times]


cpu_timer.interleaved = interleaved_cpu_timer  # measure_case times a case's implementations together


def peak_memory_mib(step: Callable, device: torch.device) -> Optional[float]:
    """Memory the step allocates on top of what is already live (inputs, saved activations)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_case(case: Case, modes, device: torch.device, timer: Callable, only=None, skip=(),
                 nvtx: bool = False) -> list[Row]:
    """Rows for every implementation x mode of this case (only: these names; skip: names containing
    one of these); ratio_to_best_peer filled per mode."""
    impls = peer_registry.implementations(case, device)
    if only:
        impls = {n: p for n, p in impls.items() if n in only}
    impls = {n: p for n, p in impls.items() if not any(s in n for s in skip)}
    q, k, v, dout = make_inputs(case, device)
    with_grads = any(m != "fwd" for m in modes)
    references = check_references(case, device, with_grads)
    rows, timed = [], []  # timed: (row, make_step) of every correct implementation x mode
    for name, peer in impls.items():
        with environment(peer.env):
            status = (f"unavailable: {peer.unavailable}" if peer.fn is None
                      else check(case, peer.fn, device, with_grads, references))
        if status == "ok" and device.type == "cpu" and not peer.timed_on_cpu:
            status = "not timed: Triton interpreter (correctness only; its speed is no performance figure)"
        for mode in modes:
            row = Row(case, mode, name, peer.ours, status)
            rows.append(row)
            if status != "ok":
                continue
            label = f"{name} {mode} {case.label()}" if nvtx and device.type == "cuda" else None
            timed.append((row, lambda fn=peer.fn, mode=mode, label=label, env=peer.env:
                          _step(fn, mode, (q, k, v, dout), label, env)))
    for mode in modes:
        _time_rows([(row, make) for row, make in timed if row.mode == mode], timer, device)
    for row in rows:
        if row.ms is not None:
            row.tflops = attention_flops(case, row.mode) / row.ms / 1e9
    _fill_ratios(rows)
    return rows


def _step(fn: Callable, mode: str, inputs, nvtx_label, env: dict) -> Callable:
    with environment(env):  # "bwd" runs the forward here, once
        step = step_for(fn, mode, *inputs)
    if env:
        inner = step

        def step():
            with environment(env):
                return inner()
    return step if nvtx_label is None else _with_nvtx(step, nvtx_label)


@contextlib.contextmanager
def environment(env: dict):
    """os.environ with `env` set, restored after (a peer whose backend reads an opt-in at each call)."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _time_rows(timed: list, timer: Callable, device: torch.device) -> None:
    """Fill ms (and peak memory) of the (row, make_step) pairs of one case and mode: together in rounds
    when the timer interleaves (the CPU's: the ratios between implementations are then of one machine
    state), else one after the other, each step made just before it is timed (a GPU holds one
    implementation's saved activations at a time)."""
    interleaved = getattr(timer, "interleaved", None)
    if interleaved is not None:
        for (row, _), ms in zip(timed, interleaved([make() for _, make in timed]) if timed else []):
            row.ms = ms
        return
    for row, make in timed:
        try:
            step = make()
            row.ms = timer(step)
            row.peak_mib = peak_memory_mib(step, device)
        except torch.cuda.OutOfMemoryError:
            row.status, row.ms = "failed: out of memory", None
            torch.cuda.empty_cache()


def _with_nvtx(step: Callable, label: str) -> Callable:
    def ranged():
        torch.cuda.nvtx.range_push(label)
        try:
            return step()
        finally:
            torch.cuda.nvtx.range_pop()
    return ranged


def _fill_ratios(rows: list[Row]) -> None:
    for mode in {r.mode for r in rows}:
        timed = [r for r in rows if r.mode == mode and r.tflops is not None]
        best_peer = max((r.tflops for r in timed if not r.ours), default=None)
        for r in timed:
            r.ratio_to_best_peer = r.tflops / best_peer if best_peer else None
