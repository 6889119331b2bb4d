"""One gradient buffer for a tied embedding and head (posttrain/models/tied_gradient.py): the gradient is the one
autograd gives, the embedding's (V, H) tensor is never made, and gradient hooks see the whole sum once."""

import pytest
import torch

import posttrain.models.tied_gradient as tied_gradient
from posttrain.kit import build_tiny_model
from posttrain.trainers.logprobs import head_logps


@pytest.fixture(scope="module")
def model():
    m = build_tiny_model("qwen2", size="tiny", seed=0).float()
    assert m.lm_head.weight is m.get_input_embeddings().weight
    return m


def batch(pad_id: int):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 1000, (3, 12), generator=gen)
    ids[0, -4:] = pad_id  # padding (the embedding's padding_idx: its row gets no gradient)
    ids[1, 2] = ids[2, 5] = ids[0, 1]  # a token looked up several times
    positions = torch.ones_like(ids, dtype=torch.bool)
    positions[:, -1] = False
    return ids, positions, ids[:, 1:].reshape(-1)


def grads(model, routed: bool, monkeypatch, backward_passes: int = 1):
    with monkeypatch.context() as m:
        if not routed:
            m.setattr(tied_gradient, "_applies", lambda *a: False)
        model.zero_grad(set_to_none=True)
        ids, positions, targets = batch(model.get_input_embeddings().padding_idx)
        for i in range(backward_passes):
            logps, _ = head_logps(model, {"input_ids": ids}, positions, targets, fused=True)
            (logps * torch.linspace(-1, 2, logps.numel()) * (i + 1)).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backward_passes", [1, 2])
def test_the_gradient_is_autograds(model, monkeypatch, backward_passes):
    routed = grads(model, True, monkeypatch, backward_passes)
    plain = grads(model, False, monkeypatch, backward_passes)
    for name in plain:
        torch.testing.assert_close(routed[name], plain[name], rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    embedding = routed["model.embed_tokens.weight"]
    pad = model.get_input_embeddings().padding_idx
    assert embedding[pad].abs().sum() > 0  # the head's gradient of the pad row remains; the lookup adds none


def test_the_embeddings_vocabulary_sized_gradient_is_never_made(model, monkeypatch):
    """Count (V, H) float32 allocations in the backward: the head's buffer alone when routed; the embedding's
    second one without."""
    from torch.profiler import ProfilerActivity, profile

    v, h = model.get_input_embeddings().weight.shape
    counts = {}
    for routed in (True, False):
        with monkeypatch.context() as m:
            if not routed:
                m.setattr(tied_gradient, "_applies", lambda *a: False)
            model.zero_grad(set_to_none=True)
            ids, positions, targets = batch(0)
            logps, _ = head_logps(model, {"input_ids": ids}, positions, targets, fused=True)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                logps.sum().backward()
        counts[routed] = sum(1 for e in prof.events() if not e.cpu_children and e.cpu_memory_usage == 4 * v * h)
    assert counts[True] == counts[False] - 1, counts


def test_gradient_hooks_see_the_whole_sum_once(model, monkeypatch):
    plain = grads(model, False, monkeypatch)["model.embed_tokens.weight"]
    weight = model.lm_head.weight
    seen = []
    handle = weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))  # as DDP's reducer
    try:
        grads(model, True, monkeypatch)
    finally:
        handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], plain, rtol=1e-6, atol=1e-7)


def test_untied_frozen_or_no_grad_leave_the_weight_alone(model):
    untied = torch.nn.Embedding(10, 4)
    head = torch.nn.Parameter(torch.randn(10, 4))
    with tied_gradient.tied_gradient(head, untied) as weight:
        assert weight(head) is head
    frozen = torch.nn.Embedding(10, 4)
    frozen.weight.requires_grad_(False)
    with tied_gradient.tied_gradient(frozen.weight, frozen) as weight:
        assert weight(frozen.weight) is frozen.weight
    tied = torch.nn.Embedding(10, 4)
    with torch.no_grad(), tied_gradient.tied_gradient(tied.weight, tied) as weight:
        assert weight(tied.weight) is tied.weight
    with tied_gradient.tied_gradient(tied.weight, tied) as weight:
        assert weight(tied.weight) is not tied.weight


def test_lookups_the_head_does_not_follow_keep_their_own_gradient():
    """A second lookup in the forward finds no buffer left and returns its gradient as F.embedding would; a lookup
    with max_norm is not routed."""
    emb = torch.nn.Embedding(50, 6, padding_idx=-1)
    ids = torch.tensor([[1, 2, 49, 3], [3, 3, 7, 49]])

    def loss(routed):
        emb.zero_grad(set_to_none=True)
        if routed:
            with tied_gradient.tied_gradient(emb.weight, emb) as weight:
                x = emb(ids) + 0.5 * emb(ids.flip(-1))  # two lookups, one head
                out = (x.tanh() @ weight(emb.weight).t()).logsumexp(-1).sum()
        else:
            x = emb(ids) + 0.5 * emb(ids.flip(-1))
            out = (x.tanh() @ emb.weight.t()).logsumexp(-1).sum()
        out.backward()
        return emb.weight.grad.clone()

    torch.testing.assert_close(loss(True), loss(False), rtol=1e-6, atol=1e-7)
    assert loss(True)[49].abs().sum() > 0  # the head's part of the padding row (padding_idx=-1 is row 49)
