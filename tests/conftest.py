"""Test setup: kernels run on the GPU when there is one, else on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before flashattn_py.triton_kernels is imported (triton.jit reads it at
decoration time), so it is set here, before any test module imports the kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's warning; fusion stays on
