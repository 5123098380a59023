"""``python -m flashattn_py.tools.bench``: check every implementation against the float64 reference, then
time the correct ones; ``python -m flashattn_py.tools.bench report``: the static kernel report (no GPU);
``python -m flashattn_py.tools.bench decode``: decoding against a KV cache (tokens/s, KV bandwidth).

On a GPU: our Triton and CUDA kernels against PyTorch SDPA (flash, efficient, cuDNN, math),
FlexAttention, the naive reference and, with a positional encoding, the encoding as a separate kernel
or eager ops + SDPA/FlexAttention; modes fwd, bwd, fwd+bwd; TFLOP/s (4*B*H*Sq*Sk*D forward, halved for
causal, backward 2.5x), median ms (triton.testing.do_bench, CUDA events), peak memory and the ratio to
the best peer. On a CPU (no GPU, or ``--device cpu``): our PyTorch path (torch's fused CPU kernel where
it computes the call exactly, torch_fused.py) against SDPA on CPU (its flash kernel, and its math
backend while the scores fit), fp32, seqlen 512 to 4096, labelled as CPU timings; the Triton
interpreter is checked for correctness but never timed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

from flashattn_py.tools.bench import cases as case_lib  # noqa: E402
from flashattn_py.tools.bench import output, runner  # noqa: E402

# The standard sweep (bench/gpu_validate.sh): Llama-like hidden size 2048 (heads = 2048 / head_dim),
# 16k tokens per batch at every seqlen, as FlashAttention's papers benchmark.
# FlexAttention compiles once per shape (seconds each): the standard sweep leaves it out and
# gpu_validate.sh times it on one size separately.
STANDARD = dict(seqlens=[512, 1024, 2048, 4096, 8192, 16384], head_dims=[64, 128], dtypes=["bf16"],
                causal=[False, True], encodings=["none", "rope"], hidden=2048, tokens=16384, modes=["fwd", "fwd+bwd"],
                skip=["flex"])


# Sweep defaults per device: a GPU's, and a CPU's (the sizes of the issue that measured the CPU path
# against SDPA on CPU: fp32, batch 2, 8 heads, head_dim 64, seqlen 512 to 4096).
DEFAULTS = {"cuda": dict(dtype=["bf16"], head_dim=[128], seqlens=[1024, 2048, 4096, 8192], batch=4, heads=16),
            "cpu": dict(dtype=["fp32"], head_dim=[64], seqlens=[512, 1024, 2048, 4096], batch=2, heads=8)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flashattn_py.tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run (auto: the GPU if there is one); sets the sweep defaults below")
    p.add_argument("--preset", choices=["standard"], help="the standard sweep (overrides the sweep options)")
    p.add_argument("--dtype", nargs="+", choices=case_lib.DTYPES, help="default: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--head-dim", type=int, nargs="+", help="default: 128 on a GPU, 64 on a CPU")
    p.add_argument("--seqlens", type=int, nargs="+", help="default: 1024-8192 on a GPU, 512-4096 on a CPU")
    p.add_argument("--batch", type=int, help="default: 4 on a GPU, 2 on a CPU")
    p.add_argument("--heads", type=int, help="default: 16 on a GPU, 8 on a CPU")
    p.add_argument("--hidden", type=int, help="heads = hidden / head_dim (overrides --heads)")
    p.add_argument("--tokens", type=int, help="fixed token count: batch = tokens / seqlen (overrides --batch)")
    p.add_argument("--gqa", type=int, nargs="+", default=[1], help="query heads per KV head")
    p.add_argument("--causal", choices=["no", "yes", "both"], default="both")
    p.add_argument("--window", type=int, nargs="+", default=[-1], help="sliding window (left = right); -1: none")
    p.add_argument("--encoding", nargs="+", choices=case_lib.ENCODINGS, default=["none"])
    p.add_argument("--rotary", action="store_true", help="shorthand for --encoding rope")
    p.add_argument("--modes", nargs="+", choices=case_lib.MODES, default=["fwd", "fwd+bwd"])
    p.add_argument("--peers", nargs="+", help="only these implementations (names as in the table)")
    p.add_argument("--skip", nargs="+", default=[], help="leave out implementations whose name contains one of these")
    p.add_argument("--out", type=Path, help="write <name>.json, <name>.csv and PNG plots into this folder")
    p.add_argument("--name", default="bench", help="file name stem for --out")
    p.add_argument("--profile", type=Path, metavar="TRACE.json", help="also write a torch.profiler Chrome trace")
    p.add_argument("--nvtx", action="store_true", help="wrap every timed call in an NVTX range (nsys/ncu)")
    p.add_argument("--kernel", metavar="NAME", help="run implementation NAME on the first case in a loop (ncu)")
    p.add_argument("--iters", type=int, default=20, help="iterations of the --kernel loop")
    return p


def cases_from(args) -> list[case_lib.Case]:
    options = dict(seqlens=args.seqlens, head_dims=args.head_dim, dtypes=args.dtype,
                   causal={"no": [False], "yes": [True], "both": [False, True]}[args.causal],
                   encodings=["rope"] if args.rotary else args.encoding, gqa=args.gqa, windows=args.window,
                   tokens=args.tokens, hidden=args.hidden)
    if args.preset == "standard":
        options.update({k: v for k, v in STANDARD.items() if k not in ("modes", "skip")})
        args.modes, args.skip = STANDARD["modes"], args.skip + STANDARD["skip"]
    hidden = options.pop("hidden")
    cases = []
    for head_dim in options.pop("head_dims"):
        heads = hidden // head_dim if hidden else args.heads
        cases += case_lib.sweep(head_dims=[head_dim], batch_heads=[(args.batch, heads)], **options)
    return cases


def device_of(args) -> torch.device:
    """The device the run uses; fills the sweep options left unset with that device's defaults."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU (torch.cuda.is_available() is False)")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    for name, value in DEFAULTS[device.type].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return device


def run(args) -> int:
    device = device_of(args)
    if args.preset and device.type == "cpu":
        print("--preset standard sizes GPU runs (up to 16k tokens per sequence); on a CPU run the default small "
              "sizes instead", file=sys.stderr)
        return 2
    cases = cases_from(args)
    if args.kernel:
        from flashattn_py.tools.bench.profiling import kernel_loop

        print(kernel_loop(cases[0], args.kernel, args.modes[0], device, args.iters))
        return 0
    env = output.environment(device)
    timer = runner.gpu_timer if device.type == "cuda" else runner.cpu_timer
    if device.type == "cpu":
        print("CPU run: timings below are CPU timings of CPU implementations (ours: the PyTorch path), not GPU "
              "performance; ratio = ours / the best SDPA on CPU in this run. The Triton interpreter is checked "
              "for correctness only and never timed.\n")
    print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  cuda {env['cuda']}")
    print(env["flashattn_py"])
    rows = []
    from tqdm import tqdm

    for case in tqdm(cases, desc="cases", file=sys.stderr, disable=None):
        rows += runner.measure_case(case, args.modes, device, timer, only=args.peers, skip=args.skip, nvtx=args.nvtx)
    print(output.format_table(rows))
    _print_tuning_choices()
    if args.out:
        written = (output.write_json_csv(args.out, args.name, env, rows)
                   + output.write_plots(args.out, args.name, env, rows))
        print("wrote " + ", ".join(str(p) for p in written))
    if args.profile:
        from flashattn_py.tools.bench.profiling import chrome_trace

        print(f"wrote {chrome_trace(cases, args.modes, device, args.profile, only=args.peers)}")
    wrong = [r for r in rows if r.status.startswith("wrong")]
    return 1 if wrong else 0


def _print_tuning_choices() -> None:
    from flashattn_py.triton_kernels import autotune

    chosen = autotune.choices()
    if chosen:
        print("\nTriton tile configs used (kernel, key -> config):")
        for line in chosen:
            print("  " + line)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from flashattn_py.tools.bench.report import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["cp"]:
        from flashattn_py.tools.bench.context_parallel import main as cp_main

        return cp_main(argv[1:])
    if argv[:1] == ["decode"]:
        from flashattn_py.tools.bench.decode import main as decode_main

        return decode_main(argv[1:])
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
