"""The benchmark harness runs end to end (GPU timing is replaced by a stub timer on CPU)."""
import argparse

import pytest
import torch

from flashattn_py.bench import __main__ as bench
from tolerance import DEVICE


@pytest.mark.parametrize("rotary", [False, True])
def test_harness_checks_every_peer_and_builds_timing_rows(rotary, capsys):
    args = argparse.Namespace(dtype="fp32", head_dim=16, heads=2, kv_heads=2, batch=1, seqlens=[20],
                              rotary=rotary, backend="triton")
    errors = bench.correctness_rows(args, DEVICE, seqlens=(20,))
    assert errors and all(err < 1e-4 for *_, err in errors), errors
    rows = bench.timing_rows(args, DEVICE, timer=lambda fn: (fn(), 1.0)[1])  # runs each step once
    peers = {name for *_, name, _, _ in rows}
    expected = ({"ours_rope_auto", "ours_rope_in_kernel", "ours_rope_prepass", "apply_rotary+ours", "torch_rope+sdpa"}
                if rotary else {"ours", "sdpa"})
    assert peers == expected
    assert len(rows) == len(peers) * 2 * 2  # x causal x mode
    bench.print_timing(rows)
    assert "TFLOP/s" in capsys.readouterr().out


def test_flops_formula():
    assert bench.attention_flops(2, 3, 5, 7, 11, False, "fwd") == 4 * 2 * 3 * 5 * 7 * 11
    assert bench.attention_flops(2, 3, 5, 7, 11, True, "fwd+bwd") == 4 * 2 * 3 * 5 * 7 * 11 * 0.5 * 3.5


def test_cpu_main_job_reports_no_performance_figure(capsys):
    if torch.cuda.is_available():
        pytest.skip("GPU present: main() would time for real")
    assert bench.main(["--seqlens", "64"]) == 0
    out = capsys.readouterr().out
    assert "correctness only" in out and "TFLOP/s" not in out


def test_results_files_record_environment_and_rows(tmp_path):
    env = {"device": "test", "torch": torch.__version__, "triton": "x", "cuda": None, "date": "d", "command": "c"}
    correctness = [("ours", 17, True, 1e-4)]
    timing = [(1024, True, "fwd", "ours", 1.5, 300.0), (1024, True, "fwd", "sdpa", 1.6, 280.0)]
    bench.write_results(tmp_path / "r", "attention-bf16-d128", env, correctness, timing)
    import json

    data = json.loads((tmp_path / "r" / "attention-bf16-d128.json").read_text())
    assert data["environment"] == env and data["timing"][1]["implementation"] == "sdpa"
    csv = (tmp_path / "r" / "attention-bf16-d128.csv").read_text().splitlines()
    assert csv[0] == "seqlen,causal,mode,implementation,ms,tflops" and len(csv) == 3
