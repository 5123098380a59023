"""Helpers of the transformers-integration tests: the same tiny random model under attn_implementation
"eager" and ours, compared on outputs and every parameter gradient, with padded batches."""
import contextlib
import copy

import torch

from flashattn_py.integrations import transformers as fa_transformers

fa_transformers.register()


def twin_models(make, config):
    """The same randomly initialised weights under "eager" and ours. Each model gets its own copy of the
    config: transformers records attn_implementation on the config, which the model reads at every call."""
    torch.manual_seed(0)
    eager = make(copy.deepcopy(config), "eager").eval()
    ours = make(copy.deepcopy(config), fa_transformers.NAME).eval()
    assert eager.config._attn_implementation == "eager" and ours.config._attn_implementation == fa_transformers.NAME
    ours.load_state_dict(eager.state_dict())
    return eager, ours


def _outputs_and_grads(model, inputs, pick, keep):
    model.zero_grad()
    out = pick(model(**inputs))
    # Padded positions' outputs are not compared (eager gives them arbitrary values); loss over real tokens.
    (out[keep].float() ** 2).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_match(eager, ours, inputs, pick, atol, keep=None):
    """Outputs and parameter gradients of ours equal eager's. keep: the output positions compared and in
    the loss (bool, the output's leading dims); default the real tokens of inputs["attention_mask"].
    Returns the names of the parameters whose gradients were compared."""
    keep = inputs["attention_mask"].bool() if keep is None else keep
    out_e, grads_e = _outputs_and_grads(eager, inputs, pick, keep)
    out_o, grads_o = _outputs_and_grads(ours, inputs, pick, keep)
    torch.testing.assert_close(out_o[keep], out_e[keep], atol=atol, rtol=1e-4)
    assert grads_e.keys() == grads_o.keys() and grads_e
    for name, grad in grads_e.items():
        # fp32 sums in another order: atol relative to the tensor's scale (a masking bug is an O(1) error).
        torch.testing.assert_close(grads_o[name], grad, atol=atol * max(1.0, grad.abs().max().item()), rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")
    return set(grads_e)


def padded_batch(vocab, lengths, seqlen, seed=1):
    """Random input_ids (len(lengths), seqlen) with a right-padding attention_mask of those lengths."""
    torch.manual_seed(seed)
    input_ids = torch.randint(0, vocab, (len(lengths), seqlen))
    attention_mask = (torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]).long()
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def left_padded_prompts(vocab, lengths, seed=3):
    """Prompts for generate: random ids (never the pad id 0) with a left-padding attention_mask."""
    torch.manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(1, vocab, (len(lengths), width))
    attention_mask = (torch.arange(width)[None, :] >= width - torch.tensor(lengths)[:, None]).long()
    return dict(input_ids=input_ids, attention_mask=attention_mask)


@contextlib.contextmanager
def registered(backend):
    """attn_implementation="fa_py" runs on `backend` inside the block, on the default ("auto") after."""
    fa_transformers.register(backend)
    try:
        yield
    finally:
        fa_transformers.register()
