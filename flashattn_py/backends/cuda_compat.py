"""Can the built CUDA extension run on a given GPU and driver? Pure functions of the facts, so they
need no GPU: cuda_backend.py asks them once per device before the first launch, flashattn_py.info
prints their answers, and tests fake the facts.

Arch rules (CUDA C++ Programming Guide, "Binary Compatibility" / "PTX Compatibility"):
- SASS for sm_XY runs on GPUs of the same major version X with minor >= Y (sm_80 SASS runs on
  sm_86 and sm_89); arch-specific SASS (sm_90a) runs on exactly that GPU (sm_90) and nothing else.
- PTX for compute_XY is JIT-compiled by the driver for any GPU of compute capability >= X.Y
  (CMakeLists.txt ships PTX of the newest arch without the 'a' suffix, for GPUs newer than the list).
- The kernels need sm_80+ (mma.sync on bf16 / fp16, cp.async) whatever was compiled.

Driver rules (docs.nvidia.com/deploy/cuda-compatibility, "Minor Version Compatibility"): a program
built with any CUDA X.y runs on drivers of at least the minimum of major X (MIN_DRIVER), but PTX JIT
needs a driver for CUDA X.y itself or newer: an older driver cannot read newer PTX.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIN_CAPABILITY = (8, 0)
# The oldest driver each CUDA major version runs on, from the CUDA Toolkit release notes' table "CUDA
# Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility" and
# docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html (13.x: >= 580).
# The extension needs CUDA 12+ (README), so older majors are not listed.
MIN_DRIVER = {12: "525.60.13 (Linux) / 527.41 (Windows)", 13: "580"}


def version_text(cuda_version: int) -> str:
    """12040 (CUDART_VERSION / cudaDriverGetVersion style) -> '12.4'."""
    return f"{cuda_version // 1000}.{cuda_version % 1000 // 10}"


def min_driver(cuda_version: int) -> str:
    return MIN_DRIVER.get(cuda_version // 1000, f"the one of CUDA {version_text(cuda_version)} (not in MIN_DRIVER)")


def arch_list(text: str) -> tuple[str, ...]:
    """'80,86;90a' (build_info's commas or FLASHATTN_CUDA_ARCHS' semicolons) -> ('80', '86', '90a')."""
    return tuple(a for a in text.replace(";", ",").replace(" ", "").split(",") if a)


def _number(arch: str) -> int:
    return int(arch.rstrip("a"))


@dataclass(frozen=True)
class Coverage:
    """How a GPU runs the extension: kind 'sass' (compiled for it), 'ptx' (the driver JIT-compiles
    `arch`'s PTX at first use, which takes a while and needs a new enough driver) or None (it cannot)."""

    kind: str | None
    arch: str = ""

    def __str__(self) -> str:
        if self.kind == "sass":
            return f"yes (SASS sm_{self.arch})"
        if self.kind == "ptx":
            return f"yes (PTX compute_{self.arch}, JIT-compiled by the driver at first use)"
        return "no"


def coverage(capability: tuple[int, int], sass: tuple[str, ...], ptx: tuple[str, ...]) -> Coverage:
    major, minor = capability
    cc = 10 * major + minor
    if capability < MIN_CAPABILITY:
        return Coverage(None)

    def runs(arch: str) -> bool:
        if arch.endswith("a"):
            return _number(arch) == cc
        return _number(arch) // 10 == major and _number(arch) <= cc

    native = [a for a in sass if runs(a)]
    if native:  # the closest one: what the CUDA runtime loads
        return Coverage("sass", max(native, key=lambda a: (_number(a), a.endswith("a"))))
    jit = [a for a in ptx if not a.endswith("a") and _number(a) <= cc]
    if jit:
        return Coverage("ptx", max(jit, key=_number))
    return Coverage(None)


def rebuild_command(capability: tuple[int, int], sass: tuple[str, ...]) -> str:
    """The install command whose extension has SASS for this GPU too."""
    own = f"{capability[0]}{capability[1]}"
    archs = sorted(set(sass) | {own}, key=lambda a: (_number(a), a))
    return f'FLASHATTN_CUDA_ARCHS="{";".join(archs)}" pip install .'


def arch_problem(name: str, capability: tuple[int, int], sass: tuple[str, ...], ptx: tuple[str, ...]) -> str | None:
    """Why the extension cannot run on this GPU (None when it can)."""
    arch = f"sm_{capability[0]}{capability[1]}"
    if capability < MIN_CAPABILITY:
        return (f"flashattn_py: backend='cuda' cannot run on {name} ({arch}): its kernels need an sm_80+ GPU "
                "(bf16/fp16 mma.sync, cp.async); use backend='triton'")
    if coverage(capability, sass, ptx).kind is None:
        built = ", ".join([f"SASS sm_{a}" for a in sass] + [f"PTX compute_{a}" for a in ptx])
        return (f"flashattn_py: the CUDA extension cannot run on {name} ({arch}): it was built for {built}, "
                f"and none of them runs on {arch} (SASS runs on its own major version from its minor up, "
                f"sm_XXa only on sm_XX; PTX on newer GPUs). Rebuild it with `{rebuild_command(capability, sass)}`, "
                "or use backend='triton'")
    return None


def driver_problem(driver_cuda: int, built_cuda: int, via_ptx: bool, driver_release: str | None = None) -> str | None:
    """Why the installed driver cannot run the extension (None when it can). driver_cuda: the newest CUDA
    version the driver supports (cudaDriverGetVersion), 0 without a driver; via_ptx: a GPU of the call
    runs JIT-compiled PTX."""
    release = f" {driver_release}" if driver_release else ""
    built = version_text(built_cuda)
    if driver_cuda == 0:
        return (f"flashattn_py: no NVIDIA driver found; the CUDA extension (built with CUDA {built}) needs driver "
                f">= {min_driver(built_cuda)}")
    supported = version_text(driver_cuda)
    if driver_cuda // 1000 < built_cuda // 1000:
        return (f"flashattn_py: the NVIDIA driver{release} supports CUDA up to {supported}, but the CUDA extension "
                f"was built with CUDA {built}, which needs driver >= {min_driver(built_cuda)}. Update the driver, "
                f"or rebuild the extension with a CUDA {driver_cuda // 1000}.x toolkit (`CUDA_HOME=<that toolkit> "
                "pip install .`), or use backend='triton'")
    if via_ptx and driver_cuda < built_cuda:
        return (f"flashattn_py: this GPU runs the CUDA extension's PTX, which the driver JIT-compiles, but the NVIDIA "
                f"driver{release} supports CUDA up to {supported} and the PTX is from CUDA {built}: an older driver "
                f"cannot compile newer PTX. Update the driver to one for CUDA {built}+, or rebuild with SASS for this "
                "GPU (FLASHATTN_CUDA_ARCHS, see `python -m flashattn_py.info`), or use backend='triton'")
    return None


def driver_release() -> str | None:
    """The installed driver's release ('580.65.06') from /proc on Linux; None elsewhere (no cheap query)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None
