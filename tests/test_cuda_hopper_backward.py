"""The Hopper (sm_90a) backward, csrc/hopper/attention_bwd_sm90.cuh (issue 18), without a GPU.

1. The routing rule (csrc/hopper/route.h sm90_backward_route / sm90_backward_takes), host-compiled
   (csrc/hopper/tests/route_probe.cpp, its "bwd_" cases): which calls the kernel takes and why it refuses
   the others (deterministic, head dim 96, ...).
2. Static facts of its six instances (fp16 / bf16 x head dim 64 / 128 / 256) as the extension's build compiles
   them for sm_90a: no spills within the CTA's 168 registers per thread, the five GEMMs as HGMMA (S^T and
   dP^T from shared memory, dV and dK with P^T / dS^T from registers, dQ with both operands transposed),
   TMA loads (UTMALDG) and the dQ reduce-add (UTMAREDG), mbarriers, setmaxnreg, and no ptxas note that
   the wgmma were serialized or fenced by the compiler. Shared memory is a static_assert in the header.
3. The Python side: the opt-in, and the route asked only when opted in.
Its numbers are checked on a GPU by the self-test (`build/bwd_selftest --sm90`, bench/gpu_validate.sh).
"""
import re
import subprocess
from pathlib import Path

import pytest
from host_probe import build_probe
from test_cuda_hopper_primitives import SM90A, by_tag, count, nvcc_compile, sass_opcodes

from flashattn_py.tools.cuda_report import find_cuobjdump, parse_ptxas

ROOT = Path(__file__).resolve().parents[1]
HOPPER = ROOT / "csrc" / "hopper"

# ---- 1. the routing rule ----------------------------------------------------------------------------

TAKEN = {"bwd_dense", "bwd_fp16_d64", "bwd_d256", "bwd_causal_window", "bwd_seqused_k", "bwd_packed"}
REFUSED = {  # case: words of the reason
    "bwd_d96": "head_dim 96", "bwd_deterministic": "deterministic",
    "bwd_not_requested": "FLASHATTN_CUDA_SM90=1", "bwd_a100": "not sm_90", "bwd_softcap": "softcap",
    "bwd_no_queries": "no queries", "bwd_odd_dout_stride": "16-byte", "bwd_odd_dk_stride": "16-byte",
}


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    exe = build_probe(tmp_path_factory, "route_probe", "-Wextra", source=HOPPER / "tests" / "route_probe.cpp")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    rows = (line.split("|") for line in out.splitlines())
    return {name: (reason, takes == "1") for name, reason, takes in rows if name.startswith("bwd_")}


def test_route_takes_what_the_kernel_implements(routes):
    for name in TAKEN:
        assert routes[name] == ("", True), name
    # An encoded call: the route is open; the kernel runs it with q pre-encoded (pe.q_encoded, the backend's
    # Q pre-pass: it encodes K and maps dq, dk back itself), not with q raw; nor without the fp32 dQ accumulator.
    assert routes["bwd_rotary_raw"] == ("", False)
    assert routes["bwd_rotary_q_encoded"] == ("", True)
    assert routes["bwd_no_accum"] == ("", False)


def test_route_refuses_the_rest_saying_why(routes):
    assert set(routes) == TAKEN | set(REFUSED) | {"bwd_rotary_raw", "bwd_rotary_q_encoded", "bwd_no_accum"}
    for name, words in REFUSED.items():
        reason, takes = routes[name]
        assert words in reason and not takes, (name, reason)


# ---- 2. static facts -----------------------------------------------------------------------------------

INSTANCES = [(dtype, d) for dtype in ("6__half", "13__nv_bfloat16") for d in (64, 128, 256)]
CMAKE_FLAGS = ("--use_fast_math", "--expt-relaxed-constexpr", "-c")  # CMakeLists.txt's, as far as they change code
BLOCK_M = {64: 128, 128: 64, 256: 64}  # query rows per tile (Sm90BwdShape): S^T and dP^T are 64 keys x BLOCK_M
ACC_COLS = {64: 64, 128: 128, 256: 128}  # dK / dV channels per consumer (at 256 the consumers split them)


@pytest.fixture(scope="module")
def sm90_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bwd_sm90")
    nvcc, obj, log = nvcc_compile(tmp, ROOT / "csrc" / "attention_bwd_sm90.cu", SM90A, "attention_bwd_sm90.o",
                                  extra=CMAKE_FLAGS)
    text = subprocess.run([find_cuobjdump(nvcc), "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    return {"ptxas": parse_ptxas(log), "log": log, "sass": sass_opcodes(nvcc, obj), "text": text}


def by_instance(table, kernel="attention_bwd_sm90_kernel"):
    tags = {f"I{dtype}Li{d}E": (dtype, d) for dtype, d in INSTANCES}
    return {tags[tag]: value for tag, value in by_tag(table, kernel, tags).items()}


def kernel_text(sass_text, dtype, d):
    """The cuobjdump -sass text of one attention_bwd_sm90_kernel instance."""
    tag = f"attention_bwd_sm90_kernelI{dtype}Li{d}E"
    sections = re.split(r"(?=\n\s+Function : )", sass_text)
    found = [section for section in sections if tag in section.split("\n", 2)[1]]
    assert len(found) == 1, tag
    return found[0]


@pytest.mark.cuda_build
def test_sm90_backward_ptxas_facts(sm90_build):
    log = sm90_build["log"]
    for note in ("C7508", "C7514", "C7519", "C7512"):  # setmaxnreg ignored; wgmma serialized / fenced by ptxas
        assert note not in log, f"ptxas {note}:\n{log[-6000:]}"
    for kernel in ("attention_bwd_sm90_kernel", "attention_bwd_dq_convert_kernel"):
        for (dtype, d), r in by_instance(sm90_build["ptxas"], kernel).items():
            # 168 = 65536 / 384 rounded down to 8: the CTA's registers, which setmaxnreg redistributes (24 / 240 / 240).
            assert r["registers"] <= 168, (kernel, dtype, d, r)
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (kernel, dtype, d, r)


@pytest.mark.cuda_build
def test_sm90_backward_sass_is_wgmma_and_tma(sm90_build):
    for (dtype, d), ops in by_instance(sm90_build["sass"]).items():
        hgmma = {op for op in ops if op.startswith("HGMMA.")}
        m = BLOCK_M[d]
        # (cuobjdump's operands carry the transposes, .tnspA / .tnspB; the opcodes give the shapes.)
        # S^T = K Q^T and dP^T = V dO^T: 64 keys x m queries, D / 16 steps each.
        assert any(op.startswith(f"HGMMA.64x{m}x16.F32") for op in hgmma), (dtype, d, hgmma)
        # dV += P^T dO and dK += dS^T Q: 64 keys x the consumer's channels, m / 16 steps each.
        assert any(op.startswith(f"HGMMA.64x{ACC_COLS[d]}x16.F32") for op in hgmma), (dtype, d, hgmma)
        # dQ shares = dS K: 64 x 64 each; 128 keys = 8 steps (d 64 / 128), or at d 256 two shares of 64 keys =
        # 4 steps each. Per tile: 2 D/16 + 2 m/16 + 8 wgmma (unrolled once).
        assert any(op.startswith("HGMMA.64x64x16.F32") for op in hgmma), (dtype, d, hgmma)
        assert count(ops, "HGMMA") == 2 * d // 16 + 2 * m // 16 + 8, (dtype, d, count(ops, "HGMMA"))
        # The operands' transposes, from the instruction text of this instance: dV / dK read B (dO, Q) transposed,
        # dQ reads both (dS^T, K) transposed; S^T and dP^T read neither.
        body = kernel_text(sm90_build["text"], dtype, d)
        hgmma_lines = [line for line in body.splitlines() if "HGMMA." in line]
        assert sum(".tnspA.tnspB" in line for line in hgmma_lines) == 8, (dtype, d)
        assert sum(".tnspB" in line and ".tnspA" not in line for line in hgmma_lines) == 2 * m // 16, (dtype, d)
        assert sum("tnsp" not in line for line in hgmma_lines) == 2 * d // 16, (dtype, d)
        assert count(ops, "UTMALDG") >= 4, (dtype, d)  # K, V, Q, dO boxes
        assert count(ops, "UTMAREDG") >= 2, (dtype, d)  # the dQ share's two 32-column boxes, reduce-added
        assert count(ops, "SYNCS") >= 6, (dtype, d)  # mbarrier init / expect_tx / try_wait / arrive
        assert count(ops, "USETMAXREG") == 2, (dtype, d)  # the producer's dec, the consumers' inc
        assert count(ops, "HMMA") == 0, (dtype, d)  # no mma.sync left
        assert count(ops, "MUFU.EX2") > 0, (dtype, d)  # P = exp2(S - lse)


@pytest.mark.cuda_build
def test_sm90_backward_is_a_trap_outside_sm90a(tmp_path):
    """The other archs of the build compile the kernel to a trap: no wgmma, no cost."""
    nvcc, obj, log = nvcc_compile(tmp_path, ROOT / "csrc" / "attention_bwd_sm90.cu",
                                  "-gencode=arch=compute_80,code=sm_80", "bwd80.o", extra=CMAKE_FLAGS)
    kernels = {name: ops for name, ops in sass_opcodes(nvcc, obj).items() if "attention_bwd_sm90_kernel" in name}
    assert len(kernels) == 6
    for name, ops in kernels.items():
        assert count(ops, "HGMMA") == 0 and count(ops, "BPT") >= 1 and sum(ops.values()) < 40, (name, ops)


# ---- 3. the Python side ---------------------------------------------------------------------------------


def test_backward_route_is_asked_only_when_opted_in(monkeypatch):
    from flashattn_py.backends import cuda_backend

    monkeypatch.delenv(cuda_backend.SM90_ENV, raising=False)
    # No extension call (None would fail) when not requested: every call stays on the mma.sync backward.
    assert "opts in" in cuda_backend.sm90_backward_route(None, None, None, False)


def test_sm90_backward_is_documented():
    text = (ROOT / "docs" / "hopper.md").read_text()
    assert "attention_bwd_sm90" in text and re.search(r"deterministic", text) and "reduce-add" in text


@pytest.mark.cuda_build
@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_selftests_compile(tmp_path, which):
    """The torch-free self-tests (csrc/tests/attention_*_selftest.cu) run only on a GPU machine; their own code
    (the --sm90 mode, the reference, the cases) must at least compile here, so that the one GPU command works.
    The kernels they link are compiled by the extension's build and the static tests above."""
    nvcc_compile(tmp_path, ROOT / "csrc" / "tests" / f"attention_{which}_selftest.cu", SM90A, f"{which}_selftest.o",
                 extra=("-c",))
