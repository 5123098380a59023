"""The implementations the harness compares, as callables on bshd q, k, v for one Case.

``implementations(case, device)`` returns name -> Peer. Each peer either has ``fn(q, k, v) -> out``
(bshd) or says why it is unavailable for this case on this machine (reported, never silently
dropped). Ours: the Triton kernels, the CUDA kernels, and on a CPU the PyTorch path. Peers: PyTorch
SDPA forced onto each of its backends, FlexAttention, the naive (materialized) reference in the
case's dtype, and for positional-encoding cases the encoding as a separate kernel (ours, standalone)
or as eager torch ops, followed by SDPA or FlexAttention.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import flashattn_py as fa
from flashattn_py.params import Rotary, Sinusoidal
from flashattn_py.semantics import masks, positional
from flashattn_py.validation.positional import resolve as resolve_encoding

from .cases import Case

NAIVE_MEMORY_LIMIT = 4 << 30  # bytes of scores the naive peer may materialize
CPU_MATH_MEMORY_LIMIT = 256 << 20  # on a CPU, naive / SDPA math peers are timed up to this many bytes of scores


@dataclass
class Peer:
    name: str
    ours: bool
    fn: Optional[Callable] = None
    unavailable: str = ""  # why fn is None
    timed_on_cpu: bool = True  # False for the Triton interpreter: its speed is no performance figure
    # Environment variables set while any of its calls runs, its backward included (the runner's
    # `environment`): e.g. the Hopper kernels' opt-in, which the CUDA backend reads at each call.
    env: dict = dataclasses.field(default_factory=dict)


def encoding_options(case: Case) -> dict:
    return {"rope": {"rotary": Rotary()}, "sinusoidal": {"sinusoidal": Sinusoidal()}, "none": {}}[case.encoding]


def mask_options(case: Case) -> dict:
    window = (case.window, case.window) if case.window >= 0 else (-1, -1)
    return {"causal": case.causal, "window_size": window}


def reference(case: Case, compute_dtype=torch.float64) -> Callable:
    """The naive reference for this case (float64 by default; the case's dtype for the naive peer)."""
    options = {**mask_options(case), **encoding_options(case), "compute_dtype": compute_dtype}
    return lambda q, k, v: fa.reference.attention(q, k, v, **options)


def eager_encode(x: torch.Tensor, case: Case) -> torch.Tensor:
    """The case's positional encoding in plain torch ops, as a model without fused kernels applies it."""
    if case.encoding == "none":
        return x
    batch, seqlen, _, head_dim = x.shape
    options = encoding_options(case)
    enc = resolve_encoding(options.get("rotary"), options.get("sinusoidal"), batch=batch, seqlen_q=seqlen,
                             seqlen_k=seqlen, head_dim=head_dim, device=x.device)
    return positional.encode(x, enc, enc.q_positions)


def kernel_encode(x: torch.Tensor, case: Case) -> torch.Tensor:
    """The encoding as our standalone fused kernel (a separate launch before attention)."""
    if case.encoding == "rope":
        return fa.apply_rotary(x, Rotary(), backend="triton")
    return fa.add_sinusoidal(x, backend="triton")


def window_mask(case: Case, device) -> Optional[torch.Tensor]:
    """Boolean keep-mask (S, S) for SDPA, which has no sliding-window argument."""
    if case.window < 0:
        return None
    positions = torch.arange(case.seqlen, device=device)
    window = masks.normalize_window(case.causal, (case.window, case.window))
    return masks.visible_keys(positions, positions, case.seqlen, case.seqlen, window)


def sdpa(q, k, v, case: Case, backend=None, mask=None):
    from torch.nn.attention import sdpa_kernel

    call = functools.partial(
        torch.nn.functional.scaled_dot_product_attention, q.transpose(1, 2), k.transpose(1, 2),
        v.transpose(1, 2), attn_mask=mask, is_causal=case.causal and mask is None,
        enable_gqa=case.kv_heads != case.heads)
    if backend is None:
        return call().transpose(1, 2)
    with sdpa_kernel(backend):
        return call().transpose(1, 2)


@functools.lru_cache(maxsize=None)
def _flex_block_mask(seqlen: int, causal: bool, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= kv_idx if causal else q_idx >= 0
        if window >= 0:
            keep = keep & (q_idx - kv_idx <= window) & (kv_idx - q_idx <= window)
        return keep

    if not causal and window < 0:
        return None
    return create_block_mask(mask_mod, None, None, seqlen, seqlen, device=device)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex(q, k, v, case: Case):
    block_mask = _flex_block_mask(case.seqlen, case.causal, case.window, str(q.device))
    out = _compiled_flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
                           enable_gqa=case.kv_heads != case.heads)
    return out.transpose(1, 2)


def _cuda_extension_problem() -> str:
    from flashattn_py.backends import cuda_backend

    return "" if cuda_backend.is_built() else "CUDA extension not built (FLASHATTN_BUILD_CUDA=1 pip install .)"


def _sm90_problem(case: Case, device: torch.device) -> str:
    """Why backend='cuda' with the Hopper kernels opted in (csrc/hopper/route.h) would not run them for this
    case, '' when it would: the checks of the route that depend on the case and the machine, asked of the
    extension."""
    from flashattn_py.backends import cuda_backend

    ext = cuda_backend.extension()
    if not ext.built_with_sm90a():
        return "the extension has no sm_90a code (FLASHATTN_CUDA_ARCHS=90a)"
    if torch.cuda.get_device_capability(device) != (9, 0):
        return "the Hopper kernels run on sm_90 (H100 / H200) only"
    dims = ext.sm90_head_dims()
    if case.head_dim not in dims:
        return f"the Hopper kernels have head dims {' / '.join(map(str, dims))}, not {case.head_dim}"
    return ""


def _sm90_environment() -> dict:
    """The environment a cuda[sm90] step runs in, forward and backward alike: the Hopper kernels' opt-in."""
    from flashattn_py.backends import cuda_backend

    return {cuda_backend.SM90_ENV: "1"}


def _ours(case: Case, device: torch.device) -> list[Peer]:
    options = {**mask_options(case), **encoding_options(case)}

    def attention(backend, **extra):
        return lambda q, k, v: fa.attention(q, k, v, backend=backend, **options, **extra)

    if device.type == "cpu":
        return [Peer("torch", True, attention("torch")),
                Peer("triton", True, attention("triton"), timed_on_cpu=False)]
    # The default (fused, dQ by atomics) backward, and the atomic-free one deterministic=True runs.
    peers = [Peer("triton", True, attention("triton")),
             Peer("triton[deterministic]", True, attention("triton", deterministic=True))]
    if case.encoding != "none":  # the two ways the Triton backend can schedule the encoding of K
        peers += [Peer(f"triton[{s}]", True, attention("triton", pe_k_strategy=s)) for s in ("in_kernel", "prepass")]
    problem = _cuda_extension_problem()
    if not problem and case.dtype == "fp32":
        problem = "the CUDA kernels are fp16/bf16 only"
    peers.append(Peer("cuda", True, None if problem else attention("cuda"), problem))
    sm90_problem = problem or _sm90_problem(case, device)
    peers.append(Peer("cuda[sm90]", True, None if sm90_problem else attention("cuda"), sm90_problem,
                      env=_sm90_environment()))
    if case.encoding != "none":  # the same two schedules on the CUDA backend (one rule: pe_strategy.py)
        peers += [Peer(f"cuda[{s}]", True, None if problem else attention("cuda", pe_k_strategy=s), problem)
                  for s in ("in_kernel", "prepass")]
    return peers


def _sdpa_backends(case: Case, device: torch.device) -> list[Peer]:
    from torch.nn.attention import SDPBackend

    mask_of = functools.lru_cache(maxsize=1)(lambda: window_mask(case, device))
    if device.type == "cpu":  # SDPA's CPU backends: its fused flash kernel (what it picks), and math
        peers = [Peer("sdpa_flash", False, lambda q, k, v: sdpa(q, k, v, case, SDPBackend.FLASH_ATTENTION, mask_of()))]
        score_bytes = case.batch * case.heads * case.seqlen ** 2 * 4
        if score_bytes > CPU_MATH_MEMORY_LIMIT:  # minutes per timing on a small CPU, and a figure nobody picks
            return peers + [Peer("sdpa_math", False, unavailable=f"materializes {score_bytes / 2**20:.0f} MiB of "
                                 f"scores (the CPU run times it up to {CPU_MATH_MEMORY_LIMIT >> 20} MiB)")]
        return peers + [Peer("sdpa_math", False, lambda q, k, v: sdpa(q, k, v, case, SDPBackend.MATH, mask_of()))]
    named = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
             "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_math": SDPBackend.MATH}
    return [Peer(name, False, lambda q, k, v, b=b: sdpa(q, k, v, case, b, mask_of())) for name, b in named.items()]


def _naive(case: Case, device: torch.device) -> Peer:
    score_bytes = case.batch * case.heads * case.seqlen ** 2 * torch.finfo(case.torch_dtype).bits // 8
    if score_bytes > (NAIVE_MEMORY_LIMIT if device.type == "cuda" else CPU_MATH_MEMORY_LIMIT):
        return Peer("naive", False, unavailable=f"would materialize {score_bytes / 2**30:.0f} GiB of scores")
    return Peer("naive", False, reference(case, compute_dtype=case.torch_dtype))


def implementations(case: Case, device: torch.device) -> dict[str, Peer]:
    """Every implementation for this case, ours first."""
    peers = _ours(case, device)
    if case.encoding == "none":
        peers += _sdpa_backends(case, device)
        if device.type == "cuda":
            peers.append(Peer("flex", False, lambda q, k, v: flex(q, k, v, case)))
        peers.append(_naive(case, device))
    else:
        mask_of = functools.lru_cache(maxsize=1)(lambda: window_mask(case, device))
        enc = "rope" if case.encoding == "rope" else "pe"
        if device.type == "cuda":
            peers.append(Peer(f"{enc}_kernel+sdpa", False, lambda q, k, v: sdpa(
                kernel_encode(q, case), kernel_encode(k, case), v, case, mask=mask_of())))
        peers.append(Peer(f"torch_{enc}+sdpa", False, lambda q, k, v: sdpa(
            eager_encode(q, case), eager_encode(k, case), v, case, mask=mask_of())))
        if device.type == "cuda":
            peers.append(Peer(f"torch_{enc}+flex", False, lambda q, k, v: flex(
                eager_encode(q, case), eager_encode(k, case), v, case)))
    return {p.name: p for p in peers}
