"""flashattn_py: fused tiled online-softmax attention (Triton kernels), forward and backward."""
from . import reference
from .api import attention
from .buffers import poisoned_outputs

__all__ = ["attention", "reference", "poisoned_outputs"]
__version__ = "0.1.0"
