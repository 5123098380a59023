"""The benchmark harness end to end on this machine (GPU timing replaced by a stub timer on CPU)."""
import json

import pytest

from flashattn_py.tools.bench import __main__ as bench
from flashattn_py.tools.bench import output, peers, runner
from flashattn_py.tools.bench.cases import Case, attention_flops, sweep

from tolerance import DEVICE

ON_CPU = DEVICE.type == "cpu"


def stub_timer(step):
    step()
    return 1.0


@pytest.mark.parametrize("encoding", ["none", "rope", "sinusoidal"])
def test_every_implementation_is_checked_then_timed(encoding):
    case = Case(1, 2, 1, 40, 16, "fp32", causal=True, encoding=encoding)
    rows = runner.measure_case(case, ["fwd", "bwd", "fwd+bwd"], DEVICE, stub_timer)
    names = {r.implementation for r in rows}
    assert names == set(peers.implementations(case, DEVICE))
    assert len(rows) == 3 * len(names)
    for r in rows:
        if r.status == "ok":
            assert r.ms == 1.0 and r.tflops == pytest.approx(attention_flops(case, r.mode) / 1e9)
        else:
            assert r.ms is None and r.tflops is None
            assert r.status.startswith(("unavailable", "not timed")), r.status
    if ON_CPU:
        assert all(r.status.startswith("not timed: Triton interpreter") for r in rows if r.implementation == "triton")
        assert any(r.status == "ok" for r in rows if r.implementation == "torch")
    best = {mode: max(r.tflops for r in rows if r.mode == mode and r.tflops and not r.ours) for mode in ("fwd", "bwd")}
    for r in rows:
        if r.tflops:
            assert r.ratio_to_best_peer == pytest.approx(r.tflops / best[r.mode] if r.mode in best
                                                         else r.ratio_to_best_peer)


def test_a_wrong_implementation_is_reported_not_timed(monkeypatch):
    case = Case(1, 2, 2, 33, 16, "fp32")
    real = peers.implementations

    def with_a_wrong_one(case, device):
        impls = real(case, device)
        impls["off_by_scale"] = peers.Peer("off_by_scale", False, lambda q, k, v: 1.01 * impls["naive"].fn(q, k, v))
        return impls

    monkeypatch.setattr(peers, "implementations", with_a_wrong_one)
    rows = runner.measure_case(case, ["fwd"], DEVICE, stub_timer)
    wrong = [r for r in rows if r.implementation == "off_by_scale"]
    assert wrong[0].status.startswith("wrong: out error") and wrong[0].ms is None


def test_flops_formula():
    case = Case(2, 3, 3, 5, 11)
    assert attention_flops(case, "fwd") == 4 * 2 * 3 * 5 * 5 * 11
    causal = Case(2, 3, 3, 5, 11, causal=True)
    assert attention_flops(causal, "fwd+bwd") == 4 * 2 * 3 * 5 * 5 * 11 * 0.5 * 3.5
    assert attention_flops(causal, "bwd") == 4 * 2 * 3 * 5 * 5 * 11 * 0.5 * 2.5
    windowed = Case(1, 1, 1, 100, 8, window=4)
    assert attention_flops(windowed, "fwd") == 4 * 100 * 9 * 8  # 2 * 4 + 1 keys per query


def test_sweep_with_fixed_token_count_and_gqa():
    cases = sweep(seqlens=[512, 2048], head_dims=[64], dtypes=["bf16"], causal=[True], encodings=["none"],
                  batch_heads=[(4, 8)], gqa=[1, 4, 3], tokens=4096)
    assert [(c.batch, c.seqlen, c.kv_heads) for c in cases] == [(8, 512, 8), (8, 512, 2), (2, 2048, 8), (2, 2048, 2)]


def test_cpu_main_job_labels_cpu_and_writes_results(tmp_path, capsys):
    if not ON_CPU:
        pytest.skip("GPU present: main() would time for real")
    assert bench.main(["--seqlens", "48", "--head-dim", "16", "--out", str(tmp_path), "--name", "t"]) == 0
    printed = capsys.readouterr().out
    assert "CPU run: timings below are CPU timings" in printed and "never timed" in printed
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["environment"]["device"].startswith("cpu") and data["rows"]
    assert {r["implementation"] for r in data["rows"]} >= {"torch", "triton", "sdpa_flash", "sdpa_math", "naive"}
    # Ours is timed against SDPA on CPU in the same run: a ratio for every mode.
    assert all(r["ratio_to_best_peer"] for r in data["rows"] if r["implementation"] == "torch")
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("batch,heads,kv_heads,seqlen")
    assert not list(tmp_path.glob("*.png"))  # CPU timings are not plotted as performance


def test_device_cpu_takes_the_cpu_sweep_defaults():
    args = bench._parser().parse_args(["--device", "cpu"])
    assert bench.device_of(args).type == "cpu"
    assert (args.dtype, args.seqlens, args.batch, args.heads, args.head_dim) == (["fp32"], [512, 1024, 2048, 4096],
                                                                                2, 8, [64])
    args = bench._parser().parse_args(["--device", "cpu", "--seqlens", "64"])
    bench.device_of(args)
    assert args.seqlens == [64]


def test_plots_one_png_per_configuration(tmp_path):
    pytest.importorskip("matplotlib")
    env = {"device": "NVIDIA test GPU"}
    rows = []
    for seqlen in (512, 1024):
        for causal in (False, True):
            for name, tflops in (("triton", 300.0), ("sdpa_flash", 280.0)):
                case = Case(1, 16, 16, seqlen, 128, causal=causal)
                rows.append(runner.Row(case, "fwd", name, name == "triton", "ok", 1.0, tflops, 10.0))
    paths = output.write_plots(tmp_path, "b", env, rows)
    assert len(paths) == 2 and all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_profile_trace_and_kernel_loop(tmp_path, capsys):
    from flashattn_py.tools.bench.profiling import chrome_trace, kernel_loop

    case = Case(1, 2, 2, 24, 16, "fp32")
    path = chrome_trace([case], ["fwd"], DEVICE, tmp_path / "trace.json", only=["naive", "sdpa_math"])
    events = json.loads(path.read_text())["traceEvents"]
    assert any("naive fwd" in e.get("name", "") for e in events)
    assert kernel_loop(case, "naive", "fwd+bwd", DEVICE, iters=2).startswith("ran naive fwd+bwd")
    with pytest.raises(SystemExit, match="unknown implementation"):
        kernel_loop(case, "nope", "fwd", DEVICE, iters=1)


def test_static_report_subcommand_fails_on_spills_and_covers_both_backends(tmp_path):
    """`python -m flashattn_py.bench report` (no GPU): exit 0 only without spills; JSON for both backends.
    (The full default matrix runs in test_static_report.py; one head dim here keeps it quick.)"""
    import os
    import subprocess
    import sys

    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "flashattn_py.tools.bench", "report", "--arch", "80", "90",
                           "--dtype", "bf16", "--head-dim", "64", "--pe", "none", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no spills in any default config" in proc.stdout
    data = json.loads(out.read_text())
    assert {r["kernel"] for r in data["triton"]} >= {"attention_fwd_kernel", "attention_bwd_dkdv_kernel"}
    assert all(r["occupancy"] > 0 for r in data["triton"])
    assert "cuda" in data  # rows when the extension was built here (CI builds it), else [] and the reason printed
    for row in data["cuda"]:  # per instance: registers, spills, tensor-core instructions, occupancy
        assert row["spill_stores"] == row["spill_loads"] == 0
        assert row["occupancy"] is None or 0 < row["occupancy"] <= 1
        if "preprocess" not in row["kernel"] and row["HMMA"] is not None:
            assert row["HMMA"] + row["HGMMA"] > 0, row["kernel"]


def test_summary_states_targets_met_or_missed(tmp_path):
    from flashattn_py.tools.bench import summary

    env = {"device": "GPU", "torch": "t", "triton": "t", "cuda": "c", "date": "d", "command": "c"}
    rows = []
    for name, tflops, ours in (("triton", 600.0, True), ("sdpa_flash", 500.0, False), ("sdpa_cudnn", 650.0, False)):
        rows.append(runner.Row(Case(1, 16, 16, 8192, 128, "bf16"), "fwd", name, ours, "ok", 1.0, tflops))
    output.write_json_csv(tmp_path, "standard", env, rows)
    text = summary.summarize(tmp_path)
    assert "MISSED: forward >= 550 TFLOP/s and >= 1.0x best SDPA" in text and "0.92x sdpa_cudnn" in text
    assert "| 128 | False | none | fwd | 8192 | 600.0 |" in text


def test_decode_benchmark_checks_then_reports_throughput(tmp_path, monkeypatch):
    from flashattn_py.tools.bench import decode

    monkeypatch.setattr(runner, "cpu_timer", stub_timer)
    monkeypatch.setattr(runner, "gpu_timer", stub_timer)
    assert decode.main(["--batch", "2", "--cache-lens", "40", "--page-sizes", "0", "16", "--heads", "4",
                        "--kv-heads", "2", "--head-dim", "16", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert {(r["page_size"], r["implementation"]) for r in rows} >= {(0, "ours"), (16, "ours"), (0, "sdpa")}
    assert all(r["status"] == "ok" and r["tokens_per_s"] == 2 / 1.0 * 1e3 for r in rows)
    assert all(r["kv_gb_per_s"] == 2 * 2 * 40 * 2 * 16 * 2 / 1.0 / 1e6 for r in rows)


def test_cpu_timer_interleaves_the_steps_in_rounds():
    order = []
    steps = [lambda i=i: order.append(i) for i in range(3)]
    medians = runner.interleaved_cpu_timer(steps, reps=4, budget_s=0.0)
    assert len(medians) == 3 and all(m >= 0 for m in medians)
    warmup, rounds = order[:3], [order[i:i + 3] for i in range(3, len(order), 3)]
    assert warmup == [0, 1, 2] and len(rounds) == 4
    assert all(sorted(r) == [0, 1, 2] for r in rounds)  # every step once per round
    assert [r[0] for r in rounds] == [0, 1, 2, 0]  # each round starts one step later


def test_measure_case_times_a_modes_implementations_together_on_an_interleaving_timer():
    calls = []

    def timer(step):
        raise AssertionError("an interleaving timer is given all steps at once")

    def interleaved(steps):
        calls.append(len(steps))
        return [2.0] * len(steps)

    timer.interleaved = interleaved
    case = Case(1, 2, 2, 33, 16, "fp32")
    rows = runner.measure_case(case, ["fwd", "fwd+bwd"], DEVICE, timer, skip=["triton", "cuda"])
    ok = [r for r in rows if r.status == "ok"]
    assert calls == [len(ok) // 2] * 2 and all(r.ms == 2.0 for r in ok)
    assert runner.cpu_timer.interleaved is runner.interleaved_cpu_timer
