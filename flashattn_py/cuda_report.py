"""ptxas' resource report of the CUDA extension's kernels (registers, spills, stack, shared memory per
kernel instance and arch), read from the log the CMake build keeps (csrc/ptxas_log.py merges it into
build/cmake/ptxas.log). Used by tests/test_cuda_build.py and ``python -m flashattn_py.bench report``."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_LOG = ROOT / "build" / "cmake" / "ptxas.log"

_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_SPILLS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
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


def resource_rows(archs=(80, 90), log: Path = BUILD_LOG):
    """(rows as dicts, problem): the report of the last `pip install -e .` build for these archs."""
    if not log.exists():
        return [], f"no ptxas report at {log}: build the extension first (FLASHATTN_BUILD_CUDA=1 pip install -e .)"
    wanted = {f"sm_{a}" for a in archs}
    kernels = {key: r for key, r in parse_ptxas(log.read_text()).items() if key[1] in wanted}
    names = demangle(sorted({name for name, _ in kernels}))
    rows = [{"kernel": names[name], "arch": arch, **r} for (name, arch), r in sorted(kernels.items())]
    return rows, "" if rows else f"the build at {log} holds none of {sorted(wanted)}"


def format_table(rows) -> str:
    return table({(r["kernel"], r["arch"]): r for r in rows})
