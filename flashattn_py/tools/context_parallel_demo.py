"""Context-parallel attention on N processes, checked against one process's attention on the whole
sequence. CPU (gloo) or one GPU per rank (NCCL):

    torchrun --nproc-per-node 2 -m flashattn_py.tools.context_parallel_demo [--method ring|zigzag|allgather]
        [--window LEFT]

Every rank builds the same random sequence, keeps its shard (shard_sequence: for ring / allgather
tokens [r * S, (r + 1) * S) of rank r; for zigzag two chunks),
runs flashattn_py.distributed.context_parallel_attention with causal RoPE attention (with --window, a
sliding window of LEFT keys back) and backpropagates;
rank 0 prints the largest difference from flashattn_py.attention on the whole sequence.
"""
import argparse
import os

import torch
import torch.distributed as dist

import flashattn_py as fa
from flashattn_py.distributed import METHODS, context_parallel_attention, shard_sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="ring")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per rank")
    parser.add_argument("--window", type=int, default=-1, help="sliding window: keys back from each query")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    gen = torch.Generator().manual_seed(0)  # the same whole sequence on every rank
    total = args.seqlen * world
    q, k, v = (torch.randn(2, total, heads, 64, generator=gen).to(device, dtype) for heads in (8, 2, 2))
    options = dict(causal=True, window_size=(args.window, -1), rotary=fa.Rotary())
    shards = [shard_sequence(t, rank, world, args.method).requires_grad_() for t in (q, k, v)]
    out = context_parallel_attention(*shards, method=args.method, **options)
    out.sum().backward()
    whole = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = fa.attention(*whole, **options)
    expected.sum().backward()
    mine = lambda t: shard_sequence(t, rank, world, args.method)  # noqa: E731
    diffs = torch.stack([(a.float() - mine(b).float()).abs().max() for a, b in
                         ((out, expected), (shards[0].grad, whole[0].grad), (shards[1].grad, whole[1].grad),
                          (shards[2].grad, whole[2].grad))]).to(device)
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    if rank == 0:
        window = f", window {args.window}" if args.window >= 0 else ""
        print(f"{args.method} on {world} ranks ({device.type}, {dtype}), {total} tokens{window}: max |difference| "
              f"from one process: out {diffs[0]:.2e}, dq {diffs[1]:.2e}, dk {diffs[2]:.2e}, dv {diffs[3]:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
