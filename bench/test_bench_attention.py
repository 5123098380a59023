"""pytest-benchmark suites over the harness's own cases and implementations (flashattn_py.tools.bench):
``python -m pytest bench/ --benchmark-columns=median,iqr`` on a GPU machine. Every implementation is
checked against the float64 reference before it is timed, as in ``python -m flashattn_py.tools.bench``.
On a CPU the suites skip: interpreter timings are no performance figure."""
import pytest
import torch

from flashattn_py.tools.bench import peers, runner
from flashattn_py.tools.bench.cases import Case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks: no CUDA GPU here")

IMPLEMENTATIONS = ["triton", "cuda", "sdpa_flash", "sdpa_cudnn", "flex"]
CASES = [Case(4, 16, 16, 4096, 128, "bf16", causal=c) for c in (False, True)] + [
    Case(16, 32, 8, 1024, 64, "bf16", causal=True)]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=Case.label)
def test_attention(benchmark, case, name, mode):
    device = torch.device("cuda")
    peer = peers.implementations(case, device).get(name)
    if peer is None or peer.fn is None:
        pytest.skip(f"{name} unavailable: {peer.unavailable if peer else 'not offered for this case'}")
    status = runner.check(case, peer.fn, device, with_grads=mode != "fwd")
    if status.startswith("unavailable"):
        pytest.skip(f"{name}: {status}")
    assert status == "ok", f"{name} is wrong, not timed: {status}"
    q, k, v, dout = runner.make_inputs(case, device)
    step = runner.step_for(peer.fn, mode, q, k, v, dout)

    def synchronized():
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronized, rounds=20, warmup_rounds=3)
