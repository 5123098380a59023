"""csrc/score_mods.h — the softcap and ALiBi every CUDA kernel applies to its scores, forward and
backward — against the Python formulas (flashattn_py/semantics/score_mods.py ``modify``, in float64),
without a GPU: the header is plain C++ with __host__ __device__ functions, so
csrc/tests/score_mods_probe.cpp compiles it with the host compiler and prints what the kernels compute.

Checked: the modified score (in the kernels' base-2 units) and d(capped)/d(scaled) over raw scores from
0 to the saturation of tanh (both signs), ALiBi
slopes read at (batch, head) through their strides (a per-head vector broadcast over the batch too),
the signed diagonal offset, and which calls take the instances compiled for score mods.
"""
import math
import subprocess

import numpy as np
import pytest
import torch
from host_probe import build_probe

from flashattn_py.params import ScoreMods
from flashattn_py.semantics.score_mods import modify

LOG2E = 1.0 / math.log(2.0)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return build_probe(tmp_path_factory, "score_mods_probe", "-O2")


def run_probe(exe, *, softcap, scale, slopes=None, strides=(0, 0), scores=()):
    """(has_score_mods, [(s2, dcap)]) for scores = [(batch, head, raw, offset)]."""
    flat = [] if slopes is None else np.asarray(slopes, dtype=np.float32).ravel().tolist()
    values = [softcap, scale, int(slopes is not None), *strides, len(flat), *flat, len(scores)]
    for batch, head, raw, offset in scores:
        values += [batch, head, raw, offset]
    proc = subprocess.run([str(exe)], input=" ".join(map(repr, values)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    has_mods = bool(int(lines[0].split()[1]))
    return has_mods, [tuple(float(x) for x in line.split()[1:]) for line in lines[1:]]


def expected(raw, offset, scale, softcap, slope):
    """The float64 modified score (natural log) and d(capped)/d(scaled) of one score: semantics' `modify`
    on a 1 x 1 score of query offset against key 0 (diagonal offset 0)."""
    slopes = None if slope is None else torch.tensor([[slope]], dtype=torch.float64)
    mods = ScoreMods(softcap=softcap, alibi_slopes=slopes)
    scores = torch.tensor([[[[raw * scale]]]], dtype=torch.float64)
    rows, cols = torch.tensor([max(offset, 0)]), torch.tensor([max(-offset, 0)])
    modified, grad = modify(scores, mods, rows, cols, 0)
    return modified.item(), 1.0 if grad is None else grad.item()


RAWS = [0.0, 1e-3, -0.37, 0.9, -0.99, 1.01, 3.0, -7.5, 40.0, -250.0, 1e4]


@pytest.mark.parametrize("softcap", [0.0, 1.0, 30.0, 50.0])
@pytest.mark.parametrize("alibi", [False, True])
def test_scores_match_the_python_formulas(probe, softcap, alibi):
    scale = 0.125
    slopes = [[0.5, 0.25], [0.0625, 2.0 ** -8]] if alibi else None  # (batch 2, heads 2)
    scores = [(b, h, raw * sign, offset) for b in range(2) for h in range(2) for raw in RAWS for sign in (1, -1)
              for offset in (0, 3, -17, 4096)]
    has_mods, got = run_probe(probe, softcap=softcap, scale=scale, slopes=slopes, strides=(2, 1), scores=scores)
    assert has_mods == (softcap > 0 or alibi)
    for (b, h, raw, offset), (s2, dcap) in zip(scores, got):
        want, want_dcap = expected(raw, offset, scale, softcap, slopes[b][h] if alibi else None)
        # fp32 products and one exp2 for tanh: a few ulp of the larger of the terms.
        size = max(abs(raw * scale), softcap, abs(want), 1.0)
        assert abs(s2 / LOG2E - want) <= 2e-6 * size, (b, h, raw, offset, s2 / LOG2E, want)
        assert abs(dcap - want_dcap) <= 1e-6, (b, h, raw, offset, dcap, want_dcap)


def test_tanh_is_accurate_where_the_softmax_looks(probe):
    """softcap 1 and scale 1: the score is tanh(raw) itself. Its absolute error is what moves a logit
    (times softcap), so it is bounded absolutely, from 1e-6 to saturation, both signs; the approximate
    tanh that --use_fast_math would pick is off by up to 2^-11 relative and fails this."""
    raws = [x * s for x in np.geomspace(1e-6, 20.0, 400).tolist() for s in (1, -1)]
    _, got = run_probe(probe, softcap=1.0, scale=1.0, scores=[(0, 0, r, 0) for r in raws])
    for raw, (s2, dcap) in zip(raws, got):
        want = math.tanh(float(np.float32(raw)))
        assert abs(s2 / LOG2E - want) <= 2e-7, raw
        assert math.copysign(1.0, s2) == math.copysign(1.0, raw), raw
        assert abs(dcap - (1 - want * want)) <= 5e-7, raw


def test_per_head_slopes_broadcast_over_the_batch(probe):
    """alibi_slopes of shape (nheads,) reach the kernels as an expanded (batch, nheads) view: batch stride 0."""
    slopes = [0.5, 0.125, 0.03125]
    scores = [(b, h, 2.0, 10) for b in range(4) for h in range(3)]
    _, got = run_probe(probe, softcap=0.0, scale=1.0, slopes=slopes, strides=(0, 1), scores=scores)
    for (b, h, raw, offset), (s2, _) in zip(scores, got):
        assert s2 / LOG2E == pytest.approx(raw - slopes[h] * offset, rel=1e-6)


def test_plain_scores_keep_the_plain_instances(probe):
    has_mods, got = run_probe(probe, softcap=0.0, scale=0.25, scores=[(0, 0, 3.0, 5)])
    assert not has_mods
    assert got[0] == pytest.approx((3.0 * 0.25 * LOG2E, 1.0), rel=1e-7)
