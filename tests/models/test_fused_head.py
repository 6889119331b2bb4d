"""The fused, chunked output head (posttrain.models.fused_head): the log-probs, statistics and gradients of the
unfused path in every layout, without any (tokens, vocabulary) tensor in forward or backward."""

import pytest
import torch

from posttrain.data.preference import build_rows
from posttrain.kit import build_tiny_model
from posttrain.models.fused_head import STATS, chunk_tokens, fused_head_logps, fused_head_supported
from posttrain.trainers.logprobs import completion_logps, token_logps


def reference(hidden, weight, bias, targets, temperature):
    """log softmax(z / T) at the targets and the statistics, from whole float64 logits (the definition)."""
    z = (hidden @ weight.t() + (bias if bias is not None else 0)) / temperature
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    return logp.gather(-1, targets[:, None]).squeeze(-1), {
        "entropy": -(p * logp).sum(-1), "mean_logit": z.mean(-1), "top1": (z.argmax(-1) == targets).double(),
        "log_sum_sq_probs": torch.logsumexp(2 * logp, -1)}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("vocab_block", [None, 64])  # 64: the backward's tiles split the vocabulary (300) in 5
def test_log_probs_statistics_and_gradients_are_the_definition(temperature, with_bias, chunk, vocab_block,
                                                               monkeypatch):
    if vocab_block:
        monkeypatch.setattr("posttrain.models.fused_head.VOCAB_BLOCK", vocab_block)
    gen = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 300
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, generator=gen, dtype=torch.float64)
    logps, stats = fused_head_logps(hidden, weight, bias, targets, temperature=temperature, stats=STATS,
                                    chunk_size=chunk)
    grads = torch.autograd.grad((logps.double() * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))
    ref, ref_stats = reference(hidden, weight, bias, targets, temperature)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))
    torch.testing.assert_close(logps.double(), ref, rtol=1e-5, atol=1e-5)  # float32 inside
    for name in STATS:
        torch.testing.assert_close(stats[name].double(), ref_stats[name], rtol=1e-5, atol=1e-4)
        assert not stats[name].requires_grad
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_no_tensor_of_tokens_times_vocabulary_is_saved_or_allocated():
    """What backward keeps is the inputs and one float a token; the largest allocation is one chunk's logits."""
    n, h, v, chunk = 64, 8, 4096, 16
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logps, _ = fused_head_logps(hidden, weight, None, targets, stats=("entropy",), chunk_size=chunk)
        logps.sum().backward()
    assert max(saved) == v * h  # the weight itself; nothing of size n * v
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest <= 4 * max(chunk * v, v * h) * 1.01  # a chunk's logits, or the weight's gradient
    assert 4 * n * v > 3 * largest  # the whole logits, four times a chunk's, would have been the largest


@pytest.mark.parametrize("vocab", [20_000, 80_000])
def test_peak_allocation_does_not_grow_with_the_vocabulary_at_fixed_tokens(vocab):
    """The logits of one chunk stay within CHUNK_BYTES (64 MiB): the chunk shrinks as the vocabulary grows. At 80k
    the whole (512, 80k) float32 logits would be 164 MB."""
    from torch.profiler import ProfilerActivity, profile

    from posttrain.models.fused_head import CHUNK_BYTES

    n, h = 512, 8
    hidden, weight = torch.randn(n, h, requires_grad=True), torch.randn(vocab, h)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fused_head_logps(hidden, weight, None, torch.randint(0, vocab, (n,)))[0].sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest <= 4 * min(n, chunk_tokens(vocab)) * vocab * 1.01 <= CHUNK_BYTES * 1.01
    if vocab == 80_000:  # (at 20k the 512 tokens fit in one chunk)
        assert largest < 4 * n * vocab / 2


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_divergence_of_two_heads_is_the_definition_with_its_gradients(beta):
    """GKD's generalized JSD between a student head and a frozen teacher head, chunk by chunk and recomputed in
    backward: the values and the student's gradients of whole float64 logits."""
    from posttrain.losses.distill import generalized_jsd_loss
    from posttrain.models.fused_head import fused_head_divergence

    gen = torch.Generator().manual_seed(0)
    n, h, ht, v = 23, 12, 20, 257
    hs = torch.randn(n, h, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(v, h, generator=gen, dtype=torch.float64, requires_grad=True)
    hidden_t, wt = torch.randn(n, ht, generator=gen, dtype=torch.float64), torch.randn(v, ht, generator=gen, dtype=torch.float64)
    upstream = torch.randn(n, generator=gen, dtype=torch.float64)

    def jsd(a, b):
        return generalized_jsd_loss(a, b, beta=beta, reduction="none")

    out = fused_head_divergence(hs, ws, None, hidden_t, wt, None, jsd, chunk_size=4)
    grads = torch.autograd.grad((out * upstream).sum(), [hs, ws])
    ref = jsd(hs @ ws.t(), hidden_t @ wt.t())
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hs, ws])
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):  # float32 logits inside
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_divergence_under_bf16_autocast_casts_each_weight_once_a_call_and_matches_the_unfused_path():
    """Under bf16 autocast the heads' products are bf16, as the unfused path's: values and gradients agree to bf16
    rounding, and each head's weight is cast once in forward and once in backward, not once a chunk."""
    from posttrain.losses.distill import generalized_jsd_loss
    from posttrain.models.fused_head import fused_head_divergence

    gen = torch.Generator().manual_seed(0)
    n, h, v, chunk = 40, 16, 300, 4
    hs = torch.randn(n, h, generator=gen, requires_grad=True)
    ws = torch.randn(v, h, generator=gen, requires_grad=True)
    hidden_t, wt = torch.randn(n, h, generator=gen), torch.randn(v, h, generator=gen)
    upstream = torch.randn(n, generator=gen)

    def jsd(a, b):
        return generalized_jsd_loss(a, b, beta=0.5, reduction="none")

    casts = []
    real_to = torch.Tensor.to

    def counting_to(self, *a, **k):
        if self.shape == (v, h) and torch.bfloat16 in a:
            casts.append(1)
        return real_to(self, *a, **k)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.Tensor.to = counting_to
        try:
            out = fused_head_divergence(hs, ws, None, hidden_t, wt, None, jsd, chunk_size=chunk)
            grads = torch.autograd.grad((out * upstream).sum(), [hs, ws])
        finally:
            torch.Tensor.to = real_to
        ref = jsd(torch.nn.functional.linear(hs, ws).float(), torch.nn.functional.linear(hidden_t, wt).float())
        ref_grads = torch.autograd.grad((ref * upstream).sum(), [hs, ws])
    assert len(casts) == 4  # student and teacher heads, forward and backward (n / chunk = 10 chunks)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), rtol=5e-2, atol=5e-3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_model("qwen2", size="tiny", seed=0).float()


def layouts():
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 1000, (int(n),), generator=gen).tolist() for n in (5, 3, 9, 4, 6)]
    completions = [torch.randint(3, 1000, (int(n),), generator=gen).tolist() for n in (7, 2, 4, 11, 5)]
    return {"padded": build_rows(prompts, completions, pad_token_id=0),
            "padding-free": build_rows(prompts, completions, pad_token_id=0, padding_free=True),
            "bin-packed": build_rows(prompts, completions, pad_token_id=0, padding_free=True, flatten=False)}


@pytest.mark.parametrize("layout", ["padded", "padding-free", "bin-packed"])
def test_completion_logps_equal_the_unfused_path_in_every_layout(model, layout):
    assert fused_head_supported(model)
    rows = layouts()[layout]
    results = {}
    for fused in (True, False):
        model.zero_grad()
        out = completion_logps(model, rows, with_log_sum_sq_probs=True, with_token_stats=True, fused=fused)
        (out.sum * torch.arange(1, out.sum.numel() + 1)).sum().backward()
        results[fused] = out, {n: p.grad.clone() for n, p in model.named_parameters()}
    (a, ga), (b, gb) = results[True], results[False]
    for field in ("sum", "count", "mean_logits", "token_logps", "token_seq", "log_sum_sq_probs", "token_entropy"):
        torch.testing.assert_close(getattr(a, field).detach(), getattr(b, field).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(a.token_top1, b.token_top1)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logps_at_a_temperature_equal_the_unfused_path(model, temperature):
    rows = layouts()["padded"]
    a = token_logps(model, rows, temperature=temperature, with_entropy=True, fused=True)
    b = token_logps(model, rows, temperature=temperature, with_entropy=True, fused=False)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_the_unfused_path_to_bf16_rounding(model):
    rows = layouts()["padded"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = token_logps(model, rows, fused=True)[0]
        b = token_logps(model, rows, fused=False)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=2e-2)


def test_lora_on_the_head_and_logit_softcapping_keep_the_unfused_path(model):
    import copy

    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert fused_head_supported(wrapped)  # LoRA elsewhere: the head is still a plain Linear
    on_head = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["lm_head"]))
    assert not fused_head_supported(on_head)
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    assert not fused_head_supported(capped)


def test_the_head_is_restored_after_the_block(model):
    from posttrain.models.fused_head import fused_head
    from posttrain.models.heads import output_head

    head = output_head(model)
    rows = layouts()["padded"]
    with fused_head(model, rows["completion_mask"].bool(), torch.zeros(int(rows["completion_mask"].sum()),
                                                                       dtype=torch.long)):
        assert "forward" in vars(head)
    assert "forward" not in vars(head)  # the decode loop checks for instance-level forwards


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_fused_head_on_cuda_equals_the_unfused_path(model, dtype):
    import copy

    cuda = copy.deepcopy(model).cuda()
    rows = {k: v.cuda() for k, v in layouts()["padded"].items()}
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        a = completion_logps(cuda, rows, fused=True, with_token_stats=True)
        b = completion_logps(cuda, rows, fused=False, with_token_stats=True)
    tol = 1e-5 if dtype is None else 3e-2
    torch.testing.assert_close(a.token_logps, b.token_logps, rtol=0, atol=tol)
    torch.testing.assert_close(a.token_entropy, b.token_entropy, rtol=0, atol=tol * 10)
