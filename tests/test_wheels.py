"""The wheels users install: version label, manylinux tag, archs inside, and a smoke test.

test_sm80_wheel runs the maintainers' command (python -m flashattn_py.tools.build_wheels) for one arch,
sm_80, the cheapest build: it builds, repairs with auditwheel and smoke-tests the wheel in a fresh venv
without nvcc (that venv reuses this environment's torch, so nothing is downloaded); the test then checks
the result. One test function on purpose: under pytest -n 2 a shared fixture would build once per worker.
Skipped, with the reason, without nvcc (CI has it) or auditwheel.
"""
import json
import os
import platform
import re
import sys
import zipfile
from pathlib import Path

import pytest
from test_cuda_build import require_toolchain, run

from flashattn_py.tools.build_wheels import copy_sources
from flashattn_py.tools.cuda_report import find_cuobjdump

ROOT = Path(__file__).resolve().parents[1]


def cuda_release(nvcc):
    found = re.search(r"release (\d+)\.(\d+)", run([nvcc, "--version"]))
    assert found, f"cannot read the CUDA version from {nvcc} --version"
    return found[1], found[2]


@pytest.mark.cuda_build
def test_sm80_wheel(tmp_path):
    nvcc = require_toolchain()
    cuobjdump = find_cuobjdump(nvcc)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit bin/ or Triton's bundled copy)")
    pytest.importorskip("auditwheel", reason="auditwheel is not installed: pip install -e '.[test]'")
    pytest.importorskip("pybind11", reason="pybind11 (a build requirement) is not installed: pip install -e '.[test]'")
    out = tmp_path / "wheelhouse"
    env = dict(os.environ, CUDA_HOME=str(Path(nvcc).parents[1]))
    # --no-build-isolation: the test extras already hold cmake, ninja and pybind11 (no network needed)
    log = run([sys.executable, "-m", "flashattn_py.tools.build_wheels", "--archs", "80", "--out", out,
               "--no-build-isolation"], env=env, cwd=ROOT)
    assert "smoke test passed" in log, log[-4000:]

    (wheel,) = out.glob("flashattn_py-*.whl")
    major, minor = cuda_release(nvcc)
    machine = platform.machine()
    label = re.fullmatch(rf"flashattn_py-[0-9.]+\+cu{major}{minor}\.sm80-cp\d+-cp\d+-"
                         rf"(manylinux_\d+_\d+_{machine})\.whl",
                         wheel.name)
    assert label, f"{wheel.name}: expected flashattn_py-<version>+cu{major}{minor}.sm80-...-manylinux_*_{machine}.whl"

    # auditwheel's own verdict on the repaired wheel must be the tag the file carries.
    show = " ".join(run([sys.executable, "-m", "auditwheel", "show", wheel]).split())
    assert f'consistent with the following platform tag: "{label[1]}"' in show, show

    with zipfile.ZipFile(wheel) as zf:
        info = json.loads(zf.read("flashattn_py/_build_info.json"))
        (module,) = [n for n in zf.namelist() if re.match(r"flashattn_py/_cuda.*\.so$", n)]
        zf.extract(module, tmp_path / "unpacked")
    assert info == {"cuda": f"{major}.{minor}", "sass": ["80"], "ptx": ["80"]}
    so = tmp_path / "unpacked" / module
    elves = re.findall(r"\.(sm_\w+)\.cubin", run([cuobjdump, "--list-elf", so]))
    ptx = re.findall(r"\.(sm_\w+)\.ptx", run([cuobjdump, "--list-ptx", so]))
    assert elves and set(elves) == {"sm_80"}, f"SASS archs in the wheel: {elves}"
    assert set(ptx) == {"sm_80"}, f"PTX archs in the wheel: {ptx}"


def _wheel_without_cuda(tmp_path, **env):
    """(wheel name, its .so / build-info files) of `pip wheel` with FLASHATTN_BUILD_CUDA=0 and `env`."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    copy_sources(src)
    env = dict(os.environ, FLASHATTN_BUILD_CUDA="0", **env)
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-w", wheels], env=env)
    (wheel,) = wheels.glob("flashattn_py-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return wheel.name, [n for n in zf.namelist() if n.endswith((".so", "_build_info.json"))]


def test_pure_python_wheel_keeps_plain_version(tmp_path):
    """FLASHATTN_BUILD_CUDA=0 and FLASHATTN_BUILD_CPU=0: no module, no build info, no label, py3-none-any."""
    name, compiled = _wheel_without_cuda(tmp_path, FLASHATTN_BUILD_CPU="0")
    assert re.fullmatch(r"flashattn_py-[0-9.]+-py3-none-any\.whl", name), name
    assert not compiled, f"the Triton-only wheel holds {compiled}"


def test_wheel_without_cuda_holds_the_cpu_kernels(tmp_path):
    """FLASHATTN_BUILD_CUDA=0 alone: the CPU kernels' library and nothing of CUDA, a plain version, a
    platform tag (the library is machine code)."""
    name, compiled = _wheel_without_cuda(tmp_path)
    assert re.fullmatch(r"flashattn_py-[0-9.]+-cp\d+-cp\d+-linux_[a-z0-9_]+\.whl", name), name
    assert len(compiled) == 1 and re.fullmatch(r"flashattn_py/_cpu_kernels\..*\.so", compiled[0]), compiled
