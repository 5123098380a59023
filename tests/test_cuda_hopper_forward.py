"""The Hopper (sm_90a) forward, csrc/hopper/attention_fwd_sm90.cuh (issue 17), without a GPU.

1. The routing rule (csrc/hopper/route.h), host-compiled (csrc/hopper/tests/route_probe.cpp): which calls
   the kernel takes and the reason it gives for the others.
2. Static facts of its six instances (fp16 / bf16 x head dim 64 / 128 / 256) as the extension's build
   compiles them for sm_90a (the nvcc flags of CMakeLists.txt): spills, HGMMA (S = Q K^T from shared
   memory, O += P V with P from registers and V transposed), UTMALDG, mbarriers, setmaxnreg, and no ptxas
   note that the wgmma were serialized or fenced by the compiler. Shared memory is a static_assert in the
   header (<= 227 KB).
3. The Python side (backends/cuda_backend.py): the opt-in, and K pre-encoded only when the Hopper kernel
   takes an encoded call.
The kernel's numbers are checked on a GPU by the self-test (`build/fwd_selftest --sm90`, bench/gpu_validate.sh).
"""
import re
import subprocess
from pathlib import Path

import pytest
from host_probe import build_probe
from test_cuda_hopper_primitives import SM90A, by_tag, count, nvcc_compile, sass_opcodes

from flashattn_py.tools.cuda_report import parse_ptxas

ROOT = Path(__file__).resolve().parents[1]
HOPPER = ROOT / "csrc" / "hopper"

# ---- 1. the routing rule ----------------------------------------------------------------------------

TAKEN = {"dense", "fp16_d64", "d256", "causal_window", "seqused_k", "odd_stride_of_size_1_dim", "packed",
         "rotary_k_encoded", "sinusoidal_k_encoded"}
REFUSED = {  # case: words of the reason
    "not_requested": "FLASHATTN_CUDA_SM90=1", "not_compiled": "90a", "a100": "not sm_90", "sm_100": "not sm_90",
    "d96": "head_dim 96", "d32": "head_dim 32", "softcap": "softcap", "alibi": "ALiBi", "paged": "paged",
    "split": "split-K", "leftpad": "leftpad_k", "odd_q_seq_stride": "16-byte", "odd_v_head_stride": "16-byte",
    "packed_without_total_k": "total_k", "no_keys": "no keys",
}


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    exe = build_probe(tmp_path_factory, "route_probe", "-Wextra", source=HOPPER / "tests" / "route_probe.cpp")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    rows = (line.split("|") for line in out.splitlines())
    return {name: (reason, takes == "1") for name, reason, takes in rows if not name.startswith("bwd_")}


def test_route_takes_what_the_kernel_implements(routes):
    for name in TAKEN - {"rotary_k_encoded", "sinusoidal_k_encoded"}:
        assert routes[name] == ("", True), name
    # An encoded call: the route is open and the backend pre-encodes K; the kernel runs it only then.
    assert routes["rotary_k_raw"] == ("", False)
    assert routes["rotary_k_encoded"] == ("", True) and routes["sinusoidal_k_encoded"] == ("", True)


def test_route_refuses_the_rest_saying_why(routes):
    assert set(routes) == TAKEN | set(REFUSED) | {"rotary_k_raw"}
    for name, words in REFUSED.items():
        reason, takes = routes[name]
        assert words in reason and not takes, (name, reason)


# ---- 2. static facts -----------------------------------------------------------------------------------

INSTANCES = [(dtype, d) for dtype in ("6__half", "13__nv_bfloat16") for d in (64, 128, 256)]
CMAKE_FLAGS = ("--use_fast_math", "--expt-relaxed-constexpr", "-c")  # CMakeLists.txt's, as far as they change code


@pytest.fixture(scope="module")
def sm90_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fwd_sm90")
    nvcc, obj, log = nvcc_compile(tmp, ROOT / "csrc" / "attention_fwd_sm90.cu", SM90A, "attention_fwd_sm90.o",
                                  extra=CMAKE_FLAGS)
    return {"ptxas": parse_ptxas(log), "log": log, "sass": sass_opcodes(nvcc, obj)}


def by_instance(table):
    tags = {f"I{dtype}Li{d}E": (dtype, d) for dtype, d in INSTANCES}
    return {tags[tag]: value for tag, value in by_tag(table, "attention_fwd_sm90_kernel", tags).items()}


@pytest.mark.cuda_build
def test_sm90_forward_ptxas_facts(sm90_build):
    log = sm90_build["log"]
    for note in ("C7508", "C7514", "C7519", "C7512"):  # setmaxnreg ignored; wgmma serialized / fenced by ptxas
        assert note not in log, f"ptxas {note}:\n{log[-6000:]}"
    for (dtype, d), r in by_instance(sm90_build["ptxas"]).items():
        # 168 = 65536 / 384 rounded down to 8: the CTA's registers, which setmaxnreg redistributes (24 / 240 / 240).
        assert r["registers"] <= 168, (dtype, d, r)
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (dtype, d, r)


@pytest.mark.cuda_build
def test_sm90_forward_sass_is_wgmma_and_tma(sm90_build):
    tiles_n = {64: 128, 128: 128, 256: 64}  # key block per head dim (Sm90FwdShape)
    for (dtype, d), ops in by_instance(sm90_build["sass"]).items():
        hgmma = {op for op in ops if op.startswith("HGMMA.")}
        assert any(op.startswith(f"HGMMA.64x{tiles_n[d]}x16.F32") for op in hgmma), (dtype, d, hgmma)  # Q K^T
        assert any(op.startswith(f"HGMMA.64x{d}x16.F32") for op in hgmma), (dtype, d, hgmma)  # P V
        assert count(ops, "UTMALDG") >= 3, (dtype, d)  # Q, K and V tiles (one box per 64-channel panel)
        assert count(ops, "SYNCS") >= 6, (dtype, d)  # mbarrier init / expect_tx / try_wait / arrive
        assert count(ops, "USETMAXREG") == 2, (dtype, d)  # the producer's dec, the consumers' inc
        assert count(ops, "HMMA") == 0, (dtype, d)  # no mma.sync left
        assert count(ops, "MUFU.EX2") > 0, (dtype, d)  # the softmax's exp2


@pytest.mark.cuda_build
def test_sm90_kernel_is_a_trap_outside_sm90a(tmp_path):
    """The other archs of the build (and the PTX) compile the kernel to a trap: no wgmma, no cost."""
    nvcc, obj, log = nvcc_compile(tmp_path, ROOT / "csrc" / "attention_fwd_sm90.cu",
                                  "-gencode=arch=compute_80,code=sm_80", "fwd80.o", extra=CMAKE_FLAGS)
    kernels = {name: ops for name, ops in sass_opcodes(nvcc, obj).items() if "attention_fwd_sm90_kernel" in name}
    assert len(kernels) == 6
    for name, ops in kernels.items():
        assert count(ops, "HGMMA") == 0 and count(ops, "BPT") >= 1 and sum(ops.values()) < 40, (name, ops)


# ---- 3. the Python side ---------------------------------------------------------------------------------


def test_opt_in_is_the_environment_variable(monkeypatch):
    from flashattn_py.backends import cuda_backend

    monkeypatch.delenv(cuda_backend.SM90_ENV, raising=False)
    assert not cuda_backend.sm90_requested()
    assert "opts in" in cuda_backend.sm90_route(None, None, None)  # no extension call when not requested
    for value, on in (("1", True), ("0", False), ("yes", False)):
        monkeypatch.setenv(cuda_backend.SM90_ENV, value)
        assert cuda_backend.sm90_requested() is on


def test_sm90_route_is_documented():
    text = (ROOT / "docs" / "hopper.md").read_text()
    assert re.search(r"FLASHATTN_CUDA_SM90=1", text) and "route.h" in text
