"""What the harness writes: a table on stdout, JSON (environment + rows), CSV, PNG plots."""
from __future__ import annotations

import csv
import datetime
import json
import platform
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from .runner import Row


def environment(device: torch.device) -> dict:
    """What a result needs to be reproduced: machine, versions, date, the command; "flashattn_py": the
    one-line `python -m flashattn_py.info` summary (version label, extension archs, GPU coverage)."""
    import triton

    from flashattn_py import info

    return {
        "device": (torch.cuda.get_device_name() if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()})"),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m flashattn_py.tools.bench " + " ".join(sys.argv[1:]),
        "flashattn_py": info.collect().summary(),
    }


def fmt_cell(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def format_table(rows: list[Row]) -> str:
    header = (f"{'case':40} {'mode':>7} {'implementation':>22} {'ms':>9} {'TFLOP/s':>8} {'peak MiB':>9} "
              f"{'vs best peer':>12}  status")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.case.label():40} {r.mode:>7} {r.implementation:>22} {fmt_cell(r.ms, '9.3f')} "
                     f"{fmt_cell(r.tflops, '8.1f')} {fmt_cell(r.peak_mib, '9.1f')} "
                     f"{fmt_cell(r.ratio_to_best_peer, '12.2f')}  "
                     f"{'' if r.status == 'ok' else r.status}")
    return "\n".join(lines)


def write_json_csv(out_dir: Path, name: str, env: dict, rows) -> list[Path]:
    """<name>.json (environment + rows) and <name>.csv; rows have as_dict() (runner.Row, decode.DecodeRow)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dicts = [r.as_dict() for r in rows]
    json_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    json_path.write_text(json.dumps({"environment": env, "rows": dicts}, indent=1))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dicts[0]) if dicts else ["status"])
        writer.writeheader()
        writer.writerows(dicts)
    return [json_path, csv_path]


def write_plots(out_dir: Path, name: str, env: dict, rows: list[Row]) -> list[Path]:
    """One PNG per configuration (all but seqlen and batch): TFLOP/s vs seqlen, a line per
    implementation, a panel per mode. Nothing when no row was timed (CPU) or matplotlib is missing."""
    timed = [r for r in rows if r.tflops is not None and r.case.seqlen > 0]
    if not timed or env["device"].startswith("cpu"):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: pip install matplotlib", file=sys.stderr)
        return []
    groups = defaultdict(list)
    for r in timed:
        groups[replace(r.case, seqlen=0, batch=0)].append(r)
    paths = []
    for config, group in groups.items():
        modes = sorted({r.mode for r in group}, key=("fwd", "bwd", "fwd+bwd").index)
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            lines = defaultdict(list)
            for r in group:
                if r.mode == mode:
                    lines[r.implementation].append((r.case.seqlen, r.tflops))
            for impl, points in lines.items():
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, marker="o", linewidth=2.5 if impl in ("triton", "cuda") else 1.2, label=impl)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
            ax.set_title(mode)
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize=7)
        label = config.label().replace("b0-", "").replace("s0-", "")
        fig.suptitle(f"{label} on {env['device']}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{name}-{label}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
