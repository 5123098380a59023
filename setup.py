"""flashattn_py packaging.

The Triton kernels live in the top-level ``triton_kernels/`` folder of the repository but are
installed as ``flashattn_py.triton_kernels``: a different PyPI package already owns the top-level
name ``triton_kernels``. (The CUDA extension from csrc/ is built here too once it exists.)
"""
from setuptools import find_packages, setup

setup(
    name="flashattn_py",
    version="0.1.0",
    description="Fused tiled online-softmax attention kernels (Triton) with fused positional encodings",
    python_requires=">=3.9",
    packages=find_packages(include=["flashattn_py", "flashattn_py.*"]) + ["flashattn_py.triton_kernels"],
    package_dir={"flashattn_py": "flashattn_py", "flashattn_py.triton_kernels": "triton_kernels"},
    install_requires=["torch>=2.3", "triton>=3.2"],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "numpy"]},
)
