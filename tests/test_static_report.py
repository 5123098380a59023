"""Static checks of the Triton kernels as they would be compiled for A100 (sm_80) and H100 (sm_90a).

No GPU needed: ``python -m flashattn_py.tools.static_report`` compiles each kernel with the launcher's
arguments, constexprs and tile config (it records what the launchers pass), and reports what ptxas
says. Per kernel instance (arch x dtype x head_dim, causal) this proves that the matmuls run on
tensor cores (mma.sync on sm_80, wgmma on sm_90a), that nothing spills to local memory, and that
registers and shared memory fit the hardware.

The report runs once, in a subprocess: the kernels must be imported without TRITON_INTERPRET
(conftest sets it for this process, which turns ``triton.jit`` functions into interpreter ones and
makes configs.py return the interpreter tile sizes).

By default the report covers the kernels without encoding, with a softcap, with an attention bias,
with all three score modifications at once (softcap + ALiBi + bias), the same with the bias a boolean
key-padding mask (batch, 1, 1, seqlen_k) (one row for every query: loaded as a vector),
attention sinks ("sinks"), the gradient of a learned T5-style (1, heads, sq, sk) bias ("bias-grad"),
one decoding step (flash_attn_with_kvcache: decode tiles, paged cache, split-K and its merge kernel),
one packed call against a paged cache (flash_attn_varlen_func(block_table=), the same kernels),
one-query dense calls split-K as a GPU splits them, plain and with a padding mask + softcap + ALiBi
(a transformers model's decoding step through flashattn_py.attention: split_k.py),
and with RoPE the way "auto" runs it at training lengths ("rope-prepass": q and k encoded by encode_kernel,
which is checked too, and the attention kernels compiled without encoding code). The in-kernel encoding
variants compile more than 10x slower and are known to spill at head_dim >= 128 (docs/design.md), so they
are opt-in:
FLASHATTN_STATIC_PE="none rope sinusoidal" (names: static_report.PE_VARIANTS).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (64, 128, 256)
PE_VARIANTS = tuple(os.environ.get("FLASHATTN_STATIC_PE",
                                   "none rope-prepass softcap attn-bias score-mods key-padding sinks bias-grad "
                                   "decode paged-varlen dense-decode dense-decode-mask")
                    .replace(",", " ").split())
PREPROCESS = "attention_bwd_preprocess_kernel"  # a row sum: no matmul, no mask, no encoding
ENCODE = "encode_kernel"  # pre-pass encoding of q/k, and decoding of dq/dk in the backward
MERGE = "merge_splits_kernel"  # split-K partials -> out, lse (decoding); no matmul
# The variants that are one inference call (a decoding step; a packed call against a paged cache):
# forward and merge only.
DECODING = ("decode", "paged-varlen", "dense-decode", "dense-decode-mask")
# attention_bwd_fused_kernel: the dK/dV kernel compiled with FUSED_DQ, the default backward
# (static_report.FUSED_BWD); dK/dV and dQ: the deterministic=True backward.
FUSED = "attention_bwd_fused_kernel"
MATMUL_KERNELS = ("attention_fwd_kernel", FUSED, "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel")
# At head_dim 256 the dK/dV kernel holds k, v, dk, dv and a streamed q/dO tile (5 x BLOCK_N x 256):
# every tile with BLOCK_N >= 64 spills on sm_90, and with BLOCK_N = 32 Triton emits mma.sync instead
# of wgmma. No spills wins (triton_kernels/configs.py); this is the one instance allowed mma.sync.
# An attention-bias tile costs the dK/dV kernel so many registers that only BLOCK_N = 32 stays
# spill-free (configs.dkdv_config(bias=True)), so it too runs mma.sync on sm_90 with a bias.
# Decoding runs 16-row query tiles (configs.DECODE_MAX_SEQLEN_Q); wgmma needs 64 rows per warpgroup,
# so the decode forward is mma.sync on sm_90 (it is bound by reading the cache, not by the MMAs).
# The fused backward's key tiles are dK/dV's (16 queries at head_dim 256), so the same exceptions.
MMA_SYNC_ALLOWED_ON_SM90 = {
    (kernel, 256, pe) for pe in PE_VARIANTS for kernel in ("attention_bwd_dkdv_kernel", FUSED)} | {
    (kernel, d, pe) for d in HEAD_DIMS for kernel in ("attention_bwd_dkdv_kernel", FUSED)
    for pe in ("attn-bias", "score-mods", "key-padding", "bias-grad")} | {
    ("attention_fwd_kernel", d, pe) for d in HEAD_DIMS for pe in DECODING}

MAX_REGISTERS = 255  # per thread, both archs
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}  # opt-in max shared memory per block
TENSOR_CORE_INSTRUCTION = {80: "mma.sync", 90: "wgmma.mma_async"}

REPO = Path(__file__).resolve().parents[1]


def _key(kernel, arch, dtype, head_dim, pe):
    return kernel, arch, dtype, head_dim, None if kernel in (PREPROCESS, MERGE) else pe


def _run_report(out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # the GPU default, set explicitly (silences Triton's warning)
    cmd = [sys.executable, "-m", "flashattn_py.tools.static_report",
           "--arch", *map(str, ARCHS), "--dtype", *DTYPES, "--head-dim", *map(str, HEAD_DIMS),
           "--causal", "yes", "--pe", *PE_VARIANTS, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    print(proc.stdout)  # the table: shown with pytest -s, and on failure


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """{(kernel, arch, dtype, head_dim, pe): row of the static report's JSON}, from one subprocess.

    Under pytest-xdist the workers share one run: the first to get the lock compiles, the others
    read its JSON. Compiles hit Triton's cache when the kernels are unchanged, and so do the ptxas -v
    reports the counts come from (kernel_report saves them there): warm, this takes ~16 s instead of
    ~80 s, most of which was ptxas run again on every instance.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from filelock import FileLock  # a torch dependency

        shared = tmp_path_factory.getbasetemp().parent
        out = shared / f"static_report_{'_'.join(PE_VARIANTS)}.json"
        with FileLock(str(out) + ".lock"):
            if not out.exists():
                _run_report(out)
    else:
        out = tmp_path_factory.mktemp("static_report") / "report.json"
        _run_report(out)
    rows = json.loads(out.read_text())
    return {_key(r["kernel"], r["arch"], r["dtype"], r["head_dim"], r["pe"]): r for r in rows}


def _launched(kernel, pe) -> bool:
    """Whether one forward + backward with this encoding variant (or the decoding step) launches the
    kernel; kernels without a variant of their own are listed once."""
    if pe in DECODING:
        return kernel in ("attention_fwd_kernel", MERGE)
    if kernel == MERGE:
        return False
    if kernel == PREPROCESS:
        return pe == next(p for p in PE_VARIANTS if p not in DECODING)
    # encode_kernel: the pre-pass, and the backward's decoding of dq/dk, with an encoding only.
    return kernel != ENCODE or pe not in ("none", "softcap", "attn-bias", "score-mods", "key-padding", "sinks",
                                          "bias-grad")


def _instances(kernels):
    return [pytest.param(k, a, d, h, pe, id=f"sm_{a}-{d}-hd{h}-{k.removeprefix('attention_')}"
                         + ("" if k == PREPROCESS else f"-pe_{pe}"))
            for a in ARCHS for d in DTYPES for h in HEAD_DIMS
            for pe in PE_VARIANTS for k in kernels if _launched(k, pe)]


def _describe(row) -> str:
    f = row["facts"]
    return (f"{row['kernel']} sm_{row['arch']} {row['dtype']} head_dim={row['head_dim']} pe={row['pe']} "
            f"(BLOCK_M={row['block_m']} BLOCK_N={row['block_n']} BLOCK_D={row['block_d']} "
            f"num_warps={row['num_warps']} num_stages={row['num_stages']}): "
            f"{f['registers']} registers, spill stores/loads {f['spill_stores']}/{f['spill_loads']} bytes, "
            f"{f['shared_bytes']} bytes shared, {f['mma_instructions']}")


def test_report_covers_every_kernel_arch_dtype_and_head_dim(report):
    expected = {_key(k, a, d, h, pe) for k in (*MATMUL_KERNELS, PREPROCESS, ENCODE, MERGE)
                for a in ARCHS for d in DTYPES for h in HEAD_DIMS for pe in PE_VARIANTS if _launched(k, pe)}
    assert set(report) == expected


@pytest.mark.parametrize("kernel, arch, dtype, head_dim, pe", _instances(MATMUL_KERNELS))
def test_matmul_kernels_use_tensor_cores(report, kernel, arch, dtype, head_dim, pe):
    row = report[_key(kernel, arch, dtype, head_dim, pe)]
    instruction = TENSOR_CORE_INSTRUCTION[arch]
    if arch == 90 and (kernel, head_dim, pe) in MMA_SYNC_ALLOWED_ON_SM90:
        instruction = "mma.sync"
    assert row["facts"]["mma_instructions"][instruction] > 0, f"no {instruction}: {_describe(row)}"


@pytest.mark.parametrize("kernel, arch, dtype, head_dim, pe", _instances((*MATMUL_KERNELS, PREPROCESS, ENCODE, MERGE)))
def test_kernels_do_not_spill_registers(report, kernel, arch, dtype, head_dim, pe):
    row = report[_key(kernel, arch, dtype, head_dim, pe)]
    facts = row["facts"]
    assert (facts["spill_stores"], facts["spill_loads"]) == (0, 0), f"spills: {_describe(row)}"


@pytest.mark.parametrize("kernel, arch, dtype, head_dim, pe", _instances((*MATMUL_KERNELS, PREPROCESS, ENCODE, MERGE)))
def test_kernels_fit_register_file_and_shared_memory(report, kernel, arch, dtype, head_dim, pe):
    row = report[_key(kernel, arch, dtype, head_dim, pe)]
    facts = row["facts"]
    assert facts["registers"] <= MAX_REGISTERS, f"too many registers: {_describe(row)}"
    assert facts["shared_bytes"] <= MAX_SHARED_BYTES[arch], f"too much shared memory: {_describe(row)}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pe", [p for p in PE_VARIANTS if p in ("none", "rope-prepass", "softcap", "sinks")])
def test_fused_backward_at_head_dim_128_uses_wide_wgmma_and_tma_on_sm90(report, dtype, pe):
    """The default backward on Hopper: no m64n16 wgmma (the narrow score GEMMs of 32 x 64 tiles with 8
    warps), and dQ added to memory by TMA (cp.reduce.async.bulk.tensor) rather than per-element atomics."""
    row = report[_key(FUSED, 90, dtype, 128, pe)]
    shapes = row["facts"]["wgmma_shapes"]
    assert shapes and not any(s.startswith("m64n16k") or s.startswith("m64n8k") for s in shapes), _describe(row)
    assert row["facts"]["tma_instructions"] > 0, f"no TMA: {_describe(row)}"


def test_interior_loops_do_less_non_mma_work_per_score(tmp_path):
    """--loops counts each innermost SASS loop's non-MMA work per score (kernel_report.sass_loops): on
    sm_90 the forward's mask-free interior loop (the second in code order) must cost less per score
    than its masked edge loops, or the edge / interior split buys nothing."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = tmp_path / "loops.json"
    cmd = [sys.executable, "-m", "flashattn_py.tools.static_report", "--arch", "90", "--dtype", "bf16",
           "--head-dim", "128", "--causal", "yes", "--pe", "none", "--loops", "--jobs", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = {r["kernel"]: r for r in json.loads(out.read_text())}
    edge, interior, *_ = rows["attention_fwd_kernel"]["alu_per_score"]
    assert interior < 0.75 * edge, rows["attention_fwd_kernel"]["alu_per_score"]
    assert rows["attention_bwd_dq_kernel"]["alu_per_score"][1] < rows["attention_bwd_dq_kernel"]["alu_per_score"][0]


_PTXAS_SOURCES = """
import json, os, subprocess, types
from pathlib import Path
from flashattn_py.tools import kernel_report, static_report
runs = []  # kernel_report's own ptxas runs
kernel_report.subprocess = types.SimpleNamespace(run=lambda *a, **k: runs.append(a) or subprocess.run(*a, **k))
launch = next(c for c in static_report.kernel_launches("fp16", 64, True, "none", 80) if c.kernel == "{kernel}")
cold = static_report._compile(launch, 80, 64)  # empty caches: Triton runs ptxas -v, its report is captured
saved = list(Path(os.environ["TRITON_CACHE_DIR"]).rglob("ptxas-v.log"))
for path in saved:
    path.unlink()
runs_cold = len(runs)
ours = static_report._compile(launch, 80, 64)  # Triton's cache hit, no saved report: ptxas -v run here
again = static_report._compile(launch, 80, 64)  # the report saved by the run before
log = "ptxas info : Used 7 registers\\nptxas info : 0 bytes stack frame, 3 bytes spill stores, 5 bytes spill loads"
given = kernel_report._ptxas_usage("not ptx", 80, log)
read_back = kernel_report._ptxas_usage("not ptx", 80)  # ptxas would fail on this text: only the saved report
print(json.dumps(dict(cold=cold.registers, ours=ours.registers, again=again.registers, saved=len(saved),
                      runs=[runs_cold, len(runs)], given=given, read_back=read_back)))
"""


def test_ptxas_reports_captured_saved_and_run_agree(tmp_path):
    """kernel_report takes a kernel's ptxas -v report from Triton's own compile (captured), else from the
    report it saved in Triton's cache for that PTX, else runs ptxas: the three give the same registers, and
    a saved report is what comes back (a fake one for text ptxas would refuse)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    proc = subprocess.run([sys.executable, "-c", _PTXAS_SOURCES.format(kernel=PREPROCESS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["saved"] == 1 and got["runs"] == [0, 1], got  # captured, then run once, then read back
    assert got["cold"] == got["ours"] == got["again"] > 0, got
    assert got["given"] == got["read_back"] == [7, 3, 5], got
