"""Profiling hooks: a torch.profiler Chrome trace of one pass over every implementation, and a loop
over one implementation/config for Nsight Compute (``ncu --nvtx --nvtx-include "<name>/"``)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import peers as peer_registry
from .cases import Case
from .runner import check, make_inputs, step_for


def chrome_trace(cases: list[Case], modes, device: torch.device, path: Path, only=None) -> Path:
    """One iteration of each correct implementation x mode per case, each in an NVTX range and a
    profiler record_function named '<implementation> <mode> <case>', written as a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = []
    for case in cases:
        q, k, v, dout = make_inputs(case, device)
        for name, peer in peer_registry.implementations(case, device).items():
            if peer.fn is None or (only and name not in only):
                continue
            for mode in modes:
                step = step_for(peer.fn, mode, q, k, v, dout)
                step()  # compile / warm up outside the trace
                steps.append((f"{name} {mode} {case.label()}", step))
    with profile(activities=activities) as prof:
        for label, step in steps:
            with record_function(label):
                if device.type == "cuda":
                    torch.cuda.nvtx.range_push(label)
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.nvtx.range_pop()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return path


def kernel_loop(case: Case, name: str, mode: str, device: torch.device, iters: int) -> str:
    """Run implementation `name` on `case` `iters` times inside one NVTX range named `name`."""
    impls = peer_registry.implementations(case, device)
    if name not in impls:
        raise SystemExit(f"--kernel: unknown implementation {name!r}; choose from {sorted(impls)}")
    peer = impls[name]
    if peer.fn is None:
        raise SystemExit(f"--kernel {name}: unavailable here: {peer.unavailable}")
    status = check(case, peer.fn, device, with_grads=mode != "fwd")
    if status != "ok":
        raise SystemExit(f"--kernel {name}: {status}")
    q, k, v, dout = make_inputs(case, device)
    step = step_for(peer.fn, mode, q, k, v, dout)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push(name)
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    return f"ran {name} {mode} {case.label()} x{iters}"
