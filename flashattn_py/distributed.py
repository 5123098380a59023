"""Context parallelism: attention over a sequence split across the ranks of a torch.distributed group.

Each rank holds one shard of every sequence (ring / allgather: rank r holds tokens [r * S, (r + 1) * S)
of a sequence of world_size * S tokens; zigzag: see below), bshd, the same S on every rank, and gets
the attention output of its own queries against the whole sequence, with gradients for its own q, k, v
shards.

- ``method="ring"``: the K / V shards travel around the ring (rank r sends to r + 1, receives from
  r - 1, the next block's transfer overlapping the current block's attention); each block's partial
  (out, lse) is merged into the running one through the log-sum-exp (``merge_partials``, the split-K
  rule). Under a causal mask a rank skips the blocks after its own (their keys are all in its future)
  and attends its own block with the causal diagonal. The backward passes the blocks around again,
  each carrying the dK / dV accumulated for it so far, and one last hop brings every block's
  gradients home. Memory: two K / V shards in flight, whatever the world size.
- ``method="zigzag"``: the ring over a load-balanced layout for causal attention: the sequence is
  cut into 2 * world_size chunks and rank r holds chunks r and 2 * world_size - 1 - r (an early and a
  late one), so every rank does the same work under the causal mask (with contiguous shards the last
  rank does world_size times the first's). ``shard_sequence`` / ``unshard_sequence`` make and undo
  the layout.
- ``method="allgather"``: K and V are all-gathered once (Llama 3's choice for causal training), the
  local queries attend to the keys they can see, and the backward sums the K / V gradients over the
  ranks (all-reduce) and keeps each rank's slice. Memory: the whole sequence's K / V on every rank.

Positional encodings (``rotary=`` / ``sinusoidal=``) use each token's global position (the shard's
offset), fused in the kernels as everywhere else. Causal masking and sliding windows are placed by
global position (query i sees key j when i - left <= j <= i + right; causal is (left, 0)): each
(query piece, key piece) pair is skipped when no query sees any of its keys, computed without a mask
when every query sees every key, and otherwise computed with the window at the pair's own diagonal
(``AttentionParams.diagonal_offset`` = the query piece's offset - the key piece's). Any backend runs the
blocks (the CUDA kernels only where the diagonal sits at key 0 of a block: causal, or no window); the
backward of a block is the attention backward op given the merged out and lse (P = exp(S - lse) is
then the whole row's, so each block's gradients are exactly its share).
"""
from __future__ import annotations

import dataclasses

import torch

# Imported here, at import time, and not left to the first call of one of our ops (torch's custom-op
# wrapper imports it then): torch._dynamo imported after init_process_group keeps the process group, and
# with it gloo's worker threads, alive past destroy_process_group (seen with torch 2.13). A worker can then
# release a finished collective's tensors while Python finalizes, and the process aborts at exit
# ("terminate called without an active exception"). Importing this module before init_process_group, the
# usual order, avoids it; docs/design.md, Context parallelism, says so for users.
import torch._dynamo  # noqa: F401
import torch.distributed as dist

from . import backends, ops
from .params import UNBOUNDED
from .semantics import masks
from .validation.attention import attention_params, check_window_size
from .validation.common import check_bool, check_device, check_tensor
from .validation.sequences import token_positions, varlen_params

METHODS = ("ring", "zigzag", "allgather")
LOG2E = 1.4426950408889634  # a backend that keeps_lse_log2 reads the lse in base 2 (ops.py, "aux")


def merge_partials(out_a, lse_a, out_b, lse_b):
    """(out, lse) of attention over the union of two disjoint key sets, from each set's (out, lse): the
    split-K rule. Rows that see no key in either keep out 0, lse -inf.

    Args:
        out_a, out_b: ``[B, S, H, D]``: each key set's attention output (any float dtype).
        lse_a, lse_b: float32 ``[B, H, S]``: each key set's log-sum-exp, natural log (-inf: the row sees no key).

    Returns:
        (out, lse): out float32 ``[B, S, H, D]``, lse ``[B, H, S]`` in lse_a's dtype.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    finite = torch.isfinite(lse)
    safe = torch.where(finite, lse, 0.0)
    weight_a = torch.where(finite, torch.exp(lse_a - safe), 0.0).transpose(1, 2)[..., None]
    weight_b = torch.where(finite, torch.exp(lse_b - safe), 0.0).transpose(1, 2)[..., None]
    return out_a.float() * weight_a + out_b.float() * weight_b, lse


def context_parallel_attention(q, k, v, *, group=None, method: str = "ring", causal: bool = False,
                               window_size: tuple[int, int] = (-1, -1), softmax_scale: float | None = None,
                               rotary=None, sinusoidal=None, return_lse: bool = False, backend: str = "auto",
                               cu_seqlens: torch.Tensor | None = None):
    """Attention of this rank's query shard against the whole sequence, split across the ranks of ``group``.
    Differentiable w.r.t. q, k, v (each rank gets its shard's gradients). The methods, their communication
    and memory: the module docstring and docs/design.md ("Context parallelism").

    Args:
        q: ``[B, S, Hq, D]``: this rank's shard, in ``shard_sequence``'s layout for ``method``; S the same on
            every rank (checked).
        k, v: ``[B, S, Hkv, D]``: this rank's shards, q's dtype; Hq divisible by Hkv (GQA / MQA).
        group: a torch.distributed process group this rank belongs to (torch.distributed must be initialized);
            default the world.
        method: "ring" (default: K / V shards passed around the ring), "zigzag" (the ring over a load-balanced
            layout for causal attention; S must be even) or "allgather" (K / V all-gathered once).
        causal: mask keys after the query by global position (bottom-right = top-left for the whole sequence).
        window_size: ``(left, right)``: query i sees keys i - left .. i + right by global position; -1 = unbounded.
            Blocks no query of a piece can see are skipped (ring, zigzag) or never attended (allgather).
        softmax_scale: default ``1 / sqrt(D)``.
        rotary: a ``Rotary`` applied to q and k at each token's global position; None = none.
        sinusoidal: a ``Sinusoidal`` encoding at each token's global position; None = none.
        return_lse: also return the lse.
        backend: as in ``flashattn_py.attention``, for every block.
        cu_seqlens: int32 ``[N + 1]``: a packed batch (FlashAttention's varlen layout) of N sequences, the
            whole batch's prefix sums, the same on every rank. q, k, v are then this rank's rows of the packed
            tensors, ``[S, H, D]`` (rows ``rank * S .. (rank + 1) * S - 1``); a sequence may span ranks.
            ``method="allgather"`` only; causal (with any left window) or full attention; positions restart
            per sequence, as in flash_attn_varlen_func.

    Returns:
        out: ``[B, S, Hq, D]``, q's dtype: this rank's queries' output, in its shard's order. With
        ``return_lse``: ``(out, lse)``, lse float32 ``[B, Hq, S]`` (natural log). Packed: out ``[S, Hq, D]``,
        lse ``[Hq, S]``.
    """
    group, rank, world = _check_group(group)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_bool("causal", causal)
    window = masks.normalize_window(causal, check_window_size(window_size))
    options = dict(softmax_scale=softmax_scale, rotary=rotary, sinusoidal=sinusoidal)
    if cu_seqlens is not None:
        return _packed_call(q, k, v, cu_seqlens, group, rank, world, method, window, return_lse, options, backend)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D (batch, seqlen, heads, head_dim) tensor shard")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2]:
        raise ValueError(f"q, k, v shards must share (batch, seqlen) and k, v their shape, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    _check_same_shards(q, k, group, world)
    options["backend"] = backends.select(backend, q.device)  # the one backend choice of the call: every block's
    if method == "allgather":
        out, lse = _allgather_attention(q, k, v, group, rank, world, window, options)
    else:
        if method == "zigzag" and q.shape[1] % 2:
            raise ValueError(f"method='zigzag' needs an even shard length (two equal chunks per rank), got "
                             f"{q.shape[1]}: the whole sequence must split into 2 * world_size equal chunks")
        out, lse = _RingAttention.apply(q, k, v, group, rank, world, window, method, options)
    return (out, lse) if return_lse else out


def _check_group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("context_parallel_attention needs torch.distributed initialized "
                         "(torch.distributed.init_process_group)")
    group = dist.group.WORLD if group is None else group
    try:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"group must be a torch.distributed process group this rank belongs to: {e}") from e
    if rank < 0:
        raise ValueError("group must be a torch.distributed process group this rank belongs to")
    return group, rank, world


def _check_same_shards(q, k, group, world: int) -> None:
    """One small all-gather: every rank's (batch, S, heads, kv_heads, head_dim) must be the same."""
    mine = torch.tensor([*q.shape, k.shape[2]], dtype=torch.int64, device=q.device)
    shapes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shapes, mine, group=group)
    if any(not torch.equal(s, mine) for s in shapes):
        raise ValueError("q / k shard shapes differ across ranks (batch, seqlen, heads, kv_heads, head_dim): "
                         f"{[s.tolist() for s in shapes]}; every rank must hold an equal shard")


def _positions(q_offset: int, k_offset: int, options) -> dict:
    """Global positions of the block's tokens, for the encoding (none without one)."""
    encoded = options.get("rotary") is not None or options.get("sinusoidal") is not None
    return dict(q_positions=q_offset, k_positions=k_offset) if encoded else {}


def _block_window(q_offset: int, q_len: int, k_offset: int, k_len: int, window):
    """How queries q_offset .. q_offset + q_len - 1 attend keys k_offset .. k_offset + k_len - 1 (global
    positions) under `window`: None (no query sees any of them: skip the pair), (-1, -1) (every query sees
    every key: no mask), or `window` itself (masked at the pair's own diagonal)."""
    if q_len == 0 or k_len == 0:
        return None
    total = max(q_offset + q_len, k_offset + k_len)
    lo, hi = masks.key_range(q_offset, q_offset + q_len, total, total, window, offset=0)
    if max(lo, k_offset) >= min(hi, k_offset + k_len):
        return None
    left, right = window
    sees_all = ((right == UNBOUNDED or k_offset + k_len - 1 <= q_offset + right)
                and (left == UNBOUNDED or k_offset >= q_offset + q_len - 1 - left))
    return (UNBOUNDED, UNBOUNDED) if sees_all else window


def _block_params(q, k, v, q_offset: int, k_offset: int, window, options):
    """The params of q (global positions q_offset + i) against one key block (k_offset + j): the encoding at
    global positions, the window's diagonal at key q_offset - k_offset of the block."""
    opts = {name: value for name, value in options.items() if name != "backend"}
    params = attention_params(q, k, v, window_size=window, **_positions(q_offset, k_offset, opts), **opts)
    return dataclasses.replace(params, diagonal_offset=q_offset - k_offset)


def _attend(q, k, v, q_offset: int, k_offset: int, window, options):
    """(out, lse) of q (global positions q_offset + i) against one key block (k_offset + j), differentiable."""
    return ops.attention(q, k, v, _block_params(q, k, v, q_offset, k_offset, window, options), options["backend"])


def _block_backward(dout, q, k, v, out, lse, q_offset: int, k_offset: int, window, options):
    """(dq, dk, dv) of one key block given the merged out and lse (the attention backward op)."""
    params = _block_params(q, k, v, q_offset, k_offset, window, options)
    chosen = options["backend"]
    aux = (lse * LOG2E).contiguous() if chosen.keeps_lse_log2 else lse.new_empty(0)
    dq, dk, dv, _, _ = ops.attention_backward(dout.contiguous(), *ops.unit_stride(q, k, v), out, lse.contiguous(),
                                              aux, **ops.op_args(params, chosen.name))
    return dq, dk, dv


def _ring_exchange(tensors, group, rank: int, world: int):
    """Start sending `tensors` to the next rank and receiving the previous rank's; returns the
    receive buffers and the requests to wait on (a world of one keeps its own)."""
    if world == 1:
        return list(tensors), []
    nxt, prv = dist.get_global_rank(group, (rank + 1) % world), dist.get_global_rank(group, (rank - 1) % world)
    received = [torch.empty_like(t) for t in tensors]
    requests = [dist.isend(t.contiguous(), nxt, group=group) for t in tensors]
    requests += [dist.irecv(r, prv, group=group) for r in received]
    return received, requests


def shard_sequence(x: torch.Tensor, rank: int, world: int, method: str = "ring") -> torch.Tensor:
    """This rank's shard of a whole sequence for ``method``: the layout context_parallel_attention expects.

    Args:
        x: ``[B, total, ...]`` (e.g. ``[B, total, H, D]``): the whole sequence; total must split into world
            (zigzag: 2 * world) equal chunks.
        rank: this rank's index in the group, in [0, world).
        world: the group's size.
        method: "ring" / "allgather" (default "ring": tokens ``[rank * S, (rank + 1) * S)``) or "zigzag"
            (chunks rank and ``2 * world - 1 - rank`` of 2 * world equal chunks).

    Returns:
        ``[B, total / world, ...]``, x's dtype: a copy.
    """
    chunks = 2 * world if method == "zigzag" else world
    if x.shape[1] % chunks:
        raise ValueError(f"a sequence of {x.shape[1]} tokens does not split into {chunks} equal chunks "
                         f"({method} over {world} ranks)")
    pieces = shard_pieces(rank, world, x.shape[1] // world, method)
    return torch.cat([x[:, offset:offset + length] for offset, length in pieces], dim=1)


def unshard_sequence(shards: list[torch.Tensor], method: str = "ring") -> torch.Tensor:
    """The whole sequence from every rank's shard: shard_sequence's inverse.

    Args:
        shards: world tensors ``[B, S, ...]``: every rank's shard, in rank order (e.g. all-gathered).
        method: the method the shards were made for (shard_sequence's); default "ring".

    Returns:
        ``[B, world * S, ...]``, the shards' dtype: the whole sequence in token order.
    """
    world, seqlen = len(shards), shards[0].shape[1]
    whole = shards[0].new_empty((shards[0].shape[0], world * seqlen, *shards[0].shape[2:]))
    for rank, shard in enumerate(shards):
        for i, (offset, length) in enumerate(shard_pieces(rank, world, seqlen, method)):
            whole[:, offset:offset + length] = shard[:, _rows(shard_pieces(rank, world, seqlen, method), i)]
    return whole


def shard_pieces(rank: int, world: int, seqlen: int, method: str) -> list[tuple[int, int]]:
    """The contiguous pieces of the whole sequence a rank's shard holds, in shard order.

    Args:
        rank: the rank's index in the group, in [0, world).
        world: the group's size.
        seqlen: the shard's length S (the whole sequence has world * S tokens).
        method: "ring" / "allgather" (one piece: tokens ``[rank * S, (rank + 1) * S)``) or "zigzag" (chunk rank
            and chunk ``2 * world - 1 - rank`` of a sequence cut in 2 * world chunks).

    Returns:
        list of ``(global offset, length)`` int pairs.
    """
    if method != "zigzag":
        return [(rank * seqlen, seqlen)]
    chunk = seqlen // 2
    return [(rank * chunk, chunk), ((2 * world - 1 - rank) * chunk, chunk)]


def _block_pairs(q_pieces, k_pieces, window):
    """(q piece index, k piece index, the pair's window: _block_window) of the piece pairs to compute."""
    for qi, (q_off, q_len) in enumerate(q_pieces):
        for ki, (k_off, k_len) in enumerate(k_pieces):
            pair = _block_window(q_off, q_len, k_off, k_len, window)
            if pair is not None:
                yield qi, ki, pair


def _rows(pieces, i: int) -> slice:
    start = sum(length for _, length in pieces[:i])
    return slice(start, start + pieces[i][1])


def ring_forward(q, k, v, group, rank: int, world: int, window, method: str, options, communicate=True):
    """(out, lse) of the ring's forward (context_parallel_attention's "ring" and "zigzag"), without autograd of
    its own.

    Args:
        q: ``[B, S, Hq, D]``: this rank's query shard.
        k, v: ``[B, S, Hkv, D]``: this rank's key / value shards.
        group: the torch.distributed process group.
        rank: this rank's index in the group.
        world: the group's size.
        window: ``(left, right)`` by global position, causal folded in (``(left, 0)``); -1 = unbounded.
        method: "ring" or "zigzag" (shard_pieces' layout).
        options: dict of the blocks' softmax_scale, rotary, sinusoidal (``flashattn_py.attention`` keywords) and
            backend (a ``backends.Backend``, as ``backends.select`` gives it).
        communicate: False keeps this rank's own K / V in place of the others' (wrong results, the same block
            attentions): what `bench cp` times as computation alone. Default True.

    Returns:
        (out, lse): out ``[B, S, Hq, D]`` in q's dtype, lse float32 ``[B, Hq, S]`` (natural log).
    """
    seqlen = q.shape[1]
    q_pieces = shard_pieces(rank, world, seqlen, method)
    # The running (out, lse) of each query piece; a piece no key reaches keeps 0 and -inf (cannot happen with
    # a window of bounds >= 0: a query always sees itself).
    partial = [None] * len(q_pieces)
    block = (k, v)
    for step in range(world):
        src = (rank - step) % world  # whose K / V this rank holds at this step
        pending = _ring_exchange(block, group, rank, world) if communicate and step + 1 < world else None
        k_pieces = shard_pieces(src, world, seqlen, method)
        for qi, ki, pair in _block_pairs(q_pieces, k_pieces, window):
            qr, kr = _rows(q_pieces, qi), _rows(k_pieces, ki)
            part = _attend(q[:, qr], block[0][:, kr], block[1][:, kr], q_pieces[qi][0], k_pieces[ki][0], pair,
                           options)
            partial[qi] = part if partial[qi] is None else merge_partials(*partial[qi], *part)
        if pending is not None:
            received, requests = pending
            for r in requests:
                r.wait()
            block = tuple(received)
    out = torch.cat([o.to(q.dtype) for o, _ in partial], dim=1)
    return out, torch.cat([lse for _, lse in partial], dim=2)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, rank, world, window, method, options):
        out, lse = ring_forward(q, k, v, group, rank, world, window, method, options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring = (group, rank, world, window, method, options)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        group, rank, world, window, method, options = ctx.ring
        seqlen = q.shape[1]
        q_pieces = shard_pieces(rank, world, seqlen, method)
        dq = torch.zeros_like(q, dtype=torch.float32)
        # The block this rank holds, with the dK / dV accumulated for it by the ranks it has visited.
        block = (k, v, torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32))
        for step in range(world):
            src = (rank - step) % world
            kb, vb, dk_acc, dv_acc = block
            k_pieces = shard_pieces(src, world, seqlen, method)
            for qi, ki, pair in _block_pairs(q_pieces, k_pieces, window):
                qr, kr = _rows(q_pieces, qi), _rows(k_pieces, ki)
                dq_b, dk_b, dv_b = _block_backward(dout[:, qr], q[:, qr], kb[:, kr], vb[:, kr], out[:, qr],
                                                   lse[:, :, qr], q_pieces[qi][0], k_pieces[ki][0], pair, options)
                dq[:, qr] += dq_b
                dk_acc[:, kr] += dk_b  # fresh buffers: zeros at step 0, then received ones
                dv_acc[:, kr] += dv_b
            # Pass the block and its gradients on; after `world` hops every block is back home.
            received, requests = _ring_exchange((kb, vb, dk_acc, dv_acc) if step + 1 < world else (dk_acc, dv_acc),
                                                group, rank, world)
            for r in requests:
                r.wait()
            block = tuple(received)
        dk, dv = block[-2:]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


class _GatherSequence(torch.autograd.Function):
    """All-gather of shards along the sequence (dim 1); backward: the gradient summed over the ranks,
    this rank's slice kept."""

    @staticmethod
    def forward(ctx, t, group, rank, world):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous(), group=group)
        ctx.shard = (group, rank, t.shape[1])
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        group, rank, seqlen = ctx.shard
        grad = grad.contiguous()
        dist.all_reduce(grad, group=group)
        return grad[:, rank * seqlen:(rank + 1) * seqlen], None, None, None


def _allgather_attention(q, k, v, group, rank: int, world: int, window, options):
    seqlen = q.shape[1]
    k_all, v_all = (_GatherSequence.apply(t, group, rank, world) for t in (k, v))
    # Only the keys some local query can see are attended (under a causal mask: none past this shard).
    total, q_offset = world * seqlen, rank * seqlen
    lo, hi = masks.key_range(q_offset, q_offset + seqlen, total, total, window, offset=0)
    return _attend(q, k_all[:, lo:hi], v_all[:, lo:hi], q_offset, lo,
                   _block_window(q_offset, seqlen, lo, hi - lo, window), options)


def _packed_call(q, k, v, cu_seqlens, group, rank: int, world: int, method: str, window, return_lse: bool,
                 options, backend: str):
    """context_parallel_attention of a packed batch (cu_seqlens): checks, then the all-gather."""
    if method != "allgather":
        raise ValueError(f"packed batches (cu_seqlens) run with method='allgather', got method={method!r}: the ring "
                         "methods pass equal blocks of one sequence, not sequences that span ranks")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"with cu_seqlens, {name} must be this rank's rows of the packed tensor "
                             f"(rows, heads, head_dim), got {tuple(t.shape) if isinstance(t, torch.Tensor) else t}")
    if k.shape != v.shape or k.shape[0] != q.shape[0]:
        raise ValueError(f"q, k, v shards must share their rows and k, v their shape, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    _check_same_shards(q[None], k[None], group, world)
    total = world * q.shape[0]
    check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor, got {cu_seqlens.dtype} of shape "
                         f"{tuple(cu_seqlens.shape)}")
    check_device("cu_seqlens", cu_seqlens, q.device)
    starts = cu_seqlens.tolist()  # one host read: which sequences this rank's rows belong to
    if not starts or starts[0] != 0 or starts[-1] != total or any(b < a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"cu_seqlens must be int32 prefix sums from 0 to the packed length world_size * rows = "
                         f"{total}, never decreasing, got {starts}")
    if window[1] not in (0, UNBOUNDED) or (window[1] == UNBOUNDED and window[0] != UNBOUNDED):
        raise ValueError(f"packed batches take causal attention (with any left window) or full attention, got "
                         f"window (left, right) = {window}: a sequence split across ranks aligns its keys to its "
                         "last local query")
    options = dict(options, backend=backends.select(backend, q.device))
    out, lse = _packed_allgather_attention(q, k, v, cu_seqlens, starts, group, rank, world, window, options)
    return (out, lse) if return_lse else out


def _packed_allgather_attention(q, k, v, cu_seqlens, starts, group, rank: int, world: int, window, options):
    """This rank's rows q0 .. q1 - 1 of a packed batch against the all-gathered keys. The sequences those rows
    belong to are consecutive, and their keys one contiguous range: from the first one's start to the last
    one's end, or under a causal mask to q1 (the last sequence's keys past this rank's rows are in the future).
    Each local piece of a sequence then ends at its last local query, so the varlen kernels' bottom-right
    alignment is the global one; positions are the rows' positions within their sequences."""
    rows = q.shape[0]
    q0, q1 = rank * rows, (rank + 1) * rows
    first = next(b for b in range(len(starts) - 1) if starts[b + 1] > q0)
    last = next(b for b in range(len(starts) - 2, -1, -1) if starts[b] < q1)
    k0, k1 = starts[first], q1 if window[1] == 0 else starts[last + 1]
    bounds = starts[first:last + 2]
    cu_q = torch.tensor([min(max(s, q0), q1) - q0 for s in bounds], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([min(s, k1) - k0 for s in bounds], dtype=torch.int32, device=q.device)
    k_all, v_all = (_GatherSequence.apply(t[None], group, rank, world)[0] for t in (k, v))
    k_loc, v_loc = k_all[k0:k1], v_all[k0:k1]
    opts = {name: value for name, value in options.items() if name != "backend"}
    longest_q = max(min(b, q1) - max(a, q0) for a, b in zip(bounds, bounds[1:]))
    longest_k = max(min(b, k1) - a for a, b in zip(bounds, bounds[1:]))
    params = varlen_params(q, k_loc, v_loc, cu_q, cu_k, longest_q, longest_k, window_size=window, **opts)
    if params.encoding is not None:  # positions within each sequence, global: not restarted at this rank's rows
        positions = token_positions(cu_seqlens, world * rows)
        params = dataclasses.replace(params, encoding=dataclasses.replace(
            params.encoding, q_positions=positions[:, q0:q1], k_positions=positions[:, k0:k1]))
    out, lse = ops.attention(q[None], k_loc[None], v_loc[None], params, options["backend"])
    return out[0], lse
