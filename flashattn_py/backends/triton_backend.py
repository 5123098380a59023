"""backend="triton": the fused Triton kernels (flashattn_py.triton_kernels)."""
from ..triton_kernels.attention_bwd import attention_backward
from ..triton_kernels.attention_fwd import attention_forward, forward_programs
from ..triton_kernels.dropout import dropout_mask
from ..triton_kernels.positional import encode
from .interface import Backend

# The kernels read cu_seqlens / seqused_k / block tables themselves; the forward keeps its base-2 lse
# for the backward (triton_kernels/attention_fwd.py).
BACKEND = Backend(name="triton", forward=attention_forward, backward=attention_backward, encode=encode,
                  reads_sequence_lengths=True, keeps_lse_log2=True, forward_programs=forward_programs,
                  dropout_mask=dropout_mask)
