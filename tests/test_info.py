"""`python -m flashattn_py.info` and the checks cuda_backend.py makes before the first launch on a GPU.

The GPU / driver facts are faked (monkeypatched query functions), so every case runs on the CPU; the
subprocess test checks what info reports on this machine against what is really here.
"""
import subprocess
import sys

import pytest
import torch

from flashattn_py import info
from flashattn_py.backends import cuda_backend, cuda_compat

A100, H100 = ("NVIDIA A100-SXM4-80GB", (8, 0)), ("NVIDIA H100 80GB HBM3", (9, 0))


def fake(monkeypatch, *, cuda=13000, sass=("80", "86", "89", "90"), ptx=("90",), driver=13000, gpus=(A100,)):
    """Make cuda_backend see an extension built with `cuda` for `sass` / `ptx`, a driver supporting CUDA
    `driver`, and `gpus`; returns the list of device indices queried (one entry per query)."""
    queried = []

    def device_facts(index):
        queried.append(index)
        return gpus[index]

    monkeypatch.setattr(cuda_backend, "build_info",
                        lambda: {"cuda_version": cuda, "sass_archs": sass, "ptx_archs": ptx})
    monkeypatch.setattr(cuda_backend, "driver_version", lambda: driver)
    monkeypatch.setattr(cuda_backend, "device_facts", device_facts)
    monkeypatch.setattr(cuda_compat, "driver_release", lambda: "550.54.15")
    monkeypatch.setattr(cuda_backend, "_runnable", {})
    return queried


@pytest.mark.parametrize("capability, sass, ptx, expected", [
    ((8, 6), ("80",), ("80",), ("sass", "80")),          # same major, higher minor: sm_80 SASS runs
    ((8, 9), ("80", "86"), ("86",), ("sass", "86")),     # the closest SASS is the one loaded
    ((9, 0), ("80", "90a"), ("90",), ("sass", "90a")),   # sm_90a SASS runs on sm_90 ...
    ((10, 0), ("80", "90a"), ("90",), ("ptx", "90")),    # ... and nowhere else: sm_100 JITs compute_90
    ((8, 0), ("90a",), ("90",), (None, "")),             # PTX runs only on GPUs at least as new
    ((12, 0), ("90a",), ("90a",), (None, "")),           # arch-specific PTX is never JIT-compiled elsewhere
    ((7, 5), ("80",), ("80",), (None, "")),              # below the kernels' sm_80 floor
])
def test_arch_coverage_rules(capability, sass, ptx, expected):
    got = cuda_compat.coverage(capability, sass, ptx)
    assert (got.kind, got.arch) == expected


def test_uncovered_gpu_is_refused_before_launch_with_the_fix(monkeypatch):
    fake(monkeypatch, sass=("90a",), ptx=("90",), gpus=(A100,))
    launched = []
    with pytest.raises(RuntimeError) as err:
        cuda_backend._launch(lambda *a: launched.append(a), None, torch.device("cuda", 0), [])
    message = str(err.value)
    assert not launched
    for part in ("NVIDIA A100-SXM4-80GB", "sm_80", "SASS sm_90a", "PTX compute_90",
                 'FLASHATTN_CUDA_ARCHS="80;90a" pip install .'):
        assert part in message, message


def test_gpu_below_sm80_is_told_to_use_triton(monkeypatch):
    fake(monkeypatch, gpus=(("Tesla T4", (7, 5)),))
    with pytest.raises(RuntimeError, match=r"Tesla T4 \(sm_75\).*sm_80\+.*backend='triton'"):
        cuda_backend.require_runnable(0)


def test_old_driver_is_refused_naming_both_versions(monkeypatch):
    fake(monkeypatch, cuda=13000, driver=12040)
    with pytest.raises(RuntimeError) as err:
        cuda_backend.require_runnable(0)
    message = str(err.value)
    for part in ("550.54.15", "CUDA up to 12.4", "built with CUDA 13.0", ">= 580", "Update the driver"):
        assert part in message, message


def test_minor_version_compatibility_holds_for_sass_but_not_for_ptx_jit(monkeypatch):
    # Built with 12.8, driver for 12.4: SASS runs (same major), PTX from 12.8 cannot be JIT-compiled.
    fake(monkeypatch, cuda=12080, sass=("80",), ptx=("80",), driver=12040, gpus=(A100, H100))
    cuda_backend.require_runnable(0)
    with pytest.raises(RuntimeError, match=r"PTX.*CUDA up to 12\.4.*CUDA 12\.8"):
        cuda_backend.require_runnable(1)


def test_checked_once_per_device(monkeypatch):
    queried = fake(monkeypatch, gpus=(A100, H100))
    for _ in range(3):
        cuda_backend.require_runnable(0)
        cuda_backend.require_runnable(1)
    assert queried == [0, 1]
    fake(monkeypatch, sass=("90",), ptx=("90",), gpus=(A100,))
    for _ in range(2):  # a refusal is cached too, and raised every time
        with pytest.raises(RuntimeError, match="cannot run on NVIDIA A100"):
            cuda_backend.require_runnable(0)


def test_collect_reports_each_gpu_and_its_coverage(monkeypatch):
    fake(monkeypatch, sass=("80", "90a"), ptx=("90",),
         gpus=(A100, H100, ("NVIDIA B200", (10, 0)), ("NVIDIA L4", (8, 9))))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(info, "_version", lambda dist: "0.1.0+cu130.sm80.sm90a" if dist == "flashattn_py" else "3.9.0")
    monkeypatch.setattr(info, "_auto_backend", lambda device: "triton" if device.type == "cuda" else "torch")
    facts = info.collect()
    assert facts.version == "0.1.0+cu130.sm80.sm90a" and facts.cuda_version == "13.0" and facts.min_driver == "580"
    assert [(g.arch, g.covered, g.problem) for g in facts.gpus] == [
        ("sm_80", "yes (SASS sm_80)", None),
        ("sm_90", "yes (SASS sm_90a)", None),
        ("sm_100", "yes (PTX compute_90, JIT-compiled by the driver at first use)", None),
        ("sm_89", "yes (SASS sm_80)", None),
    ]
    assert facts.auto_backend == "triton"
    line = facts.summary()
    assert "\n" not in line and "0.1.0+cu130.sm80.sm90a" in line and "NVIDIA B200 sm_100" in line
    assert "GPU 2: NVIDIA B200 (sm_100), covered by the CUDA extension: yes (PTX" in info.format_info(facts)


def test_hopper_kernels_and_their_opt_in_are_reported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(cuda_backend.SM90_ENV, raising=False)
    fake(monkeypatch, sass=("80", "90a"))
    text = info.format_info(info.collect())
    assert "Hopper kernels: built" in text and "FLASHATTN_CUDA_SM90=1 (not set here)" in text
    monkeypatch.setenv(cuda_backend.SM90_ENV, "1")
    assert "FLASHATTN_CUDA_SM90=1 (set here)" in info.format_info(info.collect())
    fake(monkeypatch, sass=("80", "90"))
    assert "Hopper kernels: not built (FLASHATTN_CUDA_ARCHS without 90a)" in info.format_info(info.collect())


def test_python_m_info_tells_the_truth_here():
    proc = subprocess.run([sys.executable, "-m", "flashattn_py.info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if cuda_backend.is_built():
        built = cuda_backend.build_info()
        assert f"built with CUDA {cuda_compat.version_text(built['cuda_version'])}" in out
        assert "SASS archs: " + ", ".join("sm_" + a for a in built["sass_archs"]) in out
        version = out.splitlines()[0].split()[1]
        if "+cu" in version:  # setup.py's local label names the archs the module itself was compiled for
            cuda = cuda_compat.version_text(built["cuda_version"]).replace(".", "")
            assert version.split("+")[1] == ".".join([f"cu{cuda}"] + [f"sm{a}" for a in built["sass_archs"]])
    else:
        assert "CUDA extension: not built" in out
    if torch.cuda.is_available():
        assert f"GPU 0: {torch.cuda.get_device_name(0)}" in out and "backend='auto' picks: triton" in out
    else:
        assert "GPUs: none" in out and "backend='auto' picks: torch" in out


def test_bench_header_carries_the_summary():
    from flashattn_py.tools.bench import output

    assert output.environment(torch.device("cpu"))["flashattn_py"].startswith("flashattn_py ")


def test_cpu_kernels_are_reported(monkeypatch):
    """The CPU kernels' state: built with their instruction set and thread team, or why not."""
    from flashattn_py.backends import cpu_kernels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if cpu_kernels.available():
        assert f"CPU kernels (per-sequence calls on CPU tensors): built, {cpu_kernels.isa()}, on torch's OpenMP team" \
            in info.format_info(info.collect())
    monkeypatch.setattr(cpu_kernels, "LIBRARY", None)
    assert "CPU kernels (per-sequence calls on CPU tensors): not available" in info.format_info(info.collect())
