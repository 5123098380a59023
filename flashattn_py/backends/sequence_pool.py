"""Independent per-sequence kernel calls (torch_fused.forward_sequences / backward_sequences) spread over a
pool of single-threaded workers, instead of each call forking and joining torch's intra-op threads.

A decoding step or a packed batch makes one fused-kernel call per run of sequences, each a few tens of
microseconds of work. Run one after the other, every call splits its few work items over torch's threads
and waits for all of them: a fixed cost per call, and on a shared machine (more runnable threads than
cores) a wait for a descheduled thread that costs milliseconds (measured on the 2-core machine under load:
a 32-sequence decoding step 11x the dense call with 2 threads, 1.5x with 1). Here each worker runs whole
calls on one thread (torch's kernels release the GIL, so the workers' kernels overlap each other and the
Python of the next call), as many workers as torch has threads.

torch.set_num_threads in a worker sets that thread's OpenMP thread count only (the OpenMP backend keeps
it per thread); `_pool` checks that once and runs everything inline where it does not hold. A worker
does not inherit the caller's thread-local state: it runs under no_grad (the caller is inside the
attention custom op, below autograd), and under the caller's inference mode (else writing into an output
made in inference mode raises) and CPU autocast (the kernel calls see what they would see inline).
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

_lock = threading.Lock()
_state: dict = {}  # "pool": the executor or None (inline), "threads": torch's thread count it was made for


def _forget_after_fork() -> None:
    """A forked child (e.g. a DataLoader worker) makes its own pool: the parent's threads do not exist there."""
    global _lock
    _lock = threading.Lock()
    _state.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _single_threaded(started: threading.Barrier) -> None:
    # torch sets a thread's count on its first use from a process-wide value (the last one set by any
    # thread): that first use happens here, before this thread sets its own count of 1.
    torch.get_num_threads()
    torch.set_num_threads(1)
    started.wait()


def _pool() -> ThreadPoolExecutor | None:
    """The workers for torch's current thread count, or None: one thread, or a build where a worker's
    set_num_threads changes every thread's count (checked once per count)."""
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    with _lock:
        if _state.get("threads") != threads:
            old = _state.get("pool")
            if old is not None:
                old.shutdown(wait=False)
            pool = ThreadPoolExecutor(threads, thread_name_prefix="flashattn_cpu")
            started = threading.Barrier(threads + 1)
            for _ in range(threads):  # all started now (each task waits for the others: a thread each)
                pool.submit(_single_threaded, started)
            started.wait()
            per_thread = torch.get_num_threads() == threads
            torch.set_num_threads(threads)  # the process-wide value back to the caller's (threads made later)
            if not per_thread:  # the count is one for all threads in this build: stay inline
                pool.shutdown(wait=False)
                pool = None
            _state.update(pool=pool, threads=threads)
        return _state["pool"]


def run(items: Sequence, work: Callable[[object], None], cost: Callable[[object], float], min_items: int = 4) -> None:
    """work(item) for every item (each writes its own disjoint part of the results). With the pool (at least
    min_items and several threads): the items cut in order into one chunk per worker of about equal cost
    (cost(item): its relative work), one hand-over per worker, not per item, each kernel single-threaded,
    the caller waiting. Else inline."""
    pool = _pool() if len(items) >= min_items else None
    if pool is None:
        for item in items:
            work(item)
        return

    as_caller = _callers_state()

    def run_chunk(chunk):
        with as_caller():
            for item in chunk:
                work(item)

    futures = [pool.submit(run_chunk, c) for c in _chunks(items, cost, torch.get_num_threads())]
    for future in futures:
        future.result()  # waits for all; re-raises a worker's exception here


def _callers_state():
    """A context manager giving a worker the calling thread's inference mode and CPU autocast, under no_grad."""
    inference = torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")

    @contextlib.contextmanager
    def as_caller():
        # no_grad last: inference_mode(False) turns grad mode on
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
            yield
    return as_caller


def _chunks(items: Sequence, cost: Callable[[object], float], count: int) -> list[list]:
    """items cut in order into at most `count` runs of about equal total cost."""
    costs = [cost(item) for item in items]
    share = sum(costs) / count
    chunks, chunk, load = [], [], 0.0
    for item, c in zip(items, costs):
        chunk.append(item)
        load += c
        if load >= share * (len(chunks) + 1) and len(chunks) < count - 1:
            chunks.append(chunk)
            chunk = []
    return chunks + [chunk] if chunk else chunks
