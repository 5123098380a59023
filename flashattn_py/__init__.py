"""flashattn_py: fused tiled online-softmax attention (Triton kernels), forward and backward,
with RoPE / sinusoidal positional encodings fused into the kernels."""
from . import reference
from .api import attention
from .buffers import poisoned_outputs
from .pe_ops import add_sinusoidal, apply_rotary
from .positional import Rotary, Sinusoidal

__all__ = ["attention", "apply_rotary", "add_sinusoidal", "Rotary", "Sinusoidal", "reference", "poisoned_outputs"]
__version__ = "0.1.0"
