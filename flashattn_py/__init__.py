"""flashattn_py: fused tiled online-softmax attention (Triton and CUDA kernels), forward and backward,
with RoPE / sinusoidal positional encodings fused into the kernels.

The package's layers, each importing only the ones below it (docs/design.md, "Layers"):
public entry points (this module's names, modules, layers/, distributed, integrations/) -> ops (the
custom ops) -> backends/ (+ triton_kernels/) -> validation/ -> semantics/ -> params, buffers.
tools/ (reports, benchmark, wheels) sits beside them and nothing imports it.
"""
from . import reference
from .api import attention
from .buffers import poisoned_outputs
from .decoding import flash_attn_with_kvcache
from .flash_attn_interface import (
                                   flash_attn_func,
                                   flash_attn_kvpacked_func,
                                   flash_attn_qkvpacked_func,
                                   flash_attn_varlen_kvpacked_func,
                                   flash_attn_varlen_qkvpacked_func,
)
from .params import Rotary, Sinusoidal
from .pe_ops import add_sinusoidal, apply_rotary
from .sdpa import route_sdpa, scaled_dot_product_attention
from .varlen import flash_attn_varlen_func

__all__ = ["attention", "apply_rotary", "add_sinusoidal", "Rotary", "Sinusoidal", "reference", "poisoned_outputs",
           "flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "scaled_dot_product_attention",
           "route_sdpa", "flash_attn_varlen_func", "flash_attn_varlen_qkvpacked_func",
           "flash_attn_varlen_kvpacked_func", "flash_attn_with_kvcache"]
__version__ = "0.1.0"
