"""attn_implementation="fa_py" in HuggingFace transformers: tiny randomly initialised models
(no download) give the logits and parameter gradients of attn_implementation="eager", with padding."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

from flashattn_py.integrations import transformers as fa_transformers  # noqa: E402

from hf_twins import assert_match, left_padded_prompts, padded_batch, registered, twin_models  # noqa: E402


def test_llama_causal_lm_with_right_padding_matches_eager(monkeypatch):
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    inputs = padded_batch(config.vocab_size, [12, 7, 1], 12)
    calls = []
    run = fa_transformers.api.run
    monkeypatch.setattr(fa_transformers.api, "run", lambda *a, **kw: calls.append(kw["attn_bias"]) or run(*a, **kw))
    assert_match(eager, ours, inputs, lambda o: o.logits, atol=2e-5)
    assert len(calls) == config.num_hidden_layers  # our kernels ran, each layer with transformers' padding mask
    assert all(mask is not None and mask.dtype == torch.bool for mask in calls)


def test_llama_without_padding_uses_is_causal_and_matches_eager():
    # No padding: transformers passes no mask and relies on is_causal.
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    inputs = padded_batch(config.vocab_size, [10, 10], 10)
    assert_match(eager, ours, inputs, lambda o: o.logits, atol=2e-5)


def test_bert_encoder_with_padding_matches_eager():
    config = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModel.from_config(config, attn_implementation=impl,
                                                                add_pooling_layer=False), config)
    inputs = padded_batch(config.vocab_size, [9, 4, 6], 9)
    # token_type_embeddings' gradient sums LayerNorm gradients over every token and nearly cancels (|g| <= 3e-5):
    # torch's own "sdpa" differs from "eager" there by 1.7e-5, ours by 2.3e-5.
    assert_match(eager, ours, inputs, lambda o: o.last_hidden_state, atol=5e-5)


def test_masking_is_not_lost():
    """Guard against the silent failure mode: without the mask registration, padding would be ignored and
    the first sequence's outputs would change with what sits in the padded positions."""
    config = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation=fa_transformers.NAME,
                                               add_pooling_layer=False).eval()
    inputs = padded_batch(config.vocab_size, [5], 9)
    other = dict(inputs, input_ids=inputs["input_ids"].clone())
    other["input_ids"][:, 5:] = (other["input_ids"][:, 5:] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = model(**inputs).last_hidden_state, model(**other).last_hidden_state
    torch.testing.assert_close(a[:, :5], b[:, :5])


def test_llama_compiles_fullgraph_with_our_attention():
    """torch.compile(fullgraph=True) of a model using attn_implementation="fa_py": no graph break (the
    attention is the flashattn_py custom op), same logits as eager."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                                          attn_implementation=fa_transformers.NAME)
    inputs = padded_batch(config.vocab_size, [12, 7], 12)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits = compiled(**inputs).logits
    logits[inputs["attention_mask"].bool()].sum().backward()
    torch.testing.assert_close(logits, model(**inputs).logits)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["mistral_sliding_window", "gemma2_softcap"])
def test_sliding_window_and_softcap_models_match_eager(family):
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if family == "mistral_sliding_window":
        config = transformers.MistralConfig(**common, sliding_window=5)
    else:  # sliding and global layers, attention logit softcapping passed as softcap=
        # Large weights so that scores reach the cap (at the default init they are ~1e-3, where tanh is linear).
        config = transformers.Gemma2Config(**common, head_dim=16, sliding_window=5, attn_logit_softcapping=1.0,
                                           initializer_range=0.5)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    inputs = padded_batch(config.vocab_size, [14, 9], 14)
    assert_match(eager, ours, inputs, lambda o: o.logits, atol=2e-5)


@pytest.mark.parametrize("family", ["llama", "mistral_sliding_window"])
@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["varlen_kwargs", "position_ids_only"])
def test_padding_free_packed_batches_match_each_sequence_alone(monkeypatch, family, flash_kwargs):
    """DataCollatorWithFlattening packs sequences into one row. With its flash kwargs our varlen kernels
    run (no mask read); with position_ids alone transformers' block-diagonal mask is applied. Either
    way each sequence's logits and the parameter gradients are eager's on that sequence alone."""
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    config = (transformers.LlamaConfig(**common) if family == "llama"
              else transformers.MistralConfig(**common, sliding_window=4))
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    torch.manual_seed(2)
    sequences = [torch.randint(0, config.vocab_size, (n,)).tolist() for n in (9, 1, 14, 6)]
    collate = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    packed = collate([{"input_ids": ids} for ids in sequences])
    packed.pop("labels")
    packed["use_cache"] = False  # a training step: transformers looks for packing only without a cache
    calls = []
    varlen = fa_transformers.flash_attn_varlen_func
    monkeypatch.setattr(fa_transformers, "flash_attn_varlen_func", lambda *a, **kw: calls.append(1) or varlen(*a, **kw))

    def loss_and_grads(model, batches):
        model.zero_grad()
        logits = torch.cat([model(**batch).logits[0] for batch in batches])
        (logits ** 2).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    alone = [dict(input_ids=torch.tensor([ids])) for ids in sequences]
    logits_e, grads_e = loss_and_grads(eager, alone)
    logits_o, grads_o = loss_and_grads(ours, [packed])
    assert len(calls) == (config.num_hidden_layers if flash_kwargs else 0)
    torch.testing.assert_close(logits_o, logits_e, atol=2e-5, rtol=1e-4)
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_o[name], grad, atol=2e-5 * max(1.0, grad.abs().max().item()), rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_generate_with_left_padding_gives_eager_tokens(backend):
    """model.generate through our attention (prefill with transformers' padding mask, then one-query
    steps against its KV cache: the decoding-length tiles, split-K on a GPU) gives eager's tokens."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    eager, ours = twin_models(
        lambda config, impl: transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl), config)
    generate = dict(left_padded_prompts(config.vocab_size, [9, 4]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    with registered(backend):
        tokens = ours.generate(**generate)
    assert torch.equal(tokens, eager.generate(**generate))
