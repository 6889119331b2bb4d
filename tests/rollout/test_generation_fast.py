"""posttrain's own decode loop (posttrain.rollout.decode), the fast engine of generate() and the DecodeBackend of the
online trainers: the same tokens as model.generate, the sampler's log-probs against a teacher-forced reference, fallbacks to model.generate."""

import pytest
import torch

from posttrain.kit import build_tiny_model
from posttrain.rollout import generate
from posttrain.rollout import decode as fast_module
from posttrain.rollout.decode import fast_decode, fast_decode_plan, process_logits

PROMPTS = [[5 + i for i in range(12)], [40, 41, 42, 43, 44, 45, 46], [9, 10, 11]]  # left padding of 0, 5 and 9


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return build_tiny_model(request.param, size="tiny", seed=1)


def both(model, tokenizer, **kwargs):
    fast = generate(model, tokenizer, prompt_ids=PROMPTS, fast=True, **kwargs)
    reference = generate(model, tokenizer, prompt_ids=PROMPTS, fast=False, **kwargs)
    return fast, reference


def test_plan_covers_the_kit_models(model):
    plan, reason = fast_decode_plan(model, dict(max_new_tokens=4, do_sample=True, pad_token_id=0, eos_token_id=2))
    assert reason is None and plan.max_new_tokens == 4


def test_gradient_checkpointing_keeps_the_loop(tokenizer):
    """Gradient checkpointing (on by default in most trainers) hooks the input embedding so that its output requires
    grad; generation runs under no_grad, so that hook must not send generation back to model.generate."""
    from posttrain.kit import build_tiny_model

    model = build_tiny_model("qwen2", size="tiny", seed=0)
    model.gradient_checkpointing_enable()
    opts = dict(max_new_tokens=4, do_sample=True, pad_token_id=0, eos_token_id=2)
    assert fast_decode_plan(model, opts)[1] is None
    model.get_input_embeddings().register_forward_hook(lambda *a: None)  # any other hook still falls back
    assert "hooks" in fast_decode_plan(model, opts)[1]


def test_greedy_tokens_equal_model_generate(model, tokenizer):
    fast, reference = both(model, tokenizer, max_new_tokens=20, return_logprobs=True)
    assert fast.completion_ids == reference.completion_ids
    for a, b in zip(fast.logprobs, reference.logprobs):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("options", [
    dict(),
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, generation_kwargs={"min_new_tokens": 10}),
    dict(top_p=0.5, num_return_sequences=3),
])
def test_sampling_draws_model_generate_tokens(model, tokenizer, options):
    """Same processed distribution, same torch.multinomial draw: with one seed, the tokens of model.generate."""
    fast, reference = both(model, tokenizer, max_new_tokens=16, do_sample=True, seed=3, return_logprobs=True,
                           **options)
    assert fast.completion_ids == reference.completion_ids
    for a, b in zip(fast.logprobs, reference.logprobs):
        assert a == pytest.approx(b, abs=1e-5)


def test_sampling_logprobs_match_a_teacher_forced_forward(model):
    """The log-prob of each sampled token under softmax(logits / T), the logits from one forward of the model over
    prompt + completion (left-padded, positions counted from each prompt's first token)."""
    from posttrain.data.collators import pad_sequences

    input_ids = pad_sequences(PROMPTS, 0, side="left")
    mask = pad_sequences([[1] * len(p) for p in PROMPTS], 0, side="left")
    torch.manual_seed(0)
    new, logps = fast_decode(model, input_ids, mask, max_new_tokens=10, eos=-1, pad=0, do_sample=True,
                             temperature=0.8, return_logprobs=True)
    full = torch.cat([input_ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits.float()
    P = input_ids.shape[1]
    expected = torch.log_softmax(logits[:, P - 1 : -1] / 0.8, dim=-1).gather(-1, new[..., None]).squeeze(-1)
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=0)


def test_eos_ends_rows_and_pads_after(model):
    from posttrain.data.collators import pad_sequences

    input_ids = pad_sequences(PROMPTS, 0, side="left")
    mask = pad_sequences([[1] * len(p) for p in PROMPTS], 0, side="left")
    greedy, _ = fast_decode(model, input_ids, mask, max_new_tokens=12, eos=-1, pad=0)
    eos = int(greedy[0, 3])  # the token row 0 emits 4th: make it the EOS
    new, _ = fast_decode(model, input_ids, mask, max_new_tokens=12, eos=eos, pad=0)
    ref = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                         pad_token_id=0, eos_token_id=eos, temperature=None, top_p=None, top_k=None)
    assert torch.equal(new, ref[:, input_ids.shape[1]:])
    first = int((new[0] == eos).nonzero()[0])
    assert first <= 3 and (new[0, first + 1:] == 0).all()
    # min_new_tokens bars EOS
    barred, _ = fast_decode(model, input_ids, mask, max_new_tokens=12, eos=eos, pad=0, min_new_tokens=12)
    assert barred.shape[1] == 12 and not (barred == eos).any()


def test_bf16_autocast_close_to_model_generate(model, tokenizer):
    """Under bf16 autocast (BaseTrainer.generation_precision) both round differently (the loop's attention runs in
    float32): the first greedy tokens agree and the log-probs stay close."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, reference = both(model, tokenizer, max_new_tokens=4, return_logprobs=True)
    for a, b, la, lb in zip(fast.completion_ids, reference.completion_ids, fast.logprobs, reference.logprobs):
        assert a[:2] == b[:2]
        assert la[:2] == pytest.approx(lb[:2], abs=0.05)


def test_process_logits_top_p_keeps_the_nucleus():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = process_logits(scores.clone(), 0, eos=3, min_new_tokens=0, do_sample=True, temperature=1.0, top_k=0,
                         top_p=0.7, min_p=None)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = process_logits(scores.clone(), 0, eos=0, min_new_tokens=1, do_sample=False, temperature=1.0, top_k=0,
                         top_p=1.0, min_p=None)
    assert out[0, 0] == -float("inf")


@pytest.mark.parametrize("case", ["repetition_penalty", "generation_config", "fast_false", "lora"])
def test_falls_back_to_model_generate(model, tokenizer, monkeypatch, case):
    calls, real = [], fast_module.fast_decode
    monkeypatch.setattr(fast_module, "fast_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    kwargs = dict(prompt_ids=PROMPTS, max_new_tokens=3)
    target = model
    if case == "repetition_penalty":
        kwargs["repetition_penalty"] = 1.3
    elif case == "generation_config":
        kwargs["generation_kwargs"] = {"no_repeat_ngram_size": 2}
    elif case == "fast_false":
        kwargs["fast"] = False
    else:
        peft = pytest.importorskip("peft")
        import copy

        target = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    generate(target, tokenizer, **kwargs)
    assert calls == []
    generate(model, tokenizer, prompt_ids=PROMPTS, max_new_tokens=3)
    assert calls == [1]


def test_backends_choose_the_engine(model, tokenizer, monkeypatch):
    """fast_generation picks the rollout backend: DecodeBackend runs the loop, HFBackend never does; same tokens."""
    from types import SimpleNamespace

    from posttrain.rollout.backends import DecodeBackend, HFBackend, make_backend

    calls, real = [], fast_module.fast_decode
    monkeypatch.setattr(fast_module, "fast_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = make_backend(SimpleNamespace(fast_generation=True), lambda: model, tokenizer)
    slow = make_backend(SimpleNamespace(fast_generation=False), lambda: model, tokenizer)
    assert type(fast) is DecodeBackend and type(slow) is HFBackend
    opts = dict(max_new_tokens=5, do_sample=False)
    assert slow.generate(PROMPTS, **opts).completion_ids and calls == []
    assert fast.generate(PROMPTS, **opts).completion_ids == slow.generate(PROMPTS, **opts).completion_ids
    assert calls == [1]
