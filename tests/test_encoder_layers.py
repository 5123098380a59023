"""Our MultiheadAttention inside torch's nn.TransformerEncoderLayer / nn.TransformerEncoder: in eval
mode with batch_first=True torch would run its fused fast path (torch._transformer_encoder_layer_fwd,
reading self_attn's weights) and, with a right-padded src_key_padding_mask, nested tensors. These
tests count the calls into our attention, check that torch's own module really takes its fast path on
the same input (so the count means something), and compare outputs and gradients with torch's
module holding the same weights."""
import pytest
import torch
from torch import nn

from flashattn_py import modules, ops
from flashattn_py.modules import MultiheadAttention, TransformerEncoderLayer

from tolerance import DEVICE, seed_of

EMBED, HEADS, FF = 32, 4, 48
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")


@pytest.fixture
def counts(monkeypatch):
    """Calls into our attention (every entry point reaches the forward op), into the packed kernels
    (nested inputs) and into torch's fused encoder layer."""
    seen = dict(ours=0, packed=0, torch_fused=0)

    def counting(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            seen[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    counting(ops, "attention_forward", "ours")
    counting(modules, "flash_attn_varlen_func", "packed")
    counting(torch, "_transformer_encoder_layer_fwd", "torch_fused")
    return seen


def _torch_and_ours(construction: str, backend: str, dropout: float = 0.0):
    """torch's layer, and one running our MultiheadAttention with the same weights: our
    TransformerEncoderLayer, or torch's layer with self_attn replaced by ours."""
    theirs = nn.TransformerEncoderLayer(EMBED, HEADS, FF, dropout=dropout, batch_first=True).to(DEVICE)
    if construction == "subclass":
        ours = TransformerEncoderLayer(EMBED, HEADS, FF, dropout=dropout, batch_first=True, backend=backend).to(DEVICE)
        ours.load_state_dict(theirs.state_dict())
    else:
        ours = nn.TransformerEncoderLayer(EMBED, HEADS, FF, dropout=dropout, batch_first=True).to(DEVICE)
        ours.load_state_dict(theirs.state_dict())
        ours.self_attn = MultiheadAttention(EMBED, HEADS, dropout=dropout, batch_first=True, backend=backend).to(DEVICE)
        ours.self_attn.load_state_dict(theirs.self_attn.state_dict())
    return theirs, ours


def _padding(kind: str, batch: int, seqlen: int, gen) -> torch.Tensor | None:
    """src_key_padding_mask (True = padding), every sequence keeping at least one token. "right":
    padding at the end (nn.TransformerEncoder turns such a batch into a nested tensor); "left": at the
    start (it does not: the layers get the mask)."""
    if kind == "none":
        return None
    lengths = torch.randint(1, seqlen + 1, (batch,), generator=gen)
    lengths[0] = seqlen - 1  # at least one padded row
    padded = torch.arange(seqlen)[None, :] >= lengths[:, None]
    return (padded if kind == "right" else padded.flip(1)).to(DEVICE)


GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
CASES = [("layer", "subclass", p, "auto") for p in ("none", "right", "left")]
CASES += [("layer", "swapped", p, "auto") for p in ("none", "left")]
CASES += [("encoder", c, p, "auto") for c in ("subclass", "swapped") for p in ("none", "right", "left")]
CASES += [("encoder", "subclass", "right", "triton")]  # packed kernels of the nested path, on Triton


@pytest.mark.parametrize("grad_mode", list(GRAD_MODES))
@pytest.mark.parametrize("container,construction,padding,backend", CASES)
def test_inference_runs_our_attention_where_torch_takes_its_fast_path(request, counts, container, construction,
                                                                     padding, backend, grad_mode):
    seed = seed_of(request)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    theirs, ours = _torch_and_ours(construction, backend)
    layers = 1
    if container == "encoder":
        layers = 2
        theirs, ours = nn.TransformerEncoder(theirs, layers), nn.TransformerEncoder(ours, layers)
        for a, b in zip(ours.layers, theirs.layers):  # clones start equal; make the two layers differ
            b.linear1.weight.data += 0.1 * torch.randn(b.linear1.weight.shape, generator=gen).to(DEVICE)
            a.load_state_dict(b.state_dict())
    theirs.eval(), ours.eval()
    src = torch.randn(3, 11, EMBED, generator=gen).to(DEVICE)
    kwargs = dict(src_key_padding_mask=_padding(padding, 3, 11, gen))
    with GRAD_MODES[grad_mode]():
        expected = theirs(src, **kwargs)
        assert counts == dict(ours=0, packed=0, torch_fused=layers), "torch's reference left its fast path"
        out = ours(src, **kwargs)
    assert counts["ours"] == layers and counts["torch_fused"] == layers
    # nn.TransformerEncoder nests a right-padded batch: our module gets it and runs the packed kernels.
    assert counts["packed"] == (layers if container == "encoder" and padding == "right" else 0)
    keep = torch.ones(3, 11, 1, dtype=torch.bool, device=DEVICE)
    if padding != "none":
        keep = ~kwargs["src_key_padding_mask"][..., None]
    torch.testing.assert_close(out * keep, expected * keep, atol=1e-4, rtol=1e-4)
    if container == "encoder" and padding == "right":  # both return zeros past each nested sequence
        assert torch.equal(out * ~keep, torch.zeros_like(out)) and torch.equal(expected * ~keep, out * ~keep)


@pytest.mark.parametrize("construction", ["subclass", "swapped"])
@pytest.mark.parametrize("padding", ["none", "right"])
def test_training_gradients_match_torch(request, counts, construction, padding):
    seed = seed_of(request)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    theirs, ours = _torch_and_ours(construction, "auto")
    theirs, ours = nn.TransformerEncoder(theirs, 2), nn.TransformerEncoder(ours, 2)
    ours.load_state_dict(theirs.state_dict())
    src = torch.randn(3, 9, EMBED, generator=gen).to(DEVICE)
    kwargs = dict(src_key_padding_mask=_padding(padding, 3, 9, gen))
    leaves = [src.clone().requires_grad_() for _ in range(2)]
    out, expected = ours.train()(leaves[0], **kwargs), theirs.train()(leaves[1], **kwargs)
    assert counts["ours"] == 2 and counts["torch_fused"] == 0
    keep = torch.ones(3, 9, 1, device=DEVICE) if padding == "none" else ~kwargs["src_key_padding_mask"][..., None]
    torch.testing.assert_close(out * keep, expected * keep, atol=1e-4, rtol=1e-4)
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE) * keep  # padded rows: torch's are arbitrary
    names = [name for name, _ in theirs.named_parameters()]
    assert names == [name for name, _ in ours.named_parameters()]
    ours_grads = torch.autograd.grad(out, [leaves[0], *ours.parameters()], grad_out)
    theirs_grads = torch.autograd.grad(expected, [leaves[1], *theirs.parameters()], grad_out)
    for name, a, b in zip(["src"] + names, ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_our_layer_is_torch_layer_with_the_same_initialization():
    torch.manual_seed(5)
    ours = TransformerEncoderLayer(EMBED, HEADS, FF, batch_first=True, norm_first=True, bias=False, backend="torch")
    after_ours = torch.rand(3)
    torch.manual_seed(5)
    theirs = nn.TransformerEncoderLayer(EMBED, HEADS, FF, batch_first=True, norm_first=True, bias=False)
    assert torch.equal(after_ours, torch.rand(3)), "building ours drew more from the RNG than torch's"
    assert isinstance(ours.self_attn, MultiheadAttention) and ours.self_attn.backend == "torch"
    assert ours.self_attn.in_proj_bias is None and ours.self_attn.batch_first and ours.norm_first
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.device == b.device and torch.equal(a, b), name


def test_multihead_attention_fast_path_conditions_still_run_ours(request, counts):
    """nn.MultiheadAttention.forward has a fast path of its own (eval, no grad, batch_first,
    self-attention); ours overrides forward, so it runs our kernels there too."""
    torch.manual_seed(seed_of(request))
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE).eval()
    ours = MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 7, EMBED, device=DEVICE)
    with torch.no_grad():
        out, weights = ours(x, x, x)
        expected, expected_weights = theirs(x, x, x)
    assert counts["ours"] == 1
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(weights, expected_weights, atol=2e-6, rtol=1e-4)


def _nested(lengths, gen, layout=torch.strided, requires_grad=False):
    seqs = [torch.randn(n, EMBED, generator=gen).to(DEVICE).requires_grad_(requires_grad) for n in lengths]
    return seqs, torch.nested.as_nested_tensor(seqs, layout=layout)


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=str)
@pytest.mark.parametrize("average", [True, False])
def test_nested_inputs_match_torch_fast_path(request, counts, layout, average):
    """Outputs and padded weights of torch's own module on nested inputs (which only its fast path
    takes; it takes only strided ones), an empty sequence included."""
    seed = seed_of(request)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE).eval()
    ours = MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE).eval()
    ours.load_state_dict(theirs.state_dict())
    seqs, x = _nested([6, 3, 0, 5], gen, layout)
    with torch.no_grad():
        out, weights = ours(x, x, x, average_attn_weights=average)
        x = torch.nested.as_nested_tensor(seqs)
        expected, expected_weights = theirs(x, x, x, average_attn_weights=average)
    assert counts["packed"] == 1 and out.is_nested and out.layout == layout
    for a, b in zip(out.unbind(), expected.unbind()):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(weights, expected_weights, atol=2e-6, rtol=1e-4)


def test_nested_cross_attention_and_gradients_match_torch_per_sequence(request):
    """torch's module refuses nested inputs outside its fast path (self-attention, no grad); ours
    takes cross-attention and trains on them: outputs and gradients are those of torch's module run on
    each sequence alone, as a dense batch of one."""
    seed = seed_of(request)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    theirs = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE)
    ours = MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE)
    ours.load_state_dict(theirs.state_dict())
    queries, x = _nested([7, 2, 5], gen, requires_grad=True)
    memories, m = _nested([4, 6, 1], gen, requires_grad=True)
    out = ours(x, m, m, need_weights=False)[0].unbind()
    grad_outs = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in out]
    grads = torch.autograd.grad(out, queries + memories + list(ours.parameters()), grad_outs)
    leaves = [t.detach().clone().requires_grad_() for t in queries + memories]
    expected = [theirs(q[None], kv[None], kv[None], need_weights=False)[0][0] for q, kv in zip(leaves[:3], leaves[3:])]
    expected_grads = torch.autograd.grad(expected, leaves + list(theirs.parameters()), grad_outs)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_nested_inputs_refuse_what_they_cannot_take():
    module = MultiheadAttention(EMBED, HEADS, batch_first=True).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    _, x = _nested([3, 2], gen)
    with pytest.raises(ValueError, match="refused here: key_padding_mask"):
        module(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="value must be a nested tensor"):
        module(x, x, torch.zeros(2, 3, EMBED, device=DEVICE))
    with pytest.raises(ValueError, match="refused here: batch_first"):
        MultiheadAttention(EMBED, HEADS).to(DEVICE)(x, x, x)
    with pytest.raises(ValueError, match=r"as many sequences; got \[2, 3, 3\]"):
        module(x, *[_nested([3, 2, 4], gen)[1]] * 2)
