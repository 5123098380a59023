"""Checks run inside a fresh virtual environment that holds one built wheel and no CUDA toolkit.

flashattn_py.tools.build_wheels runs this file there (by path, from a directory outside the source
tree, so `import flashattn_py` can only find the installed wheel). Each check prints what it saw;
the first failure exits with status 1 and says what is wrong.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path


def fail(message):
    print(f"smoke test FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the version the wheel's file name carries")
    args = parser.parse_args()

    import flashattn_py

    package = Path(flashattn_py.__file__).resolve().parent
    if Path(sys.prefix).resolve() not in package.parents:
        fail(f"flashattn_py was imported from {package}, not from this environment ({sys.prefix}): "
             "a source checkout or another install shadows the wheel")
    installed = importlib.metadata.version("flashattn_py")
    if installed != args.version:
        fail(f"installed version {installed} != the wheel's {args.version}")
    print(f"import flashattn_py: {installed} from {package}")

    info_file = package / "_build_info.json"
    if not info_file.exists():
        fail(f"{info_file.name} is missing: setup.py writes it after building the CUDA extension")
    print(f"{info_file.name}: {json.loads(info_file.read_text())}")

    # The CUDA runtime is linked statically: the module must load without a GPU, libcudart or nvcc.
    import flashattn_py._cuda  # noqa: F401
    print("import flashattn_py._cuda: ok")

    if importlib.util.find_spec("flashattn_py.info") is None:
        print("flashattn_py.info is not in this version: skipping `python -m flashattn_py.info`")
    else:
        proc = subprocess.run([sys.executable, "-m", "flashattn_py.info"], capture_output=True, text=True)
        print(f"python -m flashattn_py.info (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            fail("`python -m flashattn_py.info` exited with an error (output above)")

    import torch

    q = torch.randn(1, 8, 2, 32, dtype=torch.float16)
    try:
        flashattn_py.attention(q, q, q, backend="cuda")
    except (RuntimeError, ValueError) as err:
        print(f"backend='cuda' on CPU tensors raises {type(err).__name__}: {err}")
    else:
        fail("backend='cuda' on CPU tensors returned instead of raising a RuntimeError / ValueError")
    print("smoke test passed")


if __name__ == "__main__":
    main()
