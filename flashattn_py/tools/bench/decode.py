"""``python -m flashattn_py.tools.bench decode``: one decoding step against a KV cache.

For each (batch, cache length, page size): our flash_attn_with_kvcache (Triton, split-K chosen
automatically, without split-K, and without packing the GQA heads of a KV head into one tile
(pack_gqa=False; it packs by default); with a contiguous cache flashattn_py.attention on SDPA's dense
view too, with its automatic split-K and without, as a transformers model's decoding step calls it;
the CUDA kernels, with and without split-K, when the extension is built)
against PyTorch SDPA attending to the same cache (a dense view of
it; SDPA has no paged layout). One new query token per sequence, GQA heads. Reports tokens/s
(sequences decoded per second), the bandwidth of reading the cache (K and V bytes / time) and that
as a fraction of the device's copy bandwidth measured in the same run (the memory-bound limit). On a
GPU every implementation is also timed replayed from a CUDA graph ("+graph", as serving loops run a
step): the eager times include each call's Python and launch overhead, the graph times the kernels.
Each implementation is checked against the float64 reference on the same cache (on three of the
sequences: checked_sequences) before it is timed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import flashattn_py as fa
from flashattn_py.backends import cuda_backend
from flashattn_py.decoding import dense_cache
from flashattn_py.tools import accuracy
from flashattn_py.tools.bench import output, runner
from flashattn_py.tools.bench.cases import DTYPES


@dataclass
class DecodeRow:
    batch: int
    cache_len: int
    page_size: int  # 0: contiguous cache
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    implementation: str
    status: str
    ms: float | None = None
    tokens_per_s: float | None = None
    kv_gb_per_s: float | None = None
    fraction_of_copy_bandwidth: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def make_cache(batch, cache_len, page_size, kv_heads, head_dim, dtype, device, gen):
    """(k_cache, v_cache, block_table or None, dense k, dense v): a full cache of random keys/values."""
    rand = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    if not page_size:
        k, v = rand(batch, cache_len, kv_heads, head_dim), rand(batch, cache_len, kv_heads, head_dim)
        return k, v, None, k, v
    pages = -(-cache_len // page_size)
    k_cache, v_cache = rand(batch * pages, page_size, kv_heads, head_dim), rand(batch * pages, page_size, kv_heads,
                                                                                 head_dim)
    table = torch.randperm(batch * pages, generator=gen).reshape(batch, pages).to(device, torch.int32)
    return (k_cache, v_cache, table, dense_cache(k_cache, table, page_size, None),
            dense_cache(v_cache, table, page_size, None))


def implementations(q, k_cache, v_cache, table, k_dense, v_dense, seqlens, device):
    def ours(splits, backend="triton" if device.type == "cuda" else "torch", pack_gqa=None):
        return lambda: fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, block_table=table,
                                                  num_splits=splits, pack_gqa=pack_gqa, backend=backend)

    used = int(seqlens.max())
    gqa = q.shape[2] != k_dense.shape[2]

    def sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k_dense[:, :used].transpose(1, 2), v_dense[:, :used].transpose(1, 2), enable_gqa=gqa)
        return out.transpose(1, 2)

    def ours_dense(splits):  # SDPA's arguments through flashattn_py.attention: a transformers decoding step
        return lambda: fa.attention(q, k_dense[:, :used], v_dense[:, :used], num_splits=splits)

    if device.type != "cuda":
        return {"ours": ours(0), "sdpa": sdpa}
    impls = {"ours": ours(0), "ours_no_split": ours(1), "ours_no_pack_gqa": ours(0, pack_gqa=False)}
    if table is None:
        impls.update(ours_dense=ours_dense(0), ours_dense_no_split=ours_dense(1))
    if cuda_backend.is_built():
        impls.update(ours_cuda=ours(0, "cuda"), ours_cuda_no_split=ours(1, "cuda"))
    return {**impls, "sdpa": sdpa}


def copy_bandwidth_gb_s(device, timer) -> float | None:
    """Device memory bandwidth by a large copy (bytes read + written / time): the memory-bound limit."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timer(lambda: dst.copy_(src)) / 1e6


def run(args, on_row=None) -> list[DecodeRow]:
    """The rows of every (batch, cache length, page size, implementation); on_row(row) is called as
    each one is finished (main prints it: a run cut short by a time limit keeps what it measured)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = runner.gpu_timer if device.type == "cuda" else runner.cpu_timer
    dtype = DTYPES[args.dtype]
    limit = copy_bandwidth_gb_s(device, timer)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batch:
        for cache_len in args.cache_lens:
            for page in args.page_sizes:
                k_cache, v_cache, table, k_dense, v_dense = make_cache(batch, cache_len, page, args.kv_heads,
                                                                       args.head_dim, dtype, device, gen)
                q = torch.randn(batch, 1, args.heads, args.head_dim, generator=gen).to(device, dtype)
                seqlens = torch.full((batch,), cache_len, dtype=torch.int32, device=device)
                checked = checked_sequences(batch)
                # The float64 reference of the checked sequences only: of the whole batch it would not
                # fit (batch 64 x 32k keys x 32 heads: K and V repeated for GQA in float64, > 100 GB).
                keys, values = k_dense[checked, :cache_len], v_dense[checked, :cache_len]  # pages may hold more rows
                exact = fa.reference.attention(q[checked], keys, values)
                naive = fa.reference.attention(q[checked], keys, values, compute_dtype=dtype)
                bound = accuracy.error_bound(exact, naive, dtype)
                kv_bytes = 2 * batch * cache_len * args.kv_heads * args.head_dim * q.element_size()
                impls = implementations(q, k_cache, v_cache, table, k_dense, v_dense, seqlens, device)
                if args.cuda_graphs:  # the serving setup: the step captured once, replayed (no Python per step)
                    impls.update({f"{name}+graph": graphed(fn) for name, fn in impls.items()})
                for name, fn in impls.items():
                    row = DecodeRow(batch, cache_len, page, args.heads, args.kv_heads, args.head_dim, args.dtype, name,
                                    "ok")
                    rows.append(row)
                    try:
                        err = accuracy.max_error(fn()[checked], exact)
                        if err > bound:
                            row.status = f"wrong: error {err:.2e} > bound {bound:.2e}"
                            continue
                        row.ms = timer(fn)
                    except (RuntimeError, NotImplementedError, ValueError) as e:  # e.g. out of memory: next one
                        row.status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                        continue
                    row.tokens_per_s = batch / row.ms * 1e3
                    row.kv_gb_per_s = kv_bytes / row.ms / 1e6
                    row.fraction_of_copy_bandwidth = row.kv_gb_per_s / limit if limit else None
                if on_row is not None:
                    for row in rows[-len(impls):]:
                        on_row(row)
    return rows


def graphed(fn):
    """fn captured in a CUDA graph on first use (after one eager warm-up call that compiles what it
    launches); returns a function that replays it and returns the captured output."""
    state = {}

    def replay():
        if "graph" not in state:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            state["graph"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(state["graph"]):
                state["out"] = fn()
        state["graph"].replay()
        return state["out"]
    return replay


def checked_sequences(batch: int) -> list[int]:
    """Which sequences each implementation is checked on before it is timed: the first, the middle and
    the last (a wrong page lookup or split shows in any of them; all of them cost a float64 reference
    of the whole cache)."""
    return sorted({0, batch // 2, batch - 1})


TABLE_HEADER = (f"{'batch':>5} {'cache':>7} {'page':>5} {'implementation':>24} {'ms':>8} {'tokens/s':>10} "
                f"{'KV GB/s':>8} {'of copy BW':>10}  status")


def format_row(r: DecodeRow) -> str:
    f = output.fmt_cell
    return (f"{r.batch:5d} {r.cache_len:7d} {r.page_size:5d} {r.implementation:>24} {f(r.ms, '8.3f')} "
            f"{f(r.tokens_per_s, '10.0f')} {f(r.kv_gb_per_s, '8.1f')} {f(r.fraction_of_copy_bandwidth, '10.2f')}"
            f"  {'' if r.status == 'ok' else r.status}")


def main(argv=None) -> int:
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m flashattn_py.tools.bench decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64] if on_gpu else [2])
    p.add_argument("--cache-lens", type=int, nargs="+", default=[4096, 32768] if on_gpu else [96])
    p.add_argument("--page-sizes", type=int, nargs="+", default=[0, 16, 256] if on_gpu else [0, 16],
                   help="0: contiguous cache")
    p.add_argument("--heads", type=int, default=32 if on_gpu else 4)
    p.add_argument("--kv-heads", type=int, default=8 if on_gpu else 2)
    p.add_argument("--head-dim", type=int, default=128 if on_gpu else 32)
    p.add_argument("--dtype", choices=DTYPES, default="bf16" if on_gpu else "fp16")
    p.add_argument("--out", type=Path, help="write decode.json and decode.csv into this folder")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=on_gpu,
                   help="also time every implementation replayed from a CUDA graph (default: on a GPU)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if on_gpu else "cpu")
    env = output.environment(device)
    if not on_gpu:
        print("CPU run: no GPU here. Correctness of the cache path at small sizes; CPU timings are not GPU "
              "performance.\n")
    print(f"{env['device']}  torch {env['torch']}  {args.dtype}  heads {args.heads}/{args.kv_heads}  "
          f"head_dim {args.head_dim}")
    print(env["flashattn_py"])
    print(TABLE_HEADER)
    rows = run(args, on_row=lambda row: print(format_row(row), flush=True))
    if args.out:
        output.write_json_csv(args.out, "decode", env, rows)
    return 1 if any(r.status.startswith("wrong") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
