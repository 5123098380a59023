"""MultiheadAttention against torch.nn.MultiheadAttention with the same weights, and LlamaAttention
against the same computation written with eager ops and the float64 reference."""
import pytest
import torch

import flashattn_py as fa
from flashattn_py.modules import KVCache, LlamaAttention, MultiheadAttention

from tolerance import DEVICE, assert_within_naive_error, seed_of

BACKENDS = ["triton", "torch"]

CONFIGS = {
    "plain": dict(),
    "batch_first": dict(batch_first=True),
    "kdim_vdim": dict(kdim=24, vdim=40),
    "bias_kv_zero_attn": dict(add_bias_kv=True, add_zero_attn=True),
    "no_bias": dict(bias=False),
}
MASKS = ["none", "key_padding_bool", "key_padding_float", "attn_mask_bool", "attn_mask_3d_float", "both", "causal_hint"]


def _masks(kind, batch, heads, L, S, gen):
    kpm = torch.rand(batch, S, generator=gen) < 0.3
    kpm[:, 0] = False
    am = torch.rand(L, S, generator=gen) < 0.3
    am[:, 0] = False
    if kind == "none":
        return {}
    if kind == "key_padding_bool":
        return dict(key_padding_mask=kpm.to(DEVICE))
    if kind == "key_padding_float":
        return dict(key_padding_mask=torch.randn(batch, S, generator=gen).to(DEVICE))
    if kind == "attn_mask_bool":
        return dict(attn_mask=am.to(DEVICE))
    if kind == "attn_mask_3d_float":
        return dict(attn_mask=torch.randn(batch * heads, L, S, generator=gen).to(DEVICE))
    if kind == "both":
        return dict(attn_mask=am.to(DEVICE), key_padding_mask=kpm.to(DEVICE))
    causal = torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=1)
    return dict(attn_mask=causal.to(DEVICE), is_causal=True)


# Every config x mask on the Triton kernels; the PyTorch path (same module code) on the plain config.
CASES = [(b, c, m) for b in BACKENDS for c in CONFIGS for m in MASKS if b == "triton" or c == "plain"]


@pytest.mark.parametrize("backend,config,mask", CASES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_matches_torch_module(request, backend, config, mask, need_weights):
    seed = seed_of(request)
    torch.manual_seed(seed)
    options = CONFIGS[config]
    embed, heads, L = 32, 4, 13
    S = 13 if mask == "causal_hint" else 17
    theirs = torch.nn.MultiheadAttention(embed, heads, **options).to(DEVICE).eval()
    ours = MultiheadAttention(embed, heads, backend=backend, **options).to(DEVICE).eval()
    ours.load_state_dict(theirs.state_dict())
    batch_first = options.get("batch_first", False)
    gen = torch.Generator().manual_seed(seed)

    def seq(length, dim):
        shape = (2, length, dim) if batch_first else (length, 2, dim)
        return torch.randn(*shape, generator=gen).to(DEVICE)

    query, key, value = seq(L, embed), seq(S, options.get("kdim", embed)), seq(S, options.get("vdim", embed))
    kwargs = dict(need_weights=need_weights, **_masks(mask, 2, heads, L, S + 0, gen))
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    out, weights = ours(*leaves, **kwargs)
    expected, expected_weights = theirs(query, key, value, **kwargs)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=2e-6, rtol=1e-4)
    else:
        assert weights is None
    # Gradients w.r.t. inputs and every parameter, against torch's module.
    grad_out = torch.randn_like(out)
    ours_grads = torch.autograd.grad(out, leaves + list(ours.parameters()), grad_out)
    torch_leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    expected = theirs(*torch_leaves, **kwargs)[0]
    theirs_grads = torch.autograd.grad(expected, torch_leaves + list(theirs.parameters()), grad_out)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_multihead_attention_unbatched_and_non_averaged_weights():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(16, 2).to(DEVICE).eval()
    ours = MultiheadAttention(16, 2).to(DEVICE).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(7, 16, device=DEVICE)
    out, w = ours(x, x, x, average_attn_weights=False)
    ref, ref_w = theirs(x, x, x, average_attn_weights=False)
    assert out.shape == (7, 16) and w.shape == (2, 7, 7)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=2e-6, rtol=1e-4)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        ours(x, x, x, is_causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_llama_attention_matches_eager_composition(request, backend, dtype):
    seed = seed_of(request)
    torch.manual_seed(seed)
    module = LlamaAttention(64, num_heads=4, num_kv_heads=2, rotary=fa.Rotary(base=500.0), backend=backend)
    module = module.to(DEVICE, dtype)
    x = torch.randn(2, 19, 64, device=DEVICE, dtype=dtype)
    padding = torch.ones(2, 1, 1, 19, dtype=torch.bool, device=DEVICE)
    padding[1, ..., 15:] = False  # second sequence right-padded
    positions = torch.arange(19, device=DEVICE).expand(2, 19) + torch.tensor([[0], [5]], device=DEVICE)
    out = module(x, positions=positions, attn_bias=padding)

    def eager(compute_dtype):
        q = module.q_proj(x).view(2, 19, 4, 16)
        k = module.k_proj(x).view(2, 19, 2, 16)
        v = module.v_proj(x).view(2, 19, 2, 16)
        attn = fa.reference.attention(q, k, v, causal=True, rotary=module.rotary, q_positions=positions,
                                      k_positions=positions, attn_bias=padding, compute_dtype=compute_dtype)
        return torch.nn.functional.linear(attn.reshape(2, 19, 64).to(compute_dtype),
                                          module.o_proj.weight.to(compute_dtype))

    with torch.no_grad():
        assert_within_naive_error("out", out, eager(torch.float64), eager(dtype), dtype)


def test_llama_attention_rejects_bad_head_grouping():
    with pytest.raises(ValueError, match="num_heads \\(6\\) must be a multiple of num_kv_heads \\(4\\)"):
        LlamaAttention(48, num_heads=6, num_kv_heads=4)


class TinyLlama(torch.nn.Module):
    """An embedding, one LlamaAttention layer and an LM head: enough to generate with a KV cache."""

    def __init__(self, backend, vocab=40, hidden=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.attn = LlamaAttention(hidden, num_heads=4, num_kv_heads=2, rotary=fa.Rotary(base=500.0), backend=backend)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens, cache=None):
        x = self.embed(tokens)
        return self.head(x + self.attn(x, cache=cache))


@pytest.mark.parametrize("backend", ["triton", "torch"])  # fp32: the cuda backend is fp16/bf16 only
@pytest.mark.parametrize("page_size", [None, 16])
def test_llama_attention_generates_with_a_kv_cache_as_without(backend, page_size):
    """Greedy generation through KVCache (prefill of left-padded prompts, then one token per step)
    gives the tokens of recomputing each prompt's whole sequence without a cache."""
    torch.manual_seed(0)
    model = TinyLlama(backend).to(DEVICE)
    prompts, steps, pad = [[3, 14, 15, 9, 2], [5, 35], [7, 1, 8]], 6, 39
    with torch.no_grad():
        model.embed.weight[pad] *= 30  # loud padding: attending it would change the tokens
        alone = []
        for prompt in prompts:
            tokens = torch.tensor([prompt], device=DEVICE)
            for _ in range(steps):
                tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
            alone.append(tokens[0, len(prompt):].tolist())
        width = max(map(len, prompts))
        step_input = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=DEVICE)
        leftpad = torch.tensor([width - len(p) for p in prompts], dtype=torch.int32, device=DEVICE)
        cache = KVCache(len(prompts), 32, 2, 16, page_size=page_size, leftpad=leftpad, device=DEVICE)
        generated = []
        for _ in range(steps):
            step_input = model(step_input, cache=cache)[:, -1].argmax(-1, keepdim=True)
            generated.append(step_input)
    assert torch.cat(generated, dim=1).tolist() == alone
    assert cache.seqlens.tolist() == [width + steps - 1] * len(prompts)


def test_llama_attention_with_a_cache_takes_no_positions():
    module = LlamaAttention(32, num_heads=2).to(DEVICE)
    cache = KVCache(1, 8, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="pass neither positions nor attn_bias"):
        module(torch.zeros(1, 2, 32, device=DEVICE), positions=3, cache=cache)


def test_a_cache_that_does_not_fit_the_layer_is_named():
    module = LlamaAttention(32, num_heads=2).to(DEVICE)
    x = torch.zeros(1, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match=r"dtype=torch.float16 \(needs torch.float32\)"):
        module(x, cache=KVCache(1, 8, 2, 16, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match=r"batch=3 \(needs 1\), num_kv_heads=1 \(needs 2\)"):
        module(x, cache=KVCache(3, 8, 1, 16, device=DEVICE))
    with pytest.raises(TypeError, match="cache must be a flashattn_py.modules.KVCache"):
        module(x, cache=(torch.zeros(1, 8, 2, 16), torch.zeros(1, 8, 2, 16)))


def test_a_training_step_through_a_kv_cache_fails_loudly():
    """Generation through the cache has no backward: without torch.no_grad the output still joins the
    graph, so backward raises instead of training o_proj alone."""
    module = LlamaAttention(32, num_heads=2).to(DEVICE)
    out = module(torch.randn(1, 3, 32, device=DEVICE), cache=KVCache(1, 8, 2, 16, device=DEVICE))
    assert out.requires_grad
    with pytest.raises(NotImplementedError, match="flash_attn_with_kvcache is inference-only"):
        out.sum().backward()
