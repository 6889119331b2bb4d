"""NashMDTrainer and mixture sampling: the sampler draws from the geometric mixture, the trainer learns, the
judge's probabilities reach the loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import NashMDConfig, NashMDTrainer
from posttrain.kit import build_tiny_model, make_dataset
from posttrain.losses.online_preference import geometric_mixture_logits
from posttrain.rollout import BasePairwiseJudge, generate
from posttrain.rollout.rewards import accuracy_reward
from tests.conftest import reverse_prompts, train_args
from tests.trainers.test_online_dpo import (LEARNING, AccuracyJudge, direct_token_logps, hand_batch, judged_win_rate,
                                   odpo_args, sampled_accuracy, token_count_reward)


@pytest.fixture(scope="module")
def prompts():
    return make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)


# ------------------------------------------------------------------------------------------------
# mixture sampling (rollout layer)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coef", [0.0, 0.3, 1.0])
def test_mixture_sampling_draws_from_the_geometric_mixture(tiny_model_dir, tokenizer, coef):
    """The log-prob of every sampled token under the sampling distribution equals the geometric mixture computed
    from full forward passes of both models (left-padded prompts of different lengths, the reference's own KV cache);
    coef 0 is the policy, 1 the reference."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = build_tiny_model("qwen2", size="tiny", seed=1)
    prompts = ["abc\n", "reverse the letters of hello world\n"]
    gens = generate(policy, tokenizer, prompts, max_new_tokens=6, do_sample=True, num_return_sequences=2,
                    return_logprobs=True, mixture_ref=ref, mixture_coef=coef, seed=0)
    for p_ids, c_ids, sampled in zip(gens.prompt_ids, gens.completion_ids, gens.logprobs):
        full = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            pl = policy(full).logits[0, len(p_ids) - 1 : -1]
            rl = ref(full).logits[0, len(p_ids) - 1 : -1]
        expected = geometric_mixture_logits(pl, rl, coef).gather(-1, torch.tensor(c_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(sampled), expected, atol=1e-4, rtol=0)
        if coef in (0.0, 1.0):
            single = (pl if coef == 0.0 else rl).log_softmax(-1).gather(-1, torch.tensor(c_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(sampled), single, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------


def test_nash_md_learns_reverse_task(sft_reverse_dir, tokenizer, tmp_path):
    """Nash-MD with P = sigmoid(accuracy(policy) - accuracy(mixture)) raises the held-out sampled exact match
    (temperature 1, 4 per prompt) by >= 0.08 in 100 steps (measured 0.25 -> 0.39). Nash-MD trains on one completion
    per prompt against one opponent (a REINFORCE signal with a single-sample baseline), so it needs more steps than
    Online DPO / XPO here.
    Margins over training seeds 0/1/2 (`make test-seeds`): +0.135 / +0.245 / +0.336, win rates 0.57 / 0.62 / 0.67."""
    model = AutoModelForCausalLM.from_pretrained(sft_reverse_dir)
    test = reverse_prompts(100, seed=1)
    train = reverse_prompts(1024, seed=5, exclude=test)
    before = sampled_accuracy(model, tokenizer, test)
    args = odpo_args(tmp_path, NashMDConfig, **{**LEARNING, "beta": [0.1], "max_steps": 100})
    trainer = NashMDTrainer(model, reward_funcs=accuracy_reward, args=args, train_dataset=train,
                            processing_class=tokenizer)
    trainer.train()
    after = sampled_accuracy(model, tokenizer, test)
    wins = judged_win_rate(model, sft_reverse_dir, tokenizer, test)
    print(f"Nash-MD reverse: sampled exact match {before:.3f} -> {after:.3f}, win rate {wins:.3f}")
    assert wins >= 0.53, wins  # the judge prefers the trained policy to the starting one
    assert after - before >= 0.08, (before, after)
    logged = trainer.state.log_history[0]
    for name in ("loss/kl", "loss/score", "rewards/probabilities", "objective/entropy", "objective/model_scores",
                 "objective/mixture_scores", "objective/scores_margin", "val/model_contain_eos_token",
                 "val/ref_contain_eos_token", "mixture_coef", "beta"):
        assert name in logged, name


# ------------------------------------------------------------------------------------------------
# probabilities, LoRA, per-epoch mixture
# ------------------------------------------------------------------------------------------------


class ProbabilityJudge(BasePairwiseJudge):
    """Gives P(first better) = 0.8 when asked for scores, else says 'first'."""

    def __init__(self):
        self.asked_scores = 0

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
        if return_scores:
            self.asked_scores += 1
            return [0.8] * len(prompts)
        return [0] * len(prompts)


def test_judge_probabilities_reach_the_loss(tiny_model_dir, tokenizer, prompts, tmp_path):
    judge = ProbabilityJudge()
    trainer = NashMDTrainer(tiny_model_dir, judge=judge, args=odpo_args(tmp_path, NashMDConfig, max_steps=1),
                            train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert judge.asked_scores == 1 and logs["rewards/probabilities"] == pytest.approx(0.8)
    # first step: policy == reference, so loss/kl is 0 and the loss is -mean((P - 0.5) * log pi(y))
    assert logs["loss/kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs["loss"] == pytest.approx(-logs["loss/score"], rel=1e-4)
    assert logs["loss/score"] == pytest.approx(-0.3 * logs["objective/entropy"], rel=1e-4)


def test_lora_mixture_and_mixture_coef_per_epoch(tiny_model_dir, tokenizer, prompts, tmp_path):
    from peft import LoraConfig

    args = odpo_args(tmp_path, NashMDConfig, mixture_coef=[0.5, 0.9], max_steps=10, learning_rate=1e-2)
    trainer = NashMDTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                            processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mixture_coef" in h]
    assert [h["mixture_coef"] for h in logs] == [0.5] * 8 + [0.9] * 2
    assert logs[0]["loss/kl"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["loss/kl"] != pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mixture_coef must be in"):
        odpo_args(tmp_path, NashMDConfig, mixture_coef=[1.5])


def test_loss_and_metrics_on_a_hand_made_batch(tiny_model_dir, tokenizer, prompts, tmp_path):
    """Rows 0 and 2 are the policy's completions, 1 and 3 the mixture's; scores 1, 0 | 0, 3 give P(policy wins) =
    sigmoid(1) and sigmoid(-3). With per-token log-probs lp of the *raw* logits (sampling temperature 0.5 does not
    enter) and the reference's rp: loss = mean over the policy rows of beta * sum_t (lp - rp) * lp - (P - 0.5) *
    sum_t lp (in value), beta = 0.1. TRL 0.21's metrics: logps/chosen | rejected = mean summed lp | rp of the
    policy's completions, rewards/margins = their mean difference, rewards/accuracies = share with lp > rp,
    rewards/chosen | rejected = mean score of the policy's | mixture's completions, val/ref_contain_eos_token = the
    mixture's EOS rate (1: both end with EOS), val/model_contain_eos_token 0.5."""
    other = build_tiny_model("qwen2", size="tiny", seed=1, output_dir=tmp_path / "ref")
    trainer = NashMDTrainer(tiny_model_dir, ref_model=str(other), reward_funcs=token_count_reward,
                            args=odpo_args(tmp_path, NashMDConfig, temperature=0.5), train_dataset=prompts,
                            processing_class=tokenizer)
    trainer.model.eval()
    batch = hand_batch(trainer, tokenizer, [1.0, 0.0, 0.0, 3.0], [[5, 9, 11, -1], [7, -1], [20, 3, 4], [6, -1]])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    lp, rp = direct_token_logps(trainer.model, batch)[0::2], direct_token_logps(trainer.ref_model, batch)[0::2]
    p = torch.sigmoid(torch.tensor([1.0, -3.0]))
    expected = (0.1 * ((lp - rp) * lp).sum(1) - (p - 0.5) * lp.sum(1)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    pi, ref = lp.sum(1), rp.sum(1)
    assert logged["logps/chosen"] == pytest.approx(float(pi.mean()), rel=1e-5)
    assert logged["logps/rejected"] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert logged["rewards/margins"] == pytest.approx(float((pi - ref).mean()), abs=1e-4)
    assert logged["rewards/accuracies"] == float((pi > ref).float().mean())
    assert logged["rewards/chosen"] == pytest.approx(0.5) and logged["rewards/rejected"] == pytest.approx(1.5)
    assert logged["val/model_contain_eos_token"] == 0.5 and logged["val/ref_contain_eos_token"] == 1.0
    assert logged["rewards/probabilities"] == pytest.approx(float(p.mean()))
