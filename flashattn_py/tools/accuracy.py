"""The accuracy rule, written once: the test suite and the benchmark harness both apply it.

A result in a low precision is correct when its error against the float64 reference is at most 2x
the error of the naive implementation run in that same precision, plus a small absolute slack.
"""
from __future__ import annotations

import torch

# Absolute slack: about two units in the last place of a value of magnitude 1 (bf16: 2 x 2^-7,
# fp16: 2 x 2^-10), scaled by the tensor's largest magnitude (see error_bound).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected|; infinities must match exactly (lse of rows that see no key)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert not torch.isnan(actual).any(), "NaN in output (poisoned element never written, or a 0/0)"
    infinite = torch.isinf(expected)
    assert torch.equal(actual[infinite], expected[infinite]), "infinite entries differ from the reference"
    finite = ~infinite
    if not finite.any():
        return 0.0
    return (actual[finite] - expected[finite]).abs().max().item()


def error_bound(exact: torch.Tensor, naive: torch.Tensor, dtype: torch.dtype) -> float:
    """2 x naive error + atol, atol = ATOL[dtype] x max(1, max |exact|): a couple of ulps of the
    tensor's largest entries, since the final rounding to dtype alone costs up to half an ulp there
    and the naive error can be luckily small on a given input (e.g. bf16 dv of magnitude 10: 1 ulp
    is 0.0625)."""
    finite = exact[torch.isfinite(exact)]
    magnitude = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    return 2 * max_error(naive, exact) + ATOL[dtype] * magnitude
