"""backend="triton": the fused Triton kernels (flashattn_py.triton_kernels)."""
from .triton_kernels.attention_bwd import attention_backward as backward  # noqa: F401
from .triton_kernels.attention_fwd import attention_forward as forward  # noqa: F401
from .triton_kernels.attention_fwd import forward_programs  # noqa: F401
from .triton_kernels.positional import encode  # noqa: F401,E402
from .triton_kernels.dropout import dropout_mask  # noqa: F401,E402

SUPPORTS_PACKED_SEQUENCES = True  # the kernels read cu_seqlens / seqused_k themselves (varlen.py)
