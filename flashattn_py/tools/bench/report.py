"""``python -m flashattn_py.tools.bench report``: the static kernel report, no GPU needed.

Triton: every kernel compiled as its launcher launches it, for sm_80 and sm_90a
(:mod:`flashattn_py.tools.static_report`): registers per thread, spills, shared memory, tensor-core
instruction kind and count, theoretical occupancy. CUDA: ptxas' resource report of the extension's
kernels (:mod:`flashattn_py.tools.cuda_report`) when nvcc is available. Exits 1 when a default config spills
(CI runs it), 2 when it cannot run at all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _triton_rows(args) -> list[dict]:
    """The Triton report runs in a child process: triton.jit fixes the interpreter choice at import,
    and the static compile needs the real (non-interpreted) kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        json_path = os.path.join(tmp, "triton.json")
        cmd = [sys.executable, "-m", "flashattn_py.tools.static_report", "--arch", *map(str, args.arch),
               "--dtype", *args.dtype, "--head-dim", *map(str, args.head_dim), "--pe", *args.pe, "--json", json_path]
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(2)
        with open(json_path) as f:
            return json.load(f)


def _cuda_rows(args) -> list[dict]:
    try:
        from flashattn_py.tools import cuda_report
    except ImportError:
        print("\nCUDA kernels: no report (flashattn_py.tools.cuda_report unavailable)")
        return []
    rows, problem = cuda_report.resource_rows(archs=args.arch)
    if problem:
        print(f"\nCUDA kernels: no report ({problem})")
        return []
    print("\nCUDA kernels (nvcc -Xptxas -v)")
    print(cuda_report.format_table(rows))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashattn_py.tools.bench report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    p.add_argument("--dtype", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--pe", nargs="+", default=["none", "rope-prepass", "decode", "paged-varlen"],
                   help="Triton variants (static_report --pe): positional encodings, score mods, and "
                        "'decode' (one flash_attn_with_kvcache step: decode tiles, paged cache, split-K), "
                        "'paged-varlen' (one flash_attn_varlen_func(block_table=) call)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA extension's report")
    p.add_argument("--json", metavar="PATH", help="write {triton: rows, cuda: rows} as JSON")
    args = p.parse_args(argv)
    print("Triton kernels (compiled for each arch as the launchers launch them)")
    triton_rows = _triton_rows(args)
    cuda_rows = [] if args.no_cuda else _cuda_rows(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton_rows, "cuda": cuda_rows}, f, indent=1)
    spilling = [r for r in triton_rows if r["facts"]["spill_stores"] or r["facts"]["spill_loads"]]
    spilling += [r for r in cuda_rows if r.get("spill_stores") or r.get("spill_loads")]
    if spilling:
        print(f"\nFAIL: {len(spilling)} kernel(s) spill in default configs", file=sys.stderr)
        return 1
    print("\nno spills in any default config")
    return 0
