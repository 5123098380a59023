"""Triton kernels of flashattn_py, installed as ``flashattn_py.triton_kernels``.

To run them on CPU tensors (Triton's interpreter), TRITON_INTERPRET=1 must be in the environment
before this package is first imported: ``triton.jit`` decides at decoration time.
"""
