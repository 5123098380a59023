"""csrc/sequence.h — where each sequence of a variable-length, seqused_k or paged batch lives, as every
CUDA kernel reads it — against the Python rules, without a GPU: the header is plain C++ with
__host__ __device__ functions, so csrc/tests/sequence_probe.cpp compiles it with the host compiler
and prints what the kernels would compute.

Checked against: varlen.varlen_params (packed rows, lse layout), varlen.token_positions (positions
restart per sequence), masks.diagonal_offset (bottom-right per sequence), checks.SequenceLengths
(leftpad_k: a first visible key, key indices not shifted), kvcache._cache_rows (the page and slot of
a cache row), and the split-K contract (contiguous shares covering every block).
"""
import subprocess

import pytest
import torch
from host_probe import build_probe
from hypothesis import given, settings
from hypothesis import strategies as st

from flashattn_py.decoding import _cache_rows
from flashattn_py.semantics import masks
from flashattn_py.validation.sequences import token_positions, varlen_params

# The probe's fixed strides (sequence_probe.cpp): tensors (batch, seq, head) = (1000000, 100, 7),
# positions (batch, seq) = (1000, 3), pages 100000 apart with rows 100 apart.
BATCH_STRIDE, SEQ_STRIDE, HEAD_STRIDE = 1_000_000, 100, 7
POS_STRIDE_B, POS_STRIDE_S = 1000, 3
PAGE_STRIDE = 100_000


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return build_probe(tmp_path_factory, "sequence_probe", "-O1")


def run_probe(exe, *, batch, seqlen_q, seqlen_k, nheads_q=3, top_left=0, cu_q=None, cu_k=None, seqused=None,
              page_size=0, table=None, num_splits=1, leftpad=None):
    """{"layout": (has_sequence_layout, dense instance's k_first), "seq": {b: fields}, "kv": {b: offsets},
    "split": {b: [(first, last)]}} printed by the probe."""
    header = [batch, seqlen_q, seqlen_k, nheads_q, top_left, int(cu_q is not None), int(seqused is not None),
              page_size, table.shape[1] if table is not None else 0, num_splits, int(leftpad is not None)]
    values = header + (list(cu_q) + list(cu_k) if cu_q is not None else []) + list(seqused or [])
    values += list(leftpad or [])
    values += table.flatten().tolist() if table is not None else []
    proc = subprocess.run([str(exe)], input=" ".join(map(str, values)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = {"seq": {}, "kv": {}, "split": {}}
    names = ("q_row0", "k_row0", "seqlen_q", "seqlen_k", "k_first", "k_rows", "diag", "stats_head1", "q_offset",
             "k_offset", "qpos_offset")
    for line in proc.stdout.splitlines():
        kind, b, *rest = line.split()
        b, rest = int(b), [int(x) for x in rest]
        if kind == "layout":
            out["layout"] = (b, *rest)
        elif kind == "seq":
            out["seq"][b] = dict(zip(names, rest))
        elif kind == "kv":
            out["kv"][b] = rest
        else:
            out["split"].setdefault(b, []).append((rest[1], rest[2]))
    return out


def _cu(lengths):
    return [0] + torch.tensor(lengths).cumsum(0).tolist()


PACKED = {"ragged": ([5, 0, 33, 1, 17], [7, 3, 30, 1, 17]), "one": ([70], [45]), "empty_k": ([4, 9], [0, 12])}


def check_packed(probe, lens_q, lens_k):
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    total_q, total_k = cu_q[-1], cu_k[-1]
    q, k = torch.zeros(total_q, 3, 8), torch.zeros(total_k, 3, 8)
    params = varlen_params(q, k, k, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32),
                           max(lens_q), max(lens_k), causal=True)
    got = run_probe(probe, batch=len(lens_q), seqlen_q=max(lens_q), seqlen_k=max(lens_k), cu_q=cu_q, cu_k=cu_k,
                    top_left=1)  # top_left is ignored: packed sequences align bottom-right each
    positions = token_positions(torch.tensor(cu_q, dtype=torch.int32), total_q)[0]
    lse_b, lse_h = params.lse_strides
    assert sorted(got["seq"]) == list(range(len(lens_q)))
    for b, s in got["seq"].items():
        assert (s["q_row0"], s["k_row0"]) == (cu_q[b], cu_k[b])
        assert (s["seqlen_q"], s["seqlen_k"], s["k_rows"]) == (lens_q[b], lens_k[b], lens_k[b])
        assert s["diag"] == masks.diagonal_offset(lens_q[b], lens_k[b])
        assert s["stats_head1"] == b * lse_b + 1 * lse_h + cu_q[b]  # lse (nheads, total_q)
        # Packed rows: batch stride unused, rows from the sequence's first packed row.
        assert s["q_offset"] == cu_q[b] * SEQ_STRIDE + HEAD_STRIDE
        assert s["k_offset"] == cu_k[b] * SEQ_STRIDE + HEAD_STRIDE
        first = s["qpos_offset"] // POS_STRIDE_S  # positions restart at 0 in every sequence
        assert positions[first:first + lens_q[b]].tolist() == list(range(lens_q[b]))


@pytest.mark.parametrize("lengths", PACKED.values(), ids=PACKED.keys())
def test_packed_sequences_match_varlen_rules(probe, lengths):
    check_packed(probe, *lengths)


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=9))
def test_random_packed_batches_match_varlen_rules(probe, pairs):
    lens_q, lens_k = [q for q, _ in pairs], [k for _, k in pairs]
    check_packed(probe, lens_q, lens_k)


@pytest.mark.parametrize("top_left", [0, 1])
def test_dense_and_seqused_batches(probe, top_left):
    batch, seqlen_q, seqlen_k, nheads = 3, 4, 10, 3
    dense = run_probe(probe, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads, top_left=top_left)
    used = [0, 6, 10]
    ragged = run_probe(probe, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads, top_left=top_left,
                       seqused=used)
    assert dense["layout"] == (0, 0) and ragged["layout"] == (1, 0)  # the dense instance for dense calls only
    for b in range(batch):
        d, r = dense["seq"][b], ragged["seq"][b]
        assert d["k_first"] == r["k_first"] == 0  # every key visible from key 0
        assert d["diag"] == (0 if top_left else masks.diagonal_offset(seqlen_q, seqlen_k))
        # seqused_k: fewer keys attended, every key row still owned (zero gradients), bottom-right per sequence.
        assert (r["seqlen_k"], r["k_rows"], r["diag"]) == (used[b], seqlen_k, masks.diagonal_offset(seqlen_q, used[b]))
        for s in (d, r):
            assert (s["q_row0"], s["k_row0"], s["seqlen_q"]) == (0, 0, seqlen_q)
            assert s["stats_head1"] == (b * nheads + 1) * seqlen_q  # lse (batch, nheads, seqlen_q)
            assert s["q_offset"] == s["k_offset"] == b * BATCH_STRIDE + HEAD_STRIDE
            assert s["qpos_offset"] == b * POS_STRIDE_B


@pytest.mark.parametrize("leftpad", [False, True], ids=["", "leftpad"])
@pytest.mark.parametrize("page_size", [16, 5, 1])
def test_paged_rows_match_the_cache_layout(probe, page_size, leftpad):
    """Left padding (cache_leftpad) bounds the visible keys but moves no row: the same pages and slots."""
    gen = torch.Generator().manual_seed(page_size)
    batch, max_pages = 4, 4
    table = torch.randperm(batch * max_pages, generator=gen).reshape(batch, max_pages).to(torch.int32)
    used = [0, page_size * max_pages, page_size + 1, page_size * max_pages - 1]
    first = [0, page_size * max_pages, page_size, 1] if leftpad else None  # up to and including used
    got = run_probe(probe, batch=batch, seqlen_q=1, seqlen_k=page_size * max_pages, seqused=used,
                    page_size=page_size, table=table, leftpad=first)
    for b in range(batch):
        pages, slots = _cache_rows(torch.zeros(batch, dtype=torch.int32), used[b], page_size, table, None, batch)
        expected = (pages[b] * PAGE_STRIDE + slots[b] * SEQ_STRIDE).tolist()
        assert got["kv"][b] == expected
        s = got["seq"][b]
        assert (s["seqlen_k"], s["k_first"], s["diag"]) == (used[b], first[b] if leftpad else 0, used[b] - 1)



@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_packed_batches_read_rows_of_their_own_pages(probe, page_size):
    """flash_attn_varlen_func(block_table=): cu_seqlens_k give each sequence's key count, and its keys
    are rows 0.. of its pages (not packed rows), as varlen_paged.packed_rows gathers them."""
    gen = torch.Generator().manual_seed(page_size)
    lens_q, lens_k, max_pages = [6, 1, 0, 9], [40, 23, 7, 4], -(-40 // page_size)
    batch = len(lens_q)
    table = torch.randperm(batch * max_pages, generator=gen).reshape(batch, max_pages).to(torch.int32)
    cu_q = [0] + torch.tensor(lens_q).cumsum(0).tolist()
    cu_k = [0] + torch.tensor(lens_k).cumsum(0).tolist()
    got = run_probe(probe, batch=batch, seqlen_q=max(lens_q), seqlen_k=max(lens_k), cu_q=cu_q, cu_k=cu_k,
                    page_size=page_size, table=table)
    for b in range(batch):
        rows = torch.arange(lens_k[b])
        expected = (table[b].long()[rows // page_size] * PAGE_STRIDE + (rows % page_size) * SEQ_STRIDE).tolist()
        assert got["kv"][b] == expected
        s = got["seq"][b]
        assert (s["q_row0"], s["seqlen_q"], s["seqlen_k"], s["diag"]) == (cu_q[b], lens_q[b], lens_k[b],
                                                                         lens_k[b] - lens_q[b])

def check_leftpad(probe, seqlen_q, seqlen_k, used, first, nheads=3, top_left=0, paging=None):
    """leftpad_k (checks.SequenceLengths): sequence b sees keys first[b] .. used[b] - 1; everything
    else (lengths, diagonal, rows, lse rows, paged offsets) is what seqused_k alone gives."""
    batch = len(used)
    paged = dict(page_size=paging[0], table=paging[1]) if paging else {}
    plain = run_probe(probe, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads, top_left=top_left,
                      seqused=used, **paged)
    got = run_probe(probe, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads, top_left=top_left,
                    seqused=used, leftpad=first, **paged)
    assert got["layout"] == (1, 0)  # the per-sequence instance; the dense one never reads leftpad_k
    for b in range(batch):
        s = got["seq"][b]
        assert range(s["k_first"], s["seqlen_k"]) == range(first[b], used[b])
        assert s == {**plain["seq"][b], "k_first": first[b]}  # key indices are not shifted
        assert s["diag"] == masks.diagonal_offset(seqlen_q, used[b])
    assert got["kv"] == plain["kv"]


@pytest.mark.parametrize("top_left", [0, 1])  # ignored: per-sequence lengths align bottom-right
def test_leftpad_is_a_first_visible_key(probe, top_left):
    check_leftpad(probe, seqlen_q=4, seqlen_k=10, used=[0, 6, 10, 10, 7], first=[0, 6, 0, 3, 7], top_left=top_left)


def test_leftpad_alone_selects_the_layout_instance(probe):
    """has_sequence_layout: leftpad_k without seqused_k (check_layout refuses the call) still picks the
    per-sequence instance, never the dense one that would ignore it."""
    got = run_probe(probe, batch=2, seqlen_q=3, seqlen_k=8, leftpad=[2, 8])
    assert got["layout"] == (1, 0)
    assert [(got["seq"][b]["k_first"], got["seq"][b]["seqlen_k"]) for b in range(2)] == [(2, 8), (8, 8)]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seqlen_q=st.integers(1, 9), batch=st.integers(1, 6), page_size=st.sampled_from([0, 1, 3, 16]))
def test_random_leftpad_batches(probe, data, seqlen_q, batch, page_size):
    """Random seqused_k and leftpad_k (0 up to seqused_k, equal included), dense or paged K/V."""
    seqlen_k = data.draw(st.integers(0, 64))
    used = data.draw(st.lists(st.integers(0, seqlen_k), min_size=batch, max_size=batch))
    first = [data.draw(st.integers(0, u)) for u in used]
    paging = None
    if page_size:
        max_pages = -(-seqlen_k // page_size)
        table = torch.randperm(batch * max_pages).reshape(batch, max_pages).to(torch.int32)
        paging = (page_size, table)
    check_leftpad(probe, seqlen_q, seqlen_k, used, first, paging=paging)


@settings(max_examples=60, deadline=None)
@given(blocks=st.integers(0, 70), num_splits=st.integers(2, 17))
def test_split_k_shares_cover_the_key_blocks_once(probe, blocks, num_splits):
    """Splits are in order, contiguous, cover [1, 1 + blocks) exactly, at most ceil(blocks / splits)
    blocks each, and the empty ones (more splits than work) come last."""
    got = run_probe(probe, batch=1, seqlen_q=1, seqlen_k=blocks, num_splits=num_splits)["split"][0]
    assert len(got) == num_splits
    share = -(-blocks // num_splits)
    position = 1
    for first, last in got:
        assert first == position and first <= last <= first + share
        position = last
    assert position == 1 + blocks
    sizes = [last - first for first, last in got]
    assert sizes == sorted(sizes, reverse=True) or blocks == 0

