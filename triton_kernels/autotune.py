"""Tile-config choice per GPU arch: the static default, or (FLASHATTN_AUTOTUNE=1) the fastest of a few
candidates, measured once per (arch, kernel, key) and cached on disk.

Why not ``triton.autotune``: our launchers pick tiles per head-dim block and reuse the forward's
config knowledge in the backward's scheduling (e.g. how often the encoding would be recomputed), so a
choice must be visible to the launcher before the launch; and the interpreter must keep its small test
tiles. Every kernel here overwrites its outputs (no accumulation into them), so a candidate can be
launched repeatedly on the real arguments to time it.

Cache: ``$FLASHATTN_CACHE_DIR`` (default ``~/.cache/flashattn_py``) / ``autotune-sm<arch>.json``.
``choices()`` lists what was used in this process (the benchmark harness prints it).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import configs
from .common import INTERPRETED
from .configs import TileConfig

_USED: dict[str, str] = {}  # "kernel key" -> "config (how chosen)"
_LOCK = threading.Lock()
# Test hook: kernel name -> config used regardless of tuning (tests/test_autotune.py checks every
# candidate's results this way).
FORCED: dict[str, TileConfig] = {}


def enabled() -> bool:
    return os.environ.get("FLASHATTN_AUTOTUNE") == "1" and not INTERPRETED


def arch_of(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def cache_path(arch: int) -> Path:
    root = Path(os.environ.get("FLASHATTN_CACHE_DIR", Path.home() / ".cache" / "flashattn_py"))
    return root / f"autotune-sm{arch}.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe(cfg: TileConfig) -> str:
    return f"BLOCK_M={cfg.block_m} BLOCK_N={cfg.block_n} warps={cfg.num_warps} stages={cfg.num_stages}"


def key_of(params, dtype: torch.dtype, block_d: int, pe_args: dict) -> str:
    """What the fastest tile depends on: head-dim block, dtype, masking, encoding, dropout, and the
    longer sequence rounded to a power of two (short sequences favour smaller tiles)."""
    longest = max(params.seqlen_q, params.seqlen_k, 1)
    bucket = 1 << min(max(longest - 1, 1).bit_length(), 15)
    pe = f"pe{pe_args.get('Q_PE_KIND', 0)}{pe_args.get('K_PE_KIND', 0)}"
    mask = "full" if not params.has_window else "causal" if params.window == (-1, 0) else "window"
    decode = " decode" if configs.is_decode(params.seqlen_q) else ""  # its own tiles (configs.py)
    # Score modifications and the cache layouts change the kernel: a bias call takes only its own
    # spill-free tile, so it must never reuse a tile tuned without one.
    mods = params.mods
    extras = "".join(f" {name}" for name, on in (
        ("softcap", mods.softcap > 0), ("alibi", mods.alibi_slopes is not None), ("bias", mods.bias is not None),
        ("sinks", mods.sinks is not None),
        ("paged", params.paged is not None), ("split", params.num_splits > 1)) if on)
    return (f"d{block_d} {str(dtype).replace('torch.', '')} {mask} {pe} "
            f"dropout{int(params.dropout_p > 0)} s<={bucket}{decode}{extras}")


def pick(kernel: str, key: str, default: TileConfig, candidates: Callable[[int], Sequence[TileConfig]],
         launch: Callable[[TileConfig], None], device: torch.device) -> TileConfig:
    """The config to launch `kernel` with for `key` (what the best tile depends on, see key_of);
    candidates(arch) lists the configs to try, the default first."""
    label = f"{kernel} {key}"
    if kernel in FORCED:
        return FORCED[kernel]
    if device.type != "cuda":
        return default
    if not enabled():
        _USED.setdefault(label, f"{_describe(default)} (default)")
        return default
    arch = arch_of(device)
    candidates = candidates(arch)
    path = cache_path(arch)
    with _LOCK:
        cached = _load(path).get(label)
    if cached is not None:
        cfg = TileConfig(**cached)
        _USED[label] = f"{_describe(cfg)} (cached, sm{arch})"
        return cfg
    import triton.testing

    timings = {}
    for cfg in candidates:
        try:
            timings[cfg] = triton.testing.do_bench(lambda cfg=cfg: launch(cfg), warmup=5, rep=20, return_mode="median")
        except Exception:  # e.g. out of shared memory on this arch: not a candidate here
            continue
    best = min(timings, key=timings.get) if timings else default
    with _LOCK:
        data = _load(path)
        data[label] = asdict(best)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True))
    _USED[label] = f"{_describe(best)} (tuned on sm{arch}: {timings.get(best, float('nan')):.3f} ms of " \
                   f"{len(timings)} candidates)"
    return best


def choices() -> list[str]:
    return [f"{label} -> {how}" for label, how in sorted(_USED.items())]
