"""Tile-config choice: the cache logic on any machine, and every candidate's results on a GPU."""
import pytest
import torch

from flashattn_py.triton_kernels import autotune, configs
from flashattn_py.triton_kernels.configs import TileConfig

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

A, B = TileConfig(64, 32, 4, 2), TileConfig(128, 64, 8, 3)


def test_tuning_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "enabled", lambda: True)
    monkeypatch.setattr(autotune, "arch_of", lambda device: 90)
    import triton.testing

    launched = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), launched[-1].block_m / 64)[1])
    device = torch.device("cuda")  # only its type is read: nothing is launched on it
    got = autotune.pick("kern", "key1", A, lambda arch: [A, B], launched.append, device)
    assert got == A and launched == [A, B]  # both timed; A (1.0 ms) beats B (2.0 ms)
    assert (tmp_path / "autotune-sm90.json").exists()
    launched.clear()
    assert autotune.pick("kern", "key1", B, lambda arch: [B, A], launched.append, device) == A
    assert launched == []  # from the cache, nothing timed
    assert any(line.startswith("kern key1 -> BLOCK_M=64") and "cached, sm90" in line for line in autotune.choices())


def test_off_by_default_and_never_in_the_interpreter(monkeypatch):
    monkeypatch.delenv("FLASHATTN_AUTOTUNE", raising=False)
    assert not autotune.enabled()
    calls = []
    assert autotune.pick("kern", "k", A, lambda arch: [A, B], calls.append, torch.device("cpu")) == A and not calls


def test_calls_with_score_mods_or_another_layout_never_share_a_tuned_tile():
    """A bias call takes only its own spill-free tile: a tile tuned for a plain call must not reach it."""
    import dataclasses

    from flashattn_py.validation import attention as checks
    q = torch.zeros(2, 1, 4, 64, dtype=torch.float16)
    k = torch.zeros(2, 300, 2, 64, dtype=torch.float16)
    plain = checks.attention_params(q, k, k)
    variants = [plain, checks.attention_params(q, k, k, attn_bias=torch.ones(2, 1, 1, 300, dtype=torch.bool)),
                checks.attention_params(q, k, k, softcap=5.0),
                checks.attention_params(q, k, k, alibi_slopes=torch.ones(4)),
                dataclasses.replace(plain, num_splits=3)]
    keys = {autotune.key_of(p, torch.float16, 64, {}) for p in variants}
    assert len(keys) == len(variants)


def test_every_candidate_starts_with_the_default():
    for block_d in (32, 64, 128, 256):
        for arch in (80, 90):
            assert configs.forward_candidates(block_d, arch)[0] == configs.forward_config(block_d, arch=arch)
            assert configs.dkdv_candidates(block_d, arch)[0] == configs.dkdv_config(block_d)
            assert configs.dq_candidates(block_d, arch)[0] == configs.dq_config(block_d)


def _gpu_candidates():
    if DEVICE.type != "cuda":
        return [pytest.param(None, None, None, marks=pytest.mark.skip(
            reason="tile candidates are GPU configs; the interpreter runs its own small tiles"))]
    arch = autotune.arch_of(DEVICE)
    cases = []
    for kernel, candidates in (("attention_fwd", configs.forward_candidates),
                               ("attention_bwd_fused", configs.fused_candidates),
                               ("attention_bwd_dkdv", configs.dkdv_candidates),
                               ("attention_bwd_dq", configs.dq_candidates)):
        for head_dim in (64, 128, 256):
            block_d = head_dim
            for cfg in candidates(block_d, arch)[1:]:
                cases.append(pytest.param(kernel, head_dim, cfg,
                                          id=f"{kernel}-d{head_dim}-{cfg.block_m}x{cfg.block_n}"
                                             f"w{cfg.num_warps}s{cfg.num_stages}"))
    return cases


@pytest.mark.parametrize("kernel,head_dim,cfg", _gpu_candidates())
def test_candidate_config_matches_reference(request, kernel, head_dim, cfg, monkeypatch):
    monkeypatch.setitem(autotune.FORCED, kernel, cfg)
    q, k, v, dout = random_qkv(2, 150, 170, 4, 2, head_dim, torch.bfloat16, seed=seed_of(request))
    for causal in (False, True):
        try:
            # dK/dV and dQ candidates run in the deterministic backward only (the default is the fused one)
            check_against_reference("triton", q, k, v, dout, causal=causal,
                                    deterministic=kernel in ("attention_bwd_dkdv", "attention_bwd_dq"))
        except Exception as err:  # a candidate too big for this GPU's shared memory is skipped when tuning
            if "shared memory" in str(err).lower() or "OutOfResources" in type(err).__name__:
                pytest.skip(f"{cfg} does not fit this GPU: {err}")
            raise
