"""ptxas' resource report of the CUDA extension's kernels (registers, spills, stack, shared memory per
kernel instance and arch), read from the log the CMake build keeps (csrc/ptxas_log.py merges it into
build/cmake/ptxas.log). Used by tests/test_cuda_build.py and ``python -m flashattn_py.tools.bench report``."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_LOG = ROOT / "build" / "cmake" / "ptxas.log"

_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_SPILLS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
                     r"(?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


def parse_ptxas(text: str) -> dict:
    """{(kernel, arch): {"registers", "spill_stores", "spill_loads", "stack", "smem"}} from ptxas -v output."""
    kernels, current = {}, None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = (m["name"], m["arch"])
            kernels[current] = {"registers": None, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
        elif current and (m := _SPILLS.search(line)):
            kernels[current].update(stack=int(m["stack"]), spill_stores=int(m["stores"]), spill_loads=int(m["loads"]))
        elif current and (m := _USED.search(line)):
            kernels[current]["registers"] = int(m["regs"])
            if s := _SMEM.search(line):
                kernels[current]["smem"] = int(s["smem"])
    return kernels


def demangle(names) -> dict:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return dict(zip(names, names))
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else dict(zip(names, names))


def table(kernels: dict) -> str:
    names = demangle(sorted({name for name, _ in kernels}))
    rows = [f"{'arch':6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'stack':>5} {'smem':>6}  kernel"]
    for (name, arch), r in sorted(kernels.items(), key=lambda item: (item[0][1], names[item[0][0]])):
        rows.append(f"{arch:6} {r['registers']!s:>4} {r['spill_stores']:>8} {r['spill_loads']:>8} {r['stack']:>5} "
                    f"{r['smem']:>6}  {names[name]}")
    return "\n".join(rows)


def find_cuobjdump(nvcc: str | None = None) -> str | None:
    """The toolkit's cuobjdump, else the one Triton ships (any CUDA 12+ cuobjdump reads sm_80/90)."""
    candidates = [Path(nvcc).parent / "cuobjdump"] if nvcc else []
    candidates += [Path("/usr/local/cuda/bin/cuobjdump")]
    found = next((str(c) for c in candidates if c.exists()), None) or shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


_FUNCTION = re.compile(r"Function : (\S+)")
_SASS_ARCH = re.compile(r"arch = (sm_\w+)")
_TENSOR_CORE = re.compile(r"\b(HG?MMA)\b")


def tensor_core_counts(objects, cuobjdump: str) -> dict:
    """{(mangled kernel, arch): {"HMMA": n, "HGMMA": n}} from the objects' SASS."""
    counts, arch, function = {}, None, None
    for obj in objects:
        text = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True).stdout
        for line in text.splitlines():
            if m := _SASS_ARCH.search(line):
                arch = m[1]
            elif m := _FUNCTION.search(line):
                function = m[1]
            elif function and (m := _TENSOR_CORE.search(line)):
                entry = counts.setdefault((function, arch), {"HMMA": 0, "HGMMA": 0})
                entry[m[1]] += 1
    return counts


_KERNEL_AND_HEAD_DIM = re.compile(r"(attention_\w+_kernel)<[^,]+, (?:[\w:]+Config<)?(\d+)")
# The per-sequence layout instance (variable lengths, paged K/V, split-K: csrc/sequence.h) has `true` as its
# next-to-last template argument, the score-mods instance (csrc/score_mods.h) as its last. The forward's
# layout instances launch differently and are listed as "<kernel>[layout]"; score-mods instances with their
# own tiles (the forward's dense ones, dK/dV's) as "<kernel>[mods]".
_INSTANCE_FLAGS = re.compile(r", (true|false), (true|false)>\(")


def instance_launch(launches: dict, demangled: str):
    """(threads, dynamic smem bytes) of a demangled kernel instance, (None, None) when unknown."""
    m = _KERNEL_AND_HEAD_DIM.search(demangled)
    if not m:  # a kernel with no head-dim parameter is listed with head_dim 0
        name = re.search(r"(attention_\w+_kernel)<", demangled)
        return launches.get((name[1], 0), (None, None)) if name else (None, None)
    kernel, head_dim = m[1], int(m[2])
    flags = _INSTANCE_FLAGS.search(demangled)
    layout, mods = (flags[1] == "true", flags[2] == "true") if flags else (False, False)
    variants = ["[layout]"] * layout + ["[mods]"] * mods + [""]  # the first one the extension lists
    kernel = next(kernel + v for v in variants if (kernel + v, head_dim) in launches or not v)
    return launches.get((kernel, head_dim), (None, None))


def launch_info() -> dict:
    """{(kernel, head_dim): (threads, dynamic smem bytes)} from the built extension; {} without it."""
    try:
        from flashattn_py import _cuda
    except ImportError:
        return {}
    return {(kernel, head_dim): (threads, smem) for kernel, head_dim, threads, smem in _cuda.launch_info()}


def resource_rows(archs=(80, 90), log: Path = BUILD_LOG):
    """(rows as dicts, problem): the report of the last `pip install -e .` build for these archs, with
    tensor-core instruction counts (cuobjdump) and theoretical occupancy (the extension's launch info)."""
    from .kernel_report import theoretical_occupancy

    if not log.exists():
        return [], f"no ptxas report at {log}: build the extension first (FLASHATTN_BUILD_CUDA=1 pip install -e .)"
    # 90 is sm_90 or sm_90a, whichever the build has (the default list has 90a: the Hopper kernels).
    wanted = {f"sm_{a}" for a in archs} | {f"sm_{a}a" for a in archs}
    kernels = {key: r for key, r in parse_ptxas(log.read_text()).items() if key[1] in wanted}
    names = demangle(sorted({name for name, _ in kernels}))
    # The Hopper kernels (csrc/hopper/) are a trap in every pass but sm_90a's: no row for those.
    kernels = {(name, arch): r for (name, arch), r in kernels.items()
               if "hopper::" not in names[name] or arch.endswith("a")}
    cuobjdump = find_cuobjdump()
    counts = tensor_core_counts(sorted(log.parent.rglob("*.cu.o")), cuobjdump) if cuobjdump else {}
    launches = launch_info()
    rows = []
    for (name, arch), r in sorted(kernels.items()):
        row = {"kernel": names[name], "arch": arch, **r, **counts.get((name, arch), {"HMMA": None, "HGMMA": None})}
        threads, smem = instance_launch(launches, names[name])
        row["threads"], row["dynamic_smem"] = threads, smem
        row["occupancy"] = None if threads is None else theoretical_occupancy(
            int(arch.removeprefix("sm_").rstrip("a")), r["registers"], r["smem"] + smem, threads // 32)
        rows.append(row)
    return rows, "" if rows else f"the build at {log} holds none of {sorted(wanted)}"


def format_table(rows) -> str:
    fmt = lambda v, w, spec="": "-".rjust(w) if v is None else format(v, f">{w}{spec}")  # noqa: E731
    names = sorted({r["kernel"] for r in rows})
    lines = [f"{'arch':6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'smem':>6} {'threads':>7} {'occ':>4} "
             f"{'HMMA':>5} {'HGMMA':>5}  kernel"]
    for r in sorted(rows, key=lambda r: (r["arch"], names.index(r["kernel"]))):
        lines.append(f"{r['arch']:6} {fmt(r['registers'], 4)} {r['spill_stores']:>8} {r['spill_loads']:>8} "
                     f"{fmt(None if r.get('dynamic_smem') is None else r['smem'] + r['dynamic_smem'], 6)} "
                     f"{fmt(r.get('threads'), 7)} {fmt(r.get('occupancy'), 4, '.0%')} {fmt(r.get('HMMA'), 5)} "
                     f"{fmt(r.get('HGMMA'), 5)}  {r['kernel']}")
    return "\n".join(lines)
