"""Static facts about a Triton kernel, compiled for a named GPU without a GPU.

CI has no GPU, so we cannot launch our kernels there or read
``CompiledKernel.n_regs`` (that needs a CUDA driver). What we can do is
compile each kernel ahead of time for sm_80 / sm_90a and
check the static facts -- it uses tensor cores (``mma.sync`` / ``wgmma``), it
does not spill, and how many registers and how much shared memory it needs.

Triton's compiler runs entirely on the host: given an explicit ``GPUTarget``
it produces PTX and runs the ptxas bundled in the wheel, no driver needed.
"""
import contextlib
import hashlib
import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.runtime.cache import get_cache_manager

# Tensor-core instructions we count in the PTX. 'wgmma.mma_async' does not
# contain 'mma.sync', so plain substring counts do not double count.
MMA_PATTERNS = ("mma.sync", "wgmma.mma_async", "ldmatrix")


@dataclass(frozen=True)
class KernelFacts:
    name: str  # kernel name
    arch: int  # 80 or 90
    registers: int  # per thread, from ptxas -v
    spill_stores: int  # bytes, from ptxas -v
    spill_loads: int  # bytes, from ptxas -v
    shared_bytes: int  # shared memory the kernel needs (metadata.shared)
    mma_instructions: dict[str, int]  # static counts in the PTX text
    # wgmma instruction shapes ("m64n128k16": 64 x 128 outputs per warpgroup) and their static counts:
    # a narrow N (n16, n32) does little MMA work per issued instruction and per accumulator wait.
    wgmma_shapes: dict[str, int] = field(default_factory=dict)
    tma_instructions: int = 0  # cp.async.bulk.tensor (TMA loads, stores and reductions)
    # The innermost loops of the SASS (the kernels' key or query loops), in code order, each as
    # {"instructions", "mma", "memory", "alu"} static counts (sass_loops).
    loops: tuple = ()


def compile_facts(fn, signature: dict[str, str], constexprs: dict[str, object], arch: int,
                  num_warps: int = 4, num_stages: int = 2,
                  divisible_by_16: Iterable[str] | None = None, loops: bool = False) -> KernelFacts:
    """Compile ``fn`` for ``sm_{arch}`` (sm_90a for 90) and report static facts.

    ``signature`` maps runtime argument names to Triton types ("*fp16",
    "i32", "fp32", ...). Constexpr arguments go in ``constexprs``; they may
    also be listed in ``signature`` as "constexpr" (what Triton's own launcher
    does), and are added there if missing.

    ``divisible_by_16`` names the arguments to specialise as multiples of 16,
    as Triton's launcher does at run time (pointers of torch tensors, strides
    and sizes that are multiples of 16). Loads are only vectorised with these
    hints, so without them the facts would not match a real launch. Default:
    every pointer argument; pass the names explicitly to add ints (strides).

    ``loops``: also disassemble the cubin and count its innermost loops' instructions (sass_loops).
    """
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(fn, InterpretedFunction):
        # @triton.jit returns an interpreter wrapper when TRITON_INTERPRET=1 was
        # set at import time; that object has no AST source to compile.
        raise RuntimeError(
            f"{fn.__name__} was imported with TRITON_INTERPRET=1, so it is an interpreter "
            "function; static compilation needs the kernel module imported without "
            "TRITON_INTERPRET=1 (e.g. in a subprocess with that variable removed).")
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"expected a @triton.jit function, got {type(fn).__name__}")

    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    if divisible_by_16 is None:
        divisible_by_16 = [k for k, ty in signature.items() if ty.startswith("*")]
    # Same attribute format the launcher builds via backend.parse_attr("D").
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in divisible_by_16}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    with _triton_ptxas_log() as compile_log:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = kernel.asm.get("ptx")
    if ptx is None:  # TRITON_STORE_BINARY_ONLY=1 drops the PTX from the cache
        raise RuntimeError("compiled kernel has no PTX; unset TRITON_STORE_BINARY_ONLY")

    # Triton's own ptxas run is ours (below) plus -lineinfo, which changes no code, unless it also passes
    # --fmad=false (fp fusion off) or extra options: its report is used only where it is the same run.
    same_run = getattr(kernel.metadata, "enable_fp_fusion", False) and not getattr(kernel.metadata, "ptx_options", "")
    registers, spill_stores, spill_loads = _ptxas_usage(ptx, arch, compile_log.getvalue() if same_run else "")
    return KernelFacts(
        name=kernel.metadata.name,
        arch=arch,
        registers=registers,
        spill_stores=spill_stores,
        spill_loads=spill_loads,
        shared_bytes=kernel.metadata.shared,
        mma_instructions={p: ptx.count(p) for p in MMA_PATTERNS},
        wgmma_shapes=wgmma_shapes(ptx),
        tma_instructions=ptx.count("cp.async.bulk.tensor") + ptx.count("cp.reduce.async.bulk.tensor"),
        loops=sass_loops(kernel.asm["cubin"]) if loops and "cubin" in kernel.asm else (),
    )


def wgmma_shapes(ptx: str) -> dict[str, int]:
    """{"m64nNkK": static count} of the wgmma instructions in the PTX."""
    shapes: dict[str, int] = {}
    for shape in re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx):
        shapes[shape] = shapes.get(shape, 0) + 1
    return dict(sorted(shapes.items(), key=lambda kv: int(kv[0].split("n")[1].split("k")[0])))


@contextlib.contextmanager
def _triton_ptxas_log():
    """Captures the `ptxas -v` report Triton prints (TRITON_DUMP_PTXAS_LOG, not part of its cache key) when
    triton.compile runs ptxas, i.e. on a cache miss; empty on a hit."""
    saved, knobs.nvidia.dump_ptxas_log = knobs.nvidia.dump_ptxas_log, True
    try:
        with contextlib.redirect_stdout(io.StringIO()) as log:
            yield log
    finally:
        knobs.nvidia.dump_ptxas_log = saved


def _ptxas_usage(ptx: str, arch: int, compile_log: str = "") -> tuple[int, int, int]:
    """(registers, spill stores, spill loads) from ptxas -v on ``ptx``: from ``compile_log`` when
    triton.compile has just run ptxas -v on it (its log, captured), else from a report saved in Triton's
    cache under a hash of the PTX and the ptxas binary, else from running Triton's bundled ptxas -v.

    Without the saved reports, a warm Triton cache made the compile nearly free and this ptxas run ~85%
    of a static report (tests/test_static_report.py: ptxas on ~600 kernel instances)."""
    # Same binary and --gpu-name Triton itself uses for this arch (sm_90a for 90,
    # which is what enables wgmma), plus the register-allocation flag Triton
    # passes, so the counts match what the launched kernel would get.
    tool = get_ptxas(arch)
    gpu = sm_arch_from_capability(arch)
    flags = ["-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}"]
    stat = os.stat(tool.path)
    key = hashlib.sha256("\0".join([tool.path, tool.version, str(stat.st_size), str(stat.st_mtime_ns), *flags, ptx])
                         .encode()).hexdigest()
    cache = get_cache_manager(key)
    saved = cache.get_file("ptxas-v.log")
    if re.search(r"Used \d+ registers", compile_log):
        log = compile_log
        cache.put(log, "ptxas-v.log", binary=False)
    elif saved is not None:
        log = Path(saved).read_text()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ptx_file = Path(tmp) / "kernel.ptx"
            ptx_file.write_text(ptx)
            cmd = [tool.path, *flags, str(ptx_file), "-o", str(Path(tmp) / "kernel.cubin")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        log = proc.stderr
        cache.put(log, "ptxas-v.log", binary=False)
    # "ptxas info    : Used 128 registers, used 1 barriers, ..."
    # "ptxas info    : 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"could not parse ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


# Per-SM limits (CUDA occupancy calculator figures): registers, warps, blocks, shared memory (bytes
# usable per SM, and the 1 KB the runtime reserves per block).
_SM_LIMITS = {80: dict(regs=65536, warps=64, blocks=32, smem=167936),
              86: dict(regs=65536, warps=48, blocks=16, smem=102400),
              89: dict(regs=65536, warps=48, blocks=24, smem=102400),
              90: dict(regs=65536, warps=64, blocks=32, smem=233472)}
_SMEM_RESERVED_PER_BLOCK = 1024


def theoretical_occupancy(arch: int, registers: int, shared_bytes: int, num_warps: int) -> float:
    """Fraction of the SM's warp slots a kernel can fill, limited by registers (allocated per warp in
    units of 256), shared memory and the block limit."""
    lim = _SM_LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = (lim["regs"] // regs_per_warp) // num_warps if regs_per_warp else lim["blocks"]
    smem = shared_bytes + _SMEM_RESERVED_PER_BLOCK
    by_smem = lim["smem"] // smem
    blocks = min(by_regs, by_smem, lim["blocks"], lim["warps"] // num_warps)
    return blocks * num_warps / lim["warps"]


# SASS opcode classes for sass_loops (the opcode before its first '.'); anything else is "alu":
# arithmetic, compares, selects, conversions, moves, address math, shuffles, MUFU (exp2, rcp).
_MMA_OPS = {"HMMA", "HGMMA", "IMMA", "IGMMA", "BMMA", "QGMMA", "DMMA"}
_MEMORY_OPS = {"LDG", "STG", "LDS", "STS", "LDSM", "STSM", "LDGSTS", "LDGDEPBAR", "LD", "ST", "LDL", "STL",
               "RED", "REDG", "ATOM", "ATOMG", "ATOMS", "UTMALDG", "UTMASTG", "UTMAREDG", "UTMAPF", "UTMACCTL",
               "UBLKCP", "UBLKRED", "SYNCS", "FENCE", "MEMBAR", "CCTL"}
_CONTROL_OPS = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BAR", "BSSY", "BSYNC", "WARPSYNC", "NOP", "YIELD",
                "DEPBAR", "WARPGROUP", "ARRIVES", "BPT", "ERRBAR", "ELECT", "NANOSLEEP", "VOTEU", "PREEXIT", "ACQBULK"}
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z0-9_]+)([^;]*);")
_MIN_LOOP = 16  # shorter backward branches are barrier spin-waits, not loops over tiles


def sass_loops(cubin: bytes) -> tuple:
    """Static instruction counts of the innermost loops of a cubin's SASS (Triton's bundled cuobjdump).

    A loop is a backward branch over at least _MIN_LOOP instructions; innermost: no other such loop
    inside it. Each is counted by class: tensor-core MMAs, memory (loads, stores, TMA, barriers on
    them), control, and the rest, "alu": the non-MMA work that, divided by the loop's scores per
    thread, says what a key block costs besides its matmuls (mask, softmax, conversions, addresses).
    Empty when cuobjdump is missing."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return ()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True).stdout
    code = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_SASS_LINE.search, sass.splitlines()) if m]
    index = {addr: i for i, (addr, _, _) in enumerate(code)}
    spans = []
    for i, (addr, op, operands) in enumerate(code):
        target = re.search(r"0x([0-9a-f]+)", operands) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr and int(target.group(1), 16) in index:
            start = index[int(target.group(1), 16)]
            if i - start >= _MIN_LOOP:
                spans.append((start, i))
    innermost = [a for a in spans if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in spans)]
    loops = []
    for start, end in sorted(innermost):
        ops = [op for _, op, _ in code[start:end + 1]]
        mma = sum(op in _MMA_OPS for op in ops)
        memory = sum(op in _MEMORY_OPS for op in ops)
        control = sum(op in _CONTROL_OPS for op in ops)
        loops.append({"instructions": len(ops), "mma": mma, "memory": memory, "alu": len(ops) - mma - memory - control})
    return tuple(loops)
