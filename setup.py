"""flashattn_py packaging.

The Triton kernels live in the top-level ``triton_kernels/`` folder of the repository but are
installed as ``flashattn_py.triton_kernels``: a different PyPI package already owns the top-level
name ``triton_kernels``.

The CUDA extension ``flashattn_py._cuda`` (csrc/) is built with CMake + ninja (CMakeLists.txt holds
every nvcc flag). Environment:
  FLASHATTN_BUILD_CUDA   auto (default): build it when nvcc is found, else skip with a message (a
                         failed compile also installs without it, with a warning; the kernels'
                         compile test, tests/test_cuda_build.py, then shows the errors);
                         1: build it or fail; 0: never build it (Triton-only install).
  FLASHATTN_CUDA_ARCHS   SASS archs, e.g. "80;90a" (default "80;86;89;90"); PTX for the newest too.
  CUDA_HOME              where nvcc lives, if not on PATH or in /usr/local/cuda.
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: all cores).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;86;89;90"


def find_nvcc():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    for home in filter(None, candidates):
        nvcc = Path(home) / "bin" / "nvcc"
        if nvcc.exists():
            return str(nvcc)
    return shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if Path(p).exists()), None)


def cuda_build_mode():
    mode = os.environ.get("FLASHATTN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"FLASHATTN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def cuda_extensions():
    """[the CMake extension] when it should be built, else [] (with the reason printed)."""
    mode = cuda_build_mode()
    if mode == "0":
        print("flashattn_py: FLASHATTN_BUILD_CUDA=0, skipping the CUDA extension (Triton backend only)")
        return []
    nvcc = find_nvcc()
    sources = sorted((ROOT / "csrc").glob("*.cu"))
    missing = None if nvcc else "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if missing is None and not sources:
        missing = "csrc/ has no .cu kernel sources"
    if missing:
        if mode == "1":
            raise SystemExit(f"FLASHATTN_BUILD_CUDA=1 but the CUDA extension cannot be built: {missing}")
        print(f"flashattn_py: {missing}; skipping the CUDA extension (Triton backend only). "
              "FLASHATTN_BUILD_CUDA=1 makes this an error.")
        return []
    return [CMakeExtension("flashattn_py._cuda", nvcc, required=mode == "1")]


class CMakeExtension(Extension):
    def __init__(self, name, nvcc, required):
        super().__init__(name, sources=[])
        self.nvcc, self.required = nvcc, required


class CMakeBuild(build_ext):
    """Configure + build CMakeLists.txt with ninja; the module lands where setuptools expects it."""

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11  # a build requirement (pyproject.toml)

        archs = os.environ.get("FLASHATTN_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).replace(",", ";").replace(" ", "")
        # In the source tree, not setuptools' build_temp (a throw-away dir for editable installs): a
        # rebuild recompiles only what changed, and tests/test_cuda_build.py reads ptxas.log here.
        build_dir = ROOT / "build" / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake") or "cmake"
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_CUDA_COMPILER={ext.nvcc}",
            f"-DFLASHATTN_CUDA_ARCHS={archs}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = shutil.which("ninja")
        if ninja:
            configure.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        print(f"flashattn_py: building the CUDA extension for archs {archs} with {jobs} jobs in {build_dir}")
        try:
            subprocess.run(configure, check=True)
            subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)
        except subprocess.CalledProcessError as err:
            if ext.required:
                raise SystemExit(f"flashattn_py: building the CUDA extension failed ({err}); "
                                 "FLASHATTN_BUILD_CUDA=0 installs the Triton backend only") from err
            print(f"flashattn_py: WARNING: building the CUDA extension failed ({err}); installing without it "
                  "(backend='cuda' unavailable). FLASHATTN_BUILD_CUDA=1 makes this an error.", file=sys.stderr)
            return
        print(f"flashattn_py: ptxas resource report in {build_dir / 'ptxas.log'}")


setup(
    name="flashattn_py",
    version="0.1.0",
    description="Fused tiled online-softmax attention kernels (Triton, CUDA) with fused positional encodings",
    python_requires=">=3.9",
    packages=find_packages(include=["flashattn_py", "flashattn_py.*"]) + ["flashattn_py.triton_kernels"],
    package_dir={"flashattn_py": "flashattn_py", "flashattn_py.triton_kernels": "triton_kernels"},
    ext_modules=cuda_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    # tqdm: the benchmark harness's progress bar (python -m flashattn_py.bench is the main job).
    install_requires=["torch>=2.3", "triton>=3.2", "tqdm"],
    # bench: plots and the pytest-benchmark suites in bench/. test: cmake, ninja, pybind11 for
    # tests/test_cuda_build.py (compiles csrc/ when nvcc exists); transformers for the integration tests.
    extras_require={"bench": ["matplotlib", "pytest-benchmark"],
                    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "numpy", "matplotlib",
                             "pytest-benchmark", "transformers>=4.53", "cmake>=3.24", "ninja", "pybind11>=2.12"]},
)
