"""What one benchmark measurement is (a Case), its FLOP count, and the sweeps that generate cases."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")
ENCODINGS = ("none", "rope", "sinusoidal")


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    seqlen: int  # seqlen_q == seqlen_k: where top-left (SDPA) and bottom-right causal agree
    head_dim: int
    dtype: str = "bf16"
    causal: bool = False
    window: int = -1  # sliding window (left = right = window); -1: none
    encoding: str = "none"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def label(self) -> str:
        parts = [f"b{self.batch}", f"h{self.heads}" + (f"/{self.kv_heads}" if self.kv_heads != self.heads else ""),
                 f"s{self.seqlen}", f"d{self.head_dim}", self.dtype]
        parts += ["causal"] if self.causal else []
        parts += [f"win{self.window}"] if self.window >= 0 else []
        parts += [self.encoding] if self.encoding != "none" else []
        return "-".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


def visible_pairs(case: Case) -> float:
    """(query, key) pairs attended per head: Sq*Sk, halved for causal (the convention every
    FlashAttention paper uses), window-limited when a window is set."""
    s = case.seqlen
    if case.window >= 0:
        width = case.window + 1 if case.causal else 2 * case.window + 1
        return float(s * min(s, width))
    return s * s * (0.5 if case.causal else 1.0)


def attention_flops(case: Case, mode: str) -> float:
    """4*B*H*Sq*Sk*D for the forward (two matmuls); backward is 2.5x forward (five matmuls, one recompute)."""
    fwd = 4.0 * case.batch * case.heads * visible_pairs(case) * case.head_dim
    return fwd * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


def sweep(*, seqlens, head_dims, dtypes, causal, encodings, batch_heads, gqa=(1,), windows=(-1,),
          tokens=None) -> list[Case]:
    """Cartesian product of the options. batch_heads: (batch, heads) pairs. tokens: when set, batch is
    tokens // seqlen (fixed token count, so every seqlen does the same work per key)."""
    cases = []
    for seqlen, head_dim, dtype, is_causal, enc, (batch, heads), ratio, window in itertools.product(
            seqlens, head_dims, dtypes, causal, encodings, batch_heads, gqa, windows):
        if heads % ratio:
            continue
        b = max(1, tokens // seqlen) if tokens else batch
        cases.append(Case(b, heads, heads // ratio, seqlen, head_dim, dtype, is_causal, window, enc))
    return cases


def check_case(case: Case) -> Case:
    """The correctness check runs each configuration at a size the float64 reference affords."""
    return replace(case, batch=1, seqlen=min(case.seqlen, 200))
