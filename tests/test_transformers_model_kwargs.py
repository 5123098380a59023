"""attn_implementation="fa_py" with the model-specific keywords transformers passes to the attention
function: GPT-OSS's learned sinks (s_aux=), T5's learned relative position bias (position_bias=), and
the refusal of any keyword we do not implement. Tiny random models (no download), compared with
attn_implementation="eager": outputs, every parameter's gradient, greedy generation."""
import dataclasses
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

from flashattn_py.integrations import transformers as fa_transformers  # noqa: E402

from hf_twins import assert_match, left_padded_prompts, padded_batch, registered, twin_models  # noqa: E402

# The Triton kernels run in Triton's interpreter on CPU: their cases are kept to one small batch each.
BACKENDS = ["auto", "triton"]


def _gpt_oss_twins():
    """Two layers, one sliding-window (4 keys) and one full; 4 experts, 2 per token; sinks drawn at
    scale 1 (the init's 0.02 would leave each near 0, still visible but weakly)."""
    config = transformers.GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, sliding_window=4, max_position_embeddings=64)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    torch.manual_seed(4)
    with torch.no_grad():
        for layer in eager.model.layers:
            layer.self_attn.sinks.copy_(torch.randn_like(layer.self_attn.sinks))
    ours.load_state_dict(eager.state_dict())
    return config, eager, ours


@pytest.mark.parametrize("backend,lengths", [("auto", [10, 6]), ("auto", [10, 10]), ("triton", [8, 5])],
                         ids=["auto-padded", "auto-unpadded", "triton-padded"])
def test_gpt_oss_sinks_logits_and_gradients_match_eager(monkeypatch, backend, lengths):
    """GPT-OSS passes its sinks as s_aux=: ignoring them moves these logits by ~0.3. Unpadded, no mask
    comes and is_causal + the sliding window apply; padded, transformers' mask holds them."""
    config, eager, ours = _gpt_oss_twins()
    inputs = padded_batch(config.vocab_size, lengths, max(lengths))
    sinks_seen = []
    run = fa_transformers.api.run
    monkeypatch.setattr(fa_transformers.api, "run", lambda *a, **kw: sinks_seen.append(kw["sinks"]) or run(*a, **kw))
    with registered(backend):
        compared = assert_match(eager, ours, inputs, lambda o: o.logits, atol=2e-5)
    assert [id(s) for s in sinks_seen] == [id(layer.self_attn.sinks) for layer in ours.model.layers]
    assert {f"model.layers.{i}.self_attn.sinks" for i in range(config.num_hidden_layers)} <= compared


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_oss_generate_with_left_padding_gives_eager_tokens(backend):
    """Prompts longer than the sliding window; decoding steps against the sliding and full caches."""
    config, eager, ours = _gpt_oss_twins()
    generate = dict(left_padded_prompts(config.vocab_size, [9, 4] if backend == "auto" else [6, 3]),
                    max_new_tokens=6 if backend == "auto" else 3, do_sample=False, pad_token_id=0)
    with registered(backend):
        tokens, step_logits = _generate(ours, generate)
    _assert_same_generation(tokens, step_logits, *_generate(eager, generate))


def test_gpt_oss_packed_sequences_match_each_sequence_alone(monkeypatch):
    """DataCollatorWithFlattening(return_flash_attn_kwargs=True): the sinks go to our varlen kernels
    (learnable_sink=), the sliding window restarts in each sequence; logits and every parameter's
    gradient (the sinks' included) are eager's on each sequence alone."""
    config, eager, ours = _gpt_oss_twins()
    torch.manual_seed(2)
    sequences = [torch.randint(0, config.vocab_size, (n,)).tolist() for n in (9, 1, 6)]
    packed = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": ids} for ids in sequences])
    packed.pop("labels")
    packed["use_cache"] = False  # a training step: transformers looks for packing only without a cache
    sinks_seen = []
    varlen = fa_transformers.flash_attn_varlen_func
    monkeypatch.setattr(fa_transformers, "flash_attn_varlen_func",
                        lambda *a, **kw: sinks_seen.append(kw["learnable_sink"]) or varlen(*a, **kw))

    def logits_and_grads(model, batches):
        model.zero_grad()
        logits = torch.cat([model(**batch).logits[0] for batch in batches])
        (logits ** 2).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    logits_e, grads_e = logits_and_grads(eager, [dict(input_ids=torch.tensor([ids])) for ids in sequences])
    logits_o, grads_o = logits_and_grads(ours, [packed])
    assert [id(s) for s in sinks_seen] == [id(layer.self_attn.sinks) for layer in ours.model.layers]
    torch.testing.assert_close(logits_o, logits_e, atol=2e-5, rtol=1e-4)
    assert grads_o.keys() == grads_e.keys() and "model.layers.0.self_attn.sinks" in grads_e
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_o[name], grad, atol=2e-5 * max(1.0, grad.abs().max().item()), rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def _generate(model, generate):
    """Greedy tokens and each step's logits (batch, steps, vocab)."""
    out = model.generate(**generate, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def _assert_same_generation(tokens, step_logits, tokens_eager, step_logits_eager):
    """Eager's tokens, and every decoding step's logits: a tiny random model often repeats one token,
    which alone would hide a wrong decoding step."""
    assert torch.equal(tokens, tokens_eager)
    torch.testing.assert_close(step_logits, step_logits_eager, atol=2e-5, rtol=1e-4)


def _t5_twins():
    config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                   decoder_start_token_id=0, dropout_rate=0.0)
    eager, ours = twin_models(
        lambda config, impl: transformers.T5ForConditionalGeneration._from_config(config, attn_implementation=impl),
        config)
    return config, eager, ours


@pytest.mark.parametrize("backend,encoder_lengths,decoder_lengths",
                         [("auto", [10, 6], [7, 4]), ("auto", [10, 10], [7, 7]), ("triton", [7, 4], [5, 3])],
                         ids=["auto-padded", "auto-unpadded", "triton-padded"])
def test_t5_position_bias_logits_and_gradients_match_eager(backend, encoder_lengths, decoder_lengths):
    """T5's learned relative position bias (computed by the first layer of each stack, reused by the
    others; zeros in cross-attention) is added to unscaled scores, the mask kept apart: encoder
    self-attention, causal decoder self-attention (no mask without padding), cross-attention. The
    relative_attention_bias tables get their gradients through our attn_bias gradient."""
    config, eager, ours = _t5_twins()
    encoder = padded_batch(config.vocab_size, encoder_lengths, max(encoder_lengths))
    decoder = padded_batch(config.vocab_size, decoder_lengths, max(decoder_lengths), seed=2)
    inputs = dict(encoder, decoder_input_ids=decoder["input_ids"], decoder_attention_mask=decoder["attention_mask"])
    with registered(backend):
        compared = assert_match(eager, ours, inputs, lambda o: o.logits, atol=2e-5,
                                keep=decoder["attention_mask"].bool())
    assert {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"} <= compared


@pytest.mark.parametrize("backend", BACKENDS)
def test_t5_generate_gives_eager_tokens(backend):
    """Encoder-decoder generation: the decoder's one-query steps get a (1, heads, 1, keys) bias for the
    position past its cache, and cross-attention reuses the cached encoder keys."""
    config, eager, ours = _t5_twins()
    lengths, new_tokens = ([9, 5], 6) if backend == "auto" else ([5, 3], 3)
    generate = dict(padded_batch(config.vocab_size, lengths, max(lengths), seed=3), max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False)
    with registered(backend):
        tokens, step_logits = _generate(ours, generate)
    assert tokens.shape[1] == new_tokens + 1  # the decoder start token, then the new ones (eos suppressed)
    _assert_same_generation(tokens, step_logits, *_generate(eager, generate))


class SparseIndexAttention(torch.nn.Module):
    """Stands for a model whose attention passes a keyword we do not implement (DeepSeek-V3.2's indices)."""
    is_causal = True


def _qkv(head_dim=8, value_head_dim=8):
    torch.manual_seed(5)
    return torch.randn(1, 2, 5, head_dim), torch.randn(1, 2, 5, head_dim), torch.randn(1, 2, 5, value_head_dim)


def test_an_unknown_keyword_is_refused_naming_it_and_the_model():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"SparseIndexAttention passed 'indices'.*attn_implementation='sdpa'"):
        fa_transformers.attention_forward(SparseIndexAttention(), q, k, v, None, indices=torch.zeros(1, 5, 2))
    # None is how transformers passes an absent feature; the harmless keywords are accepted.
    out, _ = fa_transformers.attention_forward(SparseIndexAttention(), q, k, v, None, indices=None,
                                               position_ids=torch.arange(5)[None], use_cache=True, seq_idx=None)
    reference = torch.softmax((q @ k.transpose(-1, -2)) / 8 ** 0.5 + torch.ones(5, 5).tril().log(), dim=-1) @ v
    torch.testing.assert_close(out, reference.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("deterministic", (True, False))
def test_deterministic_keyword_reaches_the_backward(monkeypatch, deterministic):
    """ModernBERT passes its FlashAttention `deterministic` flag: it picks the Triton backward's schedule."""
    from flashattn_py.triton_kernels import attention_bwd

    seen, backward = [], attention_bwd.attention_backward
    from flashattn_py.backends import triton_backend

    spy = lambda *args, **kwargs: seen.append(args[7].deterministic) or backward(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(triton_backend, "BACKEND", dataclasses.replace(triton_backend.BACKEND, backward=spy))
    q, k, v = (t.requires_grad_() for t in _qkv())
    out, _ = fa_transformers.attention_forward(SparseIndexAttention(), q, k, v, None, deterministic=deterministic,
                                               backend="triton")
    out.sum().backward()
    assert seen == [deterministic]


def test_an_unknown_keyword_from_a_model_forward_is_refused():
    """Keywords given to a model's forward travel down to the attention function (TransformersKwargs)."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=fa_transformers.NAME)
    with pytest.raises(TypeError, match=r"LlamaAttention passed 'attention_chunk_size'"):
        model(**padded_batch(config.vocab_size, [6], 6), attention_chunk_size=torch.tensor(2))


def test_output_attentions_warns_once(monkeypatch):
    """No weights come back (the model's attentions are None), said once, not once per layer and call;
    the logits are unchanged."""
    monkeypatch.setattr(fa_transformers, "_warned", set())
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    inputs = padded_batch(config.vocab_size, [8, 5], 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            logits = [ours(**inputs, output_attentions=True).logits for _ in range(2)]
    ours_warnings = [w for w in caught if "fa_py" in str(w.message)]
    assert len(ours_warnings) == 1 and "output_attentions=True" in str(ours_warnings[0].message)
    with torch.no_grad():
        expected = eager(**inputs).logits
    keep = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[1][keep], expected[keep], atol=2e-5, rtol=1e-4)


def test_unsupported_head_dims_are_refused_naming_the_model():
    """Above 256 (checks.MAX_HEAD_DIM) at the first forward: transformers has no load-time hook for a
    registered attention function."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=264,
                                      max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=fa_transformers.NAME)
    with pytest.raises(ValueError, match=r"LlamaAttention has head_dim 264.*up to 256.*attn_implementation='sdpa'"):
        model(**padded_batch(config.vocab_size, [6], 6))
    q, k, v = _qkv(head_dim=16, value_head_dim=8)  # MLA-style value heads
    with pytest.raises(ValueError, match=r"SparseIndexAttention has value head_dim 8 != query head_dim 16"):
        fa_transformers.attention_forward(SparseIndexAttention(), q, k, v, None)
