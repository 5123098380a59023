"""The bench's per-peer environment (tools/bench/runner.py `environment`, Peer.env): a peer whose backend reads
an opt-in at each call (cuda[sm90]: FLASHATTN_CUDA_SM90=1 for the Hopper forward and backward) has it set for
its forward and its backward in every timed mode, and the process environment is restored after."""
import os

import torch

from flashattn_py.tools.bench import runner

NAME = "FLASHATTN_BENCH_ENV_PROBE"


class Recorder(torch.autograd.Function):
    """Identity that records the probe variable seen by its forward and its backward."""

    seen = []

    @staticmethod
    def forward(ctx, x):
        Recorder.seen.append(("fwd", os.environ.get(NAME)))
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        Recorder.seen.append(("bwd", os.environ.get(NAME)))
        return g


def fn(q, k, v):
    return Recorder.apply(q) + k + v


def test_env_reaches_forward_and_backward_of_each_mode_and_is_restored(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    inputs = [torch.randn(2, 3) for _ in range(4)]
    for mode, calls in (("fwd", ["fwd"]), ("bwd", ["fwd", "bwd"]), ("fwd+bwd", ["fwd", "bwd"])):
        Recorder.seen.clear()
        step = runner._step(fn, mode, inputs, None, {NAME: "1"})
        step()
        assert [kind for kind, _ in Recorder.seen] == calls, mode
        assert all(value == "1" for _, value in Recorder.seen), (mode, Recorder.seen)
        assert NAME not in os.environ, mode  # restored between calls


def test_environment_restores_a_previous_value(monkeypatch):
    monkeypatch.setenv(NAME, "0")
    with runner.environment({NAME: "1"}):
        assert os.environ[NAME] == "1"
    assert os.environ[NAME] == "0"
    Recorder.seen.clear()
    runner._step(fn, "fwd", [torch.randn(2) for _ in range(4)], None, {})()
    assert Recorder.seen == [("fwd", "0")]  # no env: the process's own
