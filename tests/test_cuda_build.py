"""The CUDA kernels (csrc/) compile, and what ptxas says about them, without a GPU.

Compiled through the project's own CMakeLists.txt (the one list of nvcc flags) for sm_80 and sm_90a:
every kernel instance must use <= 255 registers and spill nothing, and the SASS must contain
tensor-core instructions (the archs inside a built wheel: tests/test_wheels.py). Both skip, with the
reason, where nvcc (or cmake/ninja) is missing; CI has nvcc.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flashattn_py.tools.cuda_report import find_cuobjdump, instance_launch, parse_ptxas, table

ROOT = Path(__file__).resolve().parents[1]
# Two of the default archs (setup.py), so that CI reads the build its set-up just made instead of compiling
# every kernel again (about 5 minutes on 2 cores); 90a is what H100 / H200 run (the Hopper kernels too).
ARCHS = ("80", "90a")
MAX_REGISTERS = 255
pytestmark = pytest.mark.cuda_build


def find_nvcc():
    for home in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        if (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def require_toolchain():
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA_HOME / PATH / /usr/local/cuda): the CUDA kernels are compiled in CI")
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: pip install -e '.[test]' installs it")
    if not list((ROOT / "csrc").glob("*.cu")):
        pytest.skip("csrc/ has no .cu kernel sources yet")
    return nvcc


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc.stdout


def installed_build():
    """The CMake build dir of `pip install -e .` (setup.py) when it covers ARCHS and is newer than every
    source: CI's set-up has just compiled the kernels there, with the same CMakeLists.txt."""
    sources = [*(ROOT / "csrc").iterdir(), ROOT / "CMakeLists.txt"]
    newest_source = max(p.stat().st_mtime for p in sources if p.is_file())
    build = ROOT / "build" / "cmake"
    log, cache = build / "ptxas.log", build / "CMakeCache.txt"
    if not (log.exists() and cache.exists()) or log.stat().st_mtime < newest_source:
        return None
    archs = re.search(r"^FLASHATTN_CUDA_ARCHS:\w+=(.*)$", cache.read_text(), re.M)
    return build if archs and set(ARCHS) <= set(archs[1].split(";")) else None


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory):
    """The kernel objects of CMakeLists.txt for sm_80 and sm_90a (no Python module), and ptxas' report."""
    nvcc = require_toolchain()
    reuse = installed_build()
    if reuse is not None:
        return nvcc, reuse
    build = tmp_path_factory.mktemp("cuda-kernels")
    run(["cmake", "-S", ROOT, "-B", build, "-G", "Ninja", f"-DCMAKE_CUDA_COMPILER={nvcc}",
         f"-DFLASHATTN_CUDA_ARCHS={';'.join(ARCHS)}", "-DFLASHATTN_BUILD_MODULE=OFF",
         f"-DPython3_EXECUTABLE={sys.executable}"])
    run(["cmake", "--build", build, "--parallel", str(os.cpu_count() or 1), "--target", "flashattn_ptxas_report"])
    return nvcc, build


# ---- ptxas' report ---------------------------------------------------------------------------------


def test_parse_ptxas_reads_every_entry():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooi' for 'sm_80'
ptxas info    : Function properties for _Z3fooi
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 49152 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3fooi' for 'sm_90'
ptxas info    : Function properties for _Z3fooi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers
"""
    assert parse_ptxas(text) == {
        ("_Z3fooi", "sm_80"): dict(registers=168, spill_stores=4, spill_loads=12, stack=8, smem=49152),
        ("_Z3fooi", "sm_90"): dict(registers=128, spill_stores=0, spill_loads=0, stack=0, smem=0),
    }


def test_launch_info_is_matched_to_each_instance():
    """The report's occupancy needs each instance's launch: the forward's per-sequence layout instance
    (next-to-last template argument `true`) launches other tiles than the dense one, whatever its score-mods
    argument (the last), and the dense score-mods instance its own; the merge kernel has no head dim."""
    launches = {("attention_fwd_kernel", 128): (128, 69632), ("attention_fwd_kernel[layout]", 128): (128, 52224),
                ("attention_fwd_kernel[mods]", 128): (128, 40000),
                ("attention_bwd_dq_kernel", 128): (128, 50000), ("attention_split_merge_kernel", 0): (128, 0)}
    fwd = "void flashattn::attention_fwd_kernel<__half, 128, {}, {}>(flashattn::AttentionParams)"
    assert instance_launch(launches, fwd.format("false", "false")) == (128, 69632)
    assert instance_launch(launches, fwd.format("false", "true")) == (128, 40000)  # its own tiles (d = 96)
    for mods in ("false", "true"):  # the layout instances launch alike
        assert instance_launch(launches, fwd.format("true", mods)) == (128, 52224)
    dkdv = ("void flashattn::bwd::attention_bwd_dkdv_kernel<__half, flashattn::bwd::DkdvConfig<96, 4, 1, {}, 2>, "
            "{}, {}>(x)")
    launches[("attention_bwd_dkdv_kernel", 96)], launches[("attention_bwd_dkdv_kernel[mods]", 96)] = (128, 9), (128, 7)
    assert instance_launch(launches, dkdv.format(64, "true", "false")) == (128, 9)
    assert instance_launch(launches, dkdv.format(32, "true", "true")) == (128, 7)  # layout and mods: mods' tiles
    assert instance_launch(launches, dkdv.format(32, "false", "true")) == (128, 7)
    dq = "void flashattn::bwd::attention_bwd_dq_kernel<__half, flashattn::bwd::DqConfig<128, 4, 32, 2>, true, {}>(x)"
    assert instance_launch(launches, dq.format("false")) == (128, 50000)  # same launch for every instance
    assert instance_launch(launches, dq.format("true")) == (128, 50000)
    merge = "void flashattn::attention_split_merge_kernel<__nv_bfloat16>(flashattn::AttentionParams)"
    assert instance_launch(launches, merge) == (128, 0)
    assert instance_launch(launches, "void other_kernel<int>()") == (None, None)


def test_every_kernel_instance_fits_registers_without_spills(kernel_build):
    _, build = kernel_build
    wanted = {f"sm_{a}" for a in ARCHS}
    kernels = {key: r for key, r in parse_ptxas((build / "ptxas.log").read_text()).items() if key[1] in wanted}
    assert {arch for _, arch in kernels} == wanted, f"kernels per arch:\n{table(kernels)}"
    bad = {key: r for key, r in kernels.items()
           if r["registers"] is None or r["registers"] > MAX_REGISTERS or r["spill_stores"] or r["spill_loads"]}
    assert not bad, f"kernels that spill or exceed {MAX_REGISTERS} registers:\n{table(bad)}\n\nall:\n{table(kernels)}"


def sass_by_arch(cuobjdump, objects):
    """{arch: SASS text} of the objects' cubins."""
    sass = {}
    for obj in objects:
        text = run([cuobjdump, "-sass", obj])
        for chunk in re.split(r"(?=\n\s*arch = sm_)", text):
            if m := re.search(r"arch = (sm_\w+)", chunk):
                sass[m[1]] = sass.get(m[1], "") + chunk
    return sass


def test_kernels_use_tensor_cores(kernel_build):
    nvcc, build = kernel_build
    cuobjdump = find_cuobjdump(nvcc)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit bin/ or Triton's bundled copy)")
    objects = sorted(build.rglob("*.cu.o"))
    assert objects, "no kernel objects were built"
    sass = sass_by_arch(cuobjdump, objects)
    for arch in ARCHS:
        text = sass.get(f"sm_{arch}", "")
        # sm_80: mma.sync -> HMMA; sm_90: HMMA, or HGMMA for warpgroup MMA (wgmma, sm_90a only).
        count = len(re.findall(r"\bHG?MMA\b", text))
        assert count > 0, (f"no tensor-core instruction (HMMA/HGMMA) in the sm_{arch} SASS of "
                           f"{[o.name for o in objects]}")
