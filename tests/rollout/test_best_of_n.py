"""Reward scoring (reward models and callables, weights, errors) and Best-of-N sampling, plus the
examples/notebooks/best_of_n.ipynb notebook executed headless."""

import math

import pytest
import torch

from posttrain.rollout import BestOfNSampler, RewardFunctionError, RewardScorer, generate, score, score_with_model
from tests.conftest import has_figure, run_notebook


@pytest.fixture(scope="module")
def reward_model():
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", head="seq-cls", size="tiny", seed=1)


@pytest.fixture(scope="module")
def policy():
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", size="tiny", seed=0)


def n_chars(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def exact(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


# -- scoring -------------------------------------------------------------------------------------------
def test_callables_weights_columns_and_nan(tokenizer):
    prompts, completions = ["What is 1+1?\n", "What is 2+2?\n", "x"], ["2", "5", "abc"]

    def maybe(prompts, completions, **kwargs):  # None: "does not apply"
        return [None, 1.0, None]

    out = score([n_chars, exact, maybe], prompts, completions, reward_weights=[1.0, 10.0, 0.5],
                answer=["2", "4", "zzz"])
    assert out.names == ["n_chars", "exact", "maybe"]
    assert out.per_function.shape == (3, 3)
    assert out.per_function[:, 0].tolist() == [1.0, 1.0, 3.0] and out.per_function[:, 1].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(out.per_function[0, 2]) and out.per_function[1, 2] == 1.0
    assert out.rewards.tolist() == [11.0, 1.5, 3.0]  # NaN entries are skipped in the weighted sum
    assert set(out.as_dict()) == {"n_chars", "exact", "maybe"}


def test_async_callables_are_awaited():
    async def slow_len(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    out = score([slow_len, n_chars], ["p", "q"], ["ab", "c"])
    assert out.per_function.tolist() == [[2.0, 2.0], [1.0, 1.0]]


def test_bad_reward_functions_fail_clearly():
    p, c = ["a", "b", "c"], ["x", "y", "z"]

    def two_scores(prompts, completions, **kwargs):
        return [1.0, 2.0]

    def nothing(prompts, completions, **kwargs):
        return None

    def broken(prompts, completions, **kwargs):
        raise KeyError("answer")

    def text(prompts, completions, **kwargs):
        return ["good"] * len(completions)

    async def broken_async(prompts, completions, **kwargs):
        raise RuntimeError("remote down")

    with pytest.raises(RewardFunctionError, match=r"'two_scores' returned 2 scores for 3 completions"):
        score(two_scores, p, c)
    with pytest.raises(RewardFunctionError, match=r"'nothing' returned None"):
        score(nothing, p, c)
    with pytest.raises(RewardFunctionError, match=r"'broken' raised KeyError"):
        score(broken, p, c)
    with pytest.raises(RewardFunctionError, match=r"'text' returned 'good'"):
        score(text, p, c)
    with pytest.raises(RewardFunctionError, match=r"'broken_async' raised RuntimeError: remote down"):
        score(broken_async, p, c)
    with pytest.raises(ValueError, match="2 reward_weights for 1 reward functions"):
        RewardScorer(n_chars, reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        score(n_chars, p[:2], c)


def test_reward_model_scores_match_a_direct_forward(reward_model, tokenizer):
    prompts = ["What is 1+1?\n", "Sort: 3 1 2\n", "What is 22+33?\n"]
    completions = ["2", "1 2 3", "55"]
    got = score_with_model(reward_model, tokenizer, prompts, completions, batch_size=2)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = tokenizer(p + c)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            want = reward_model(input_ids=torch.tensor([ids])).logits[0, 0]
        assert torch.allclose(got[i], want, atol=1e-5)
    # conversational prompts: the chat template; a plain-string completion becomes an assistant message
    conv = [{"role": "user", "content": "What is 1+1?"}]
    from posttrain.data.tokenize import chat_template_ids

    ids = chat_template_ids(tokenizer, conv + [{"role": "assistant", "content": "2"}])
    with torch.no_grad():
        want = reward_model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert torch.allclose(score_with_model(reward_model, tokenizer, [conv], ["2"])[0], want, atol=1e-5)
    # mixed with a callable, weighted
    out = RewardScorer([reward_model, n_chars], [tokenizer, None], reward_weights=[2.0, 1.0])(prompts, completions)
    assert torch.allclose(out.rewards, 2 * got + torch.tensor([1.0, 5.0, 2.0]), atol=1e-5)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        score(reward_model, prompts, completions)


def test_reward_model_by_path(tmp_path, tokenizer, reward_model):
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    prompts, completions = ["What is 1+1?\n"], ["2"]
    assert torch.allclose(score(str(tmp_path / "rm"), prompts, completions).rewards,
                          score_with_model(reward_model, tokenizer, prompts, completions), atol=1e-6)


# -- best of n -----------------------------------------------------------------------------------------
def test_best_of_n_beats_plain_sampling(policy, tokenizer):
    """Same prompts, same seed: the best of 8 samples has a much higher reward than one plain sample
    (reward = completion length in characters, 6 new tokens; measured 22.2 plain vs 29.8 best-of-8, mean of all
    samples 21.3; asserted: best-of-8 >= plain + 5)."""
    from posttrain.kit import make_dataset

    prompts = make_dataset("addition", "prompt_only", n=16, seed=0)["prompt"]
    plain = generate(policy, tokenizer, prompts, do_sample=True, seed=0, max_new_tokens=6)
    plain_mean = sum(n_chars(prompts, plain.texts)) / len(prompts)
    sampler = BestOfNSampler(policy, tokenizer, n_chars, sample_size=8, n_candidates=2, max_new_tokens=6, seed=0)
    out = sampler.generate(prompts)
    best_mean = sum(s[0] for s in out.scores) / len(prompts)
    assert best_mean >= plain_mean + 5.0, (plain_mean, best_mean)
    for i in range(len(prompts)):
        assert len(out.all_completions[i]) == 8 and len(out.completions[i]) == 2
        assert out.scores[i][0] == max(out.all_scores[i]) and out.scores[i][0] >= out.scores[i][1]
        assert out.scores[i][0] == len(out.completions[i][0])
    # reproducible
    again = sampler.generate(prompts)
    assert again.all_completions == out.all_completions and again.scores == out.scores


def test_best_of_n_passes_columns_and_conversational_completions(policy, tokenizer):
    seen = {}

    def spy(prompts, completions, answer, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, ids=completion_ids)
        return [0.0] * len(completions)

    conv = [[{"role": "user", "content": "What is 1+1?"}], [{"role": "user", "content": "What is 2+2?"}]]
    out = BestOfNSampler(policy, tokenizer, spy, sample_size=3, max_new_tokens=3, seed=1).generate(conv, answer=["2", "4"])
    assert seen["answer"] == ["2"] * 3 + ["4"] * 3 and seen["prompts"][3] == conv[1]
    assert seen["completions"][0] == [{"role": "assistant", "content": out.all_completions[0][0]}]
    assert len(seen["ids"]) == 6 and all(isinstance(t, int) for t in seen["ids"][0])
    with pytest.raises(ValueError, match="n_candidates"):
        BestOfNSampler(policy, tokenizer, spy, sample_size=2, n_candidates=3)
    with pytest.raises(ValueError, match="Column 'answer' has 1 values for 2 prompts"):
        BestOfNSampler(policy, tokenizer, spy, sample_size=2).generate(conv, answer=["2"])


def test_best_of_n_notebook_runs_headless(tmp_path):
    nb, outputs = run_notebook("best_of_n.ipynb", tmp_path, timeout=120)
    assert "best-of-16" in outputs and "plain sampling" in outputs
    assert has_figure(nb)
