"""What is installed, and can it run here: `python -m flashattn_py.info`.

collect() gathers the facts (package version with its local label, e.g. 0.1.0+cu130.sm80.sm90a; the
CUDA extension's CUDA version, the driver that version needs, its SASS and PTX archs; torch / triton;
each GPU and whether the extension covers it; the backend "auto" picks) without launching anything,
so it runs on a machine without a GPU. The bench harness puts summary() in its header.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import sys

import torch

from . import backends
from .backends import cpu_kernels, cuda_backend, cuda_compat


@dataclasses.dataclass
class GPU:
    index: int
    name: str
    arch: str  # sm_XY
    covered: str  # cuda_compat.Coverage as text, or why not
    problem: str | None  # what stops backend='cuda' here (arch or driver), None when nothing


@dataclasses.dataclass
class Info:
    version: str
    extension_built: bool
    extension_missing: str | None  # why it is not built / does not import
    cuda_version: str | None  # the CUDA the extension was built with, '13.0'
    min_driver: str | None  # the driver that CUDA version needs
    sass_archs: tuple[str, ...]
    ptx_archs: tuple[str, ...]
    hopper: str | None  # the Hopper (sm_90a) kernels of the build and their opt-in; None without the extension
    cpu_kernels: str  # the CPU kernels for per-sequence calls (csrc/cpu/): built, instruction set, thread team
    driver_cuda: str | None  # the newest CUDA the installed driver supports; None: unknown or no driver
    driver_release: str | None
    torch: str
    torch_cuda: str | None
    triton: str | None
    gpus: list[GPU]
    auto_backend: str  # for tensors on this machine's default device

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: version, extension, GPUs and their coverage, auto's pick."""
        if self.extension_built:
            ext = (f"cuda ext CUDA {self.cuda_version} (driver >= {self.min_driver}) "
                   f"SASS {','.join(self.sass_archs)} PTX {','.join(self.ptx_archs)}")
        else:
            ext = "cuda ext not built"
        gpus = "; ".join(f"GPU{g.index} {g.name} {g.arch}: {g.covered}" for g in self.gpus) or "no GPU"
        return f"flashattn_py {self.version} | {ext} | {gpus} | auto={self.auto_backend}"


def _version(dist: str) -> str | None:
    """The installed version of `dist`. Run from a source checkout, a stale flashattn_py.egg-info left in
    it by an earlier build comes first on sys.path (the current directory) and would shadow what pip
    installed, so a distribution an installer recorded (its INSTALLER file) is preferred."""
    found = list(importlib.metadata.distributions(name=dist))
    installed = [d for d in found if d.read_text("INSTALLER") is not None]
    return (installed or found)[0].version if found else None


def _auto_backend(device: torch.device) -> str:
    try:
        chosen = backends.select("auto", device)
    except Exception as err:  # e.g. triton missing on a GPU machine: say so instead of failing
        return f"none ({type(err).__name__}: {err})"
    return chosen.name


def _hopper(build: dict | None) -> str | None:
    """Whether the build holds the Hopper kernels (docs/hopper.md) and whether this process opts in to them."""
    if build is None:
        return None
    if "90a" not in build["sass_archs"]:
        return "not built (FLASHATTN_CUDA_ARCHS without 90a)"
    state = "set" if cuda_backend.sm90_requested() else "not set"
    return (f"built (wgmma + TMA forward and backward for H100 / H200); they run only with "
            f"{cuda_backend.SM90_ENV}=1 ({state} here) until validated on a GPU")


def _cpu_kernels() -> str:
    if not cpu_kernels.available():
        return ("not available (the library was not built: see pip's warning; FLASHATTN_BUILD_CPU=0 or "
                "FLASHATTN_CPU_KERNELS=0 turn it off); per-sequence CPU calls use torch's kernels")
    team = "torch's OpenMP team" if cpu_kernels.ON_TORCH_TEAM else "a thread pool (torch's OpenMP runtime not found)"
    return f"built, {cpu_kernels.isa()}, on {team}"


def _gpu(index: int, build: dict | None) -> GPU:
    name, capability = cuda_backend.device_facts(index)
    arch = f"sm_{capability[0]}{capability[1]}"
    if build is None:
        return GPU(index, name, arch, "no (the CUDA extension is not built)", None)
    covered = str(cuda_compat.coverage(capability, build["sass_archs"], build["ptx_archs"]))
    return GPU(index, name, arch, covered, cuda_backend.runnable_problem(index))


def collect() -> Info:
    from . import __version__

    try:
        build, missing = cuda_backend.build_info(), None
    except RuntimeError as err:
        build, missing = None, str(err)
    driver = cuda_backend.driver_version() if build is not None else 0
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device("cuda" if gpu_count else "cpu")
    return Info(
        version=_version("flashattn_py") or f"{__version__} (not installed: imported from a source tree)",
        extension_built=build is not None,
        extension_missing=missing,
        cuda_version=cuda_compat.version_text(build["cuda_version"]) if build else None,
        min_driver=cuda_compat.min_driver(build["cuda_version"]) if build else None,
        sass_archs=build["sass_archs"] if build else (),
        ptx_archs=build["ptx_archs"] if build else (),
        hopper=_hopper(build),
        cpu_kernels=_cpu_kernels(),
        driver_cuda=cuda_compat.version_text(driver) if driver else None,
        driver_release=cuda_compat.driver_release(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        triton=_version("triton"),
        gpus=[_gpu(i, build) for i in range(gpu_count)],
        auto_backend=_auto_backend(device),
    )


def format_info(info: Info) -> str:
    lines = [f"flashattn_py {info.version}"]
    if info.extension_built:
        lines += [f"CUDA extension: built with CUDA {info.cuda_version} (needs NVIDIA driver >= {info.min_driver})",
                  f"  SASS archs: {', '.join('sm_' + a for a in info.sass_archs)}",
                  f"  PTX archs:  {', '.join('compute_' + a for a in info.ptx_archs)} (JIT-compiled for newer GPUs)",
                  f"  Hopper kernels: {info.hopper}"]
    else:
        lines.append(f"CUDA extension: not built ({info.extension_missing})")
    lines.append(f"CPU kernels (per-sequence calls on CPU tensors): {info.cpu_kernels}")
    driver = "none found / unknown" if info.driver_cuda is None and info.driver_release is None else \
        f"{info.driver_release or 'release unknown'}, supports CUDA up to {info.driver_cuda or 'unknown'}"
    lines += [f"NVIDIA driver: {driver}",
              f"torch {info.torch} (CUDA {info.torch_cuda or 'none: CPU build'}), "
              f"triton {info.triton or 'not installed'}"]
    if not info.gpus:
        lines.append("GPUs: none (torch.cuda.is_available() is False)")
    for g in info.gpus:
        lines.append(f"GPU {g.index}: {g.name} ({g.arch}), covered by the CUDA extension: {g.covered}")
        if g.problem:
            lines.append(f"  backend='cuda' cannot run here: {g.problem}")
    lines.append(f"backend='auto' picks: {info.auto_backend}")
    return "\n".join(lines)


def main() -> int:
    print(format_info(collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
