"""``python -m flashattn_py.tools.bench.summary DIR``: summary.md for a results folder written by
bench/gpu_validate.sh: environment, test outcome, ours vs the best peer per case, and the
package's performance targets (`targets`: met / missed, with the measured numbers)."""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

OURS = ("triton", "cuda")


def _best(rows, ours: bool, names=None):
    timed = [r for r in rows if r["tflops"] and r["ours"] == ours and (names is None or r["implementation"] in names)]
    return max(timed, key=lambda r: r["tflops"], default=None)


def _key(r):
    return (r["head_dim"], r["dtype"], r["causal"], r["window"], r["encoding"], r["kv_heads"] != r["heads"], r["mode"],
            r["seqlen"])


def _order(key) -> tuple:
    """Sort key for mixed tuples: numbers numerically (seqlen 4096 before 16384), the rest as text."""
    return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in key)


def comparison_table(rows) -> list[str]:
    groups = defaultdict(list)
    for r in rows:
        groups[_key(r)].append(r)
    lines = ["| head_dim | causal | encoding | mode | seqlen | triton TFLOP/s | cuda TFLOP/s | best peer "
             "| peer TFLOP/s | ours / best peer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=_order):
        g = groups[key]
        by_name = {r["implementation"]: r for r in g}
        peer, ours = _best(g, False), _best(g, True)
        fmt = lambda r: f"{r['tflops']:.1f}" if r and r["tflops"] else (r["status"][:40] if r else "-")  # noqa: E731
        ratio = f"{ours['tflops'] / peer['tflops']:.2f}" if ours and peer else "-"
        lines.append(f"| {key[0]} | {key[2]} | {key[4]} | {key[6]} | {key[7]} | {fmt(by_name.get('triton'))} | "
                     f"{fmt(by_name.get('cuda'))} | {peer['implementation'] if peer else '-'} | {fmt(peer)} | "
                     f"{ratio} |")
    return lines


def targets(rows) -> list[str]:
    """The performance targets, on H100, bf16, head_dim 128, seqlen >= 4k: forward >= 550 TFLOP/s and >= 1.0x
    the best SDPA backend; fwd+bwd >= 1.0x SDPA flash; fused RoPE >= 1.2x the best unfused RoPE + attention and
    costing <= 5% over no RoPE."""
    out = []
    sel = [r for r in rows if r["head_dim"] == 128 and r["dtype"] == "bf16" and r["seqlen"] >= 4096 and r["window"] < 0
           and r["kv_heads"] == r["heads"]]
    groups = defaultdict(list)
    for r in sel:
        groups[(r["causal"], r["encoding"], r["mode"], r["seqlen"])].append(r)
    for (causal, enc, mode, seqlen), g in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        ours = _best(g, True)
        if not ours:
            continue
        tag = f"causal={causal} {enc} {mode} s{seqlen}: ours {ours['implementation']} {ours['tflops']:.0f} TFLOP/s"
        if enc == "none" and mode == "fwd":
            sdpa = _best(g, False, names={"sdpa_flash", "sdpa_efficient", "sdpa_cudnn"})
            ratio = ours["tflops"] / sdpa["tflops"] if sdpa else float("nan")
            met = ours["tflops"] >= 550 and ratio >= 1.0
            out.append(f"- {'met' if met else 'MISSED'}: forward >= 550 TFLOP/s and >= 1.0x best SDPA -- {tag}, "
                       f"{ratio:.2f}x {sdpa['implementation'] if sdpa else '?'}")
        if enc == "none" and mode == "fwd+bwd":
            flash = _best(g, False, names={"sdpa_flash"})
            if flash:
                ratio = ours["tflops"] / flash["tflops"]
                out.append(f"- {'met' if ratio >= 1.0 else 'MISSED'}: fwd+bwd >= 1.0x SDPA flash -- {tag}, "
                           f"{ratio:.2f}x")
        if enc == "rope":
            unfused = _best(g, False)
            plain = _best(groups.get((causal, "none", mode, seqlen), []), True)
            if unfused:
                ratio = ours["tflops"] / unfused["tflops"]
                out.append(f"- {'met' if ratio >= 1.2 else 'MISSED'}: fused RoPE >= 1.2x the best unfused RoPE + "
                           f"attention -- {tag}, {ratio:.2f}x {unfused['implementation']}")
            if plain:
                cost = plain["tflops"] / ours["tflops"] - 1
                out.append(f"- {'met' if cost <= 0.05 else 'MISSED'}: fused RoPE costs <= 5% over no RoPE -- {tag}, "
                           f"costs {cost:+.1%}")
    return out


def summarize(folder: Path) -> str:
    lines = [f"# GPU validation: {folder.name}", ""]
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:
            continue
        env = data["environment"]
        lines += [f"## {path.stem}", "",
                  f"{env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
                  f"{env['date']}", "", f"Command: `{env['command']}`", ""]
        wrong = [r for r in data["rows"] if r["status"].startswith(("wrong", "failed"))]
        lines += [f"**{len(wrong)} implementation results wrong or failed**" if wrong
                  else "All timed results passed the correctness check against the float64 reference first.",
                  ""]
        lines += (["### Targets", ""]
                  + (targets(data["rows"]) or ["- no head_dim 128 bf16 seqlen >= 4k rows"]) + [""])
        lines += ["### Ours vs the best peer", ""] + comparison_table(data["rows"]) + [""]
    for name in ("tests.txt", "sanitizer.txt", "build.txt", "cuda-fwd-selftest.txt", "cuda-bwd-selftest.txt",
                 "cuda-fwd-sm90-selftest.txt", "cuda-fwd-sm90-memcheck.txt", "cuda-fwd-sm90-racecheck.txt",
                 "cuda-fwd-sm90-synccheck.txt", "hopper-probe.txt", "hopper-reduce-probe.txt"):
        path = folder / name
        if path.exists():
            tail = path.read_text().strip().splitlines()[-3:]
            lines += [f"## {name}", "", "```", *tail, "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0])
    (folder / "summary.md").write_text(summarize(folder))
    print(f"wrote {folder / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
