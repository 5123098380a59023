"""Build a csrc/tests/*_probe.cpp with the host C++ compiler: the probes run the CUDA kernels' plain-C++
headers (sequence.h, score_mods.h, rotary_angles.h) on the host, so their rules are tested without a GPU."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_probe(tmp_path_factory, name: str, *flags: str, source: Path | None = None) -> Path:
    """The executable of csrc/tests/<name>.cpp, or of `source` (-std=c++17 -Wall -Werror plus flags); skips,
    saying why, where no host compiler exists."""
    source = source or ROOT / "csrc" / "tests" / f"{name}.cpp"
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip(f"no host C++ compiler (c++ / g++) to build {source.relative_to(ROOT)}")
    exe = tmp_path_factory.mktemp("probe") / name
    proc = subprocess.run([compiler, "-std=c++17", "-Wall", "-Werror", *flags, f"-I{ROOT / 'csrc'}",
                           str(source), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe
