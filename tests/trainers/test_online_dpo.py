"""OnlineDPOTrainer: it learns (reward functions and a judge), pairs and references are right, bad judges fail
clearly."""


import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import OnlineDPOConfig, OnlineDPOTrainer
from posttrain.evaluation import exact_match_accuracy
from posttrain.kit import build_tiny_model, make_dataset
from posttrain.rollout import BasePairwiseJudge
from posttrain.rollout.rewards import accuracy_reward
from tests.conftest import reverse_prompts, train_args


def odpo_args(tmp_path, cls=OnlineDPOConfig, **overrides):
    defaults = dict(max_new_tokens=8, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3)
    defaults.update(overrides)
    return train_args(cls, tmp_path, **defaults)


def token_count_reward(prompts, completions, completion_ids, **kwargs):
    """Dense toy reward: prefer completions made of low token ids."""
    return [-sum(ids) / (1024.0 * max(len(ids), 1)) for ids in completion_ids]


class AccuracyJudge(BasePairwiseJudge):
    """A pairwise judge from the exact-answer check: the right answer beats a wrong one; equal -> tie (-1)."""

    def __init__(self, answers: dict):
        self.answers = answers  # prompt -> answer
        self.calls = 0

    def judge(self, prompts, completions, shuffle_order=True):
        self.calls += 1
        out = []
        for p, (a, b) in zip(prompts, completions):
            ok_a, ok_b = (c.strip() == self.answers[p] for c in (a, b))
            out.append(-1 if ok_a == ok_b else 0 if ok_a else 1)
        return out


@pytest.fixture(scope="module")
def prompts():
    return make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------


LEARNING = dict(max_new_tokens=12, per_device_train_batch_size=32, max_steps=60, learning_rate=3e-4, beta=[0.5],
                lr_scheduler_type="constant_with_warmup", warmup_steps=10, temperature=1.0, logging_steps=10)


def sampled_accuracy(model, tokenizer, test):
    return exact_match_accuracy(model, tokenizer, test["prompt"], test["answer"], max_new_tokens=12, temperature=1.0,
                                num_samples=4)[0]


def judged_win_rate(model, start_dir, tokenizer, test):
    """Win rate of ``model`` against the starting policy on the held-out prompts, by the exact-answer judge
    (4 samples per prompt, temperature 1, the same seed for both; ties count one half)."""
    from posttrain.evaluation import win_rate

    baseline = AutoModelForCausalLM.from_pretrained(start_dir)
    judge = AccuracyJudge(dict(zip(test["prompt"], test["answer"])))
    return win_rate(judge, model, baseline, tokenizer, test["prompt"], max_new_tokens=12, num_samples=4)


@pytest.mark.parametrize("ranker", ["reward", "judge"])
def test_online_dpo_learns_reverse_task(sft_reverse_dir, tokenizer, tmp_path, ranker):
    """Online DPO, pairs ranked by the exact-answer reward or by a judge built from it, raises the held-out exact
    match of the policy's own samples (temperature 1, 4 per prompt) by >= 0.12 in 60 steps, and the judge's win
    rate against the starting policy on held-out prompts to >= 0.53.
    Margins over training seeds 0/1/2 (`make test-seeds`, both rankers): +0.17 / +0.28 / +0.32, win rates 0.59 /
    0.64 / 0.66."""
    model = AutoModelForCausalLM.from_pretrained(sft_reverse_dir)
    test = reverse_prompts(100, seed=1)
    train = reverse_prompts(1024, seed=5, exclude=test)
    before = sampled_accuracy(model, tokenizer, test)
    args = odpo_args(tmp_path, **LEARNING)
    if ranker == "reward":
        trainer = OnlineDPOTrainer(model, reward_funcs=accuracy_reward, args=args, train_dataset=train,
                                   processing_class=tokenizer)
    else:
        judge = AccuracyJudge(dict(zip(train["prompt"], train["answer"])))
        trainer = OnlineDPOTrainer(model, judge=judge, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    after = sampled_accuracy(model, tokenizer, test)
    wins = judged_win_rate(model, sft_reverse_dir, tokenizer, test)
    print(f"Online DPO ({ranker}) reverse: sampled exact match {before:.3f} -> {after:.3f}, win rate {wins:.3f}")
    assert after - before >= 0.12, (before, after)
    assert wins >= 0.53, wins  # the judge prefers the trained policy to the starting one
    logged = trainer.state.log_history[0]
    names = ["objective/kl", "objective/entropy", "objective/non_score_reward", "rewards/chosen", "rewards/rejected",
             "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "val/contain_eos_token", "beta"]
    if ranker == "reward":
        names += ["objective/rlhf_reward", "objective/scores_margin", "rewards/accuracy_reward/mean"]
    for name in names:
        assert name in logged, name


# ------------------------------------------------------------------------------------------------
# pairs, rankers and variants
# ------------------------------------------------------------------------------------------------


class ShorterJudge(BasePairwiseJudge):
    """Prefers the shorter completion (ties -1); records what it saw."""

    def __init__(self):
        self.seen = []

    def judge(self, prompts, completions, shuffle_order=True):
        self.seen.append((list(prompts), list(completions)))
        return [-1 if len(a) == len(b) else 0 if len(a) < len(b) else 1 for a, b in completions]


def test_pairs_share_a_prompt_and_the_judge_picks_chosen(tiny_model_dir, tokenizer, prompts, tmp_path):
    """Each pair is two samples of one prompt; the judge's verdict becomes the preference (1 / 0, ties 0.5) and
    decides which completion is chosen."""
    judge = ShorterJudge()
    trainer = OnlineDPOTrainer(tiny_model_dir, judge=judge, args=odpo_args(tmp_path), train_dataset=prompts,
                               processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(2)]
    trainer.model.train()
    batch = trainer.generate_and_score(rows, 1)[0]
    assert judge.seen[0][0] == [r["prompt"] for r in rows[0::2]]
    lengths = [(len(a), len(b)) for a, b in judge.seen[0][1]]
    pref = batch["preference"].view(-1, 2)
    for (la, lb), (pa, pb) in zip(lengths, pref.tolist()):
        assert pa + pb == 1.0
        assert pa == (0.5 if la == lb else 1.0 if la < lb else 0.0)
    seq = torch.arange(8, dtype=torch.float32)
    chosen, rejected, _, _, decided = trainer.choose(batch, seq, seq)
    for k, (pa, _) in enumerate(pref.tolist()):
        assert decided[k] == (pa != 0.5)
        if pa != 0.5:
            assert chosen[k] == (2 * k if pa == 1.0 else 2 * k + 1)
            assert rejected[k] == (2 * k + 1 if pa == 1.0 else 2 * k)


@pytest.mark.parametrize("verdicts, message", [
    ([2, 0, 1, 0], "BadJudge returned 2 for pair 0"),
    ([0, 1], "BadJudge returned 2 values for 4 pairs"),
    (None, "BadJudge returned None for 4 pairs"),
])
def test_judge_returning_invalid_indices_is_named(tiny_model_dir, tokenizer, prompts, tmp_path, verdicts, message):
    class BadJudge(BasePairwiseJudge):
        def judge(self, prompts, completions, shuffle_order=True):
            return verdicts

    trainer = OnlineDPOTrainer(tiny_model_dir, judge=BadJudge(), args=odpo_args(tmp_path), train_dataset=prompts,
                               processing_class=tokenizer)
    with pytest.raises(ValueError, match=message):
        trainer.train()


def test_needs_exactly_one_ranker(tiny_model_dir, tokenizer, prompts, tmp_path):
    with pytest.raises(ValueError, match="needs judge="):
        OnlineDPOTrainer(tiny_model_dir, args=odpo_args(tmp_path), train_dataset=prompts, processing_class=tokenizer)
    with pytest.raises(ValueError, match="not both"):
        OnlineDPOTrainer(tiny_model_dir, judge=ShorterJudge(), reward_funcs=token_count_reward,
                         args=odpo_args(tmp_path), train_dataset=prompts, processing_class=tokenizer)
    with pytest.raises(ValueError, match="exactly 2 completions"):
        odpo_args(tmp_path, num_generations=4)
    with pytest.raises(ValueError, match="loss_type"):
        odpo_args(tmp_path, loss_type="hinge")


@pytest.mark.parametrize("overrides", [dict(loss_type="ipo"), dict(top_k=20, top_p=0.9, min_p=0.05,
                                                                   repetition_penalty=1.1, gradient_accumulation_steps=2)],
                         ids=["ipo", "sampling-accumulation"])
def test_variants_run(tiny_model_dir, tokenizer, prompts, tmp_path, overrides):
    trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=odpo_args(tmp_path, **overrides),
                               train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(logs["loss"])) and logs["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs["rewards/accuracies"] == 0.0  # first step: policy == reference, every implicit reward is 0
    assert trainer.ref_model is not None


def test_beta_per_epoch(tiny_model_dir, tokenizer, prompts, tmp_path):
    """32 prompts / 4 per step = 8 steps an epoch: steps 9-10 use the second beta."""
    args = odpo_args(tmp_path, beta=[0.1, 0.3], max_steps=10)
    trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                               processing_class=tokenizer)
    trainer.train()
    betas = [h["beta"] for h in trainer.state.log_history if "beta" in h]
    assert betas == [0.1] * 8 + [0.3] * 2


def test_missing_eos_penalty(tiny_model_dir, tokenizer, prompts, tmp_path):
    """A random tiny model almost never stops within 4 tokens: the penalty lowers the scores of the truncated
    completions (rlhf_reward drops by penalty x truncated fraction)."""
    logs = []
    for penalty in (None, 2.0):
        args = odpo_args(tmp_path, max_new_tokens=4, max_steps=1, missing_eos_penalty=penalty)
        trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                                   processing_class=tokenizer)
        trainer.train()
        logs.append(trainer.state.log_history[0])
    truncated = 1.0 - logs[0]["val/contain_eos_token"]
    assert truncated > 0.5
    assert logs[1]["objective/rlhf_reward"] == pytest.approx(logs[0]["objective/rlhf_reward"] - 2.0 * truncated, abs=1e-4)


def test_lora_reference_is_the_adapter_free_policy(tiny_model_dir, tokenizer, prompts, tmp_path):
    from peft import LoraConfig

    args = odpo_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                               processing_class=tokenizer,
                               peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None
    trainer.train()
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] != pytest.approx(0.0, abs=1e-6)


def test_explicit_reference_and_local_lm_judge(tiny_model_dir, tokenizer, prompts, tmp_path):
    """ref_model by path (a different model: the first step's KL is not 0), ranked by a local causal-LM judge."""
    from posttrain.rollout import LLMPairwiseJudge

    other = build_tiny_model("qwen2", size="tiny", seed=1, output_dir=tmp_path / "ref")
    judge = LLMPairwiseJudge(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, seed=0)
    trainer = OnlineDPOTrainer(tiny_model_dir, ref_model=str(other), judge=judge, args=odpo_args(tmp_path),
                               train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert abs(logs["objective/kl"]) > 1e-3  # the policy (step 0) is not the reference
    assert "objective/rlhf_reward" not in logs and "objective/scores_margin" not in logs


def test_conversational_prompts_and_evaluation(tiny_model_dir, tokenizer, tmp_path):
    data = make_dataset("addition", "prompt_only", n=24, seed=0, conversational=True)
    args = odpo_args(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=data,
                               eval_dataset=data.select(range(8)), processing_class=tokenizer)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and "eval_objective/kl" in evals[0]


# ------------------------------------------------------------------------------------------------
# training log-probs and metrics on hand-made batches
# ------------------------------------------------------------------------------------------------


def hand_batch(trainer, tokenizer, scores, completion_ids=None):
    """Two pairs (rows 0-1 and 2-3) of fixed completions of different lengths (by default rows 0 and 3 end with EOS
    (-1 below), so the rows carry padding), with the reference's log-probs and the preferences the scores give."""
    from posttrain.data.preference import build_rows

    eos = tokenizer.eos_token_id
    prompt_ids = [trainer.train_dataset[i]["prompt_input_ids"] for i in (0, 0, 1, 1)]
    completion_ids = completion_ids or [[5, 9, 11, -1], [7, 7], [20, 3, 4], [6, -1]]
    completion_ids = [[eos if t == -1 else t for t in ids] for ids in completion_ids]
    batch = build_rows(prompt_ids, completion_ids, pad_token_id=tokenizer.pad_token_id)
    batch["ref_logps"] = trainer.reference_logps(batch)
    scores = torch.tensor(scores)
    batch["scores"] = scores
    batch["preference"] = trainer.process_rewards(scores)["preference"]
    batch["truncated"] = torch.tensor([ids[-1] != eos for ids in completion_ids])
    return batch


def direct_token_logps(model, batch, temperature=1.0):
    """(B, L - 1) log-probs of the completion tokens (0 elsewhere) straight from the model's logits (no posttrain
    code)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token = (logits / temperature).log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return token * batch["completion_mask"][:, 1:]


def direct_seq_logps(model, batch, temperature=1.0):
    """Summed completion log-probs (B,) straight from the model's logits."""
    return direct_token_logps(model, batch, temperature).sum(1)


def test_dpo_loss_uses_the_policys_own_logps_at_any_temperature(tiny_model_dir, tokenizer, prompts, tmp_path):
    """Sampling at temperature 0.5 does not change what the DPO loss is about: pi(y|x) of the raw logits (TRL's Online
    DPO / XPO / Nash-MD). Pair 0: the first completion has the higher score (chosen), pair 1: the second.
    loss = mean_pairs -log sigmoid(beta * [(pi_w - ref_w) - (pi_l - ref_l)]), with beta = 0.5; and the
    ``objective/*`` metrics: kl = mean_rows (pi - ref) over the completion tokens (not the padding),
    entropy = -mean_rows pi, scores = mean score, scores_margin = mean_pairs |s_1 - s_2|."""
    other = build_tiny_model("qwen2", size="tiny", seed=1, output_dir=tmp_path / "ref")
    trainer = OnlineDPOTrainer(tiny_model_dir, ref_model=str(other), reward_funcs=token_count_reward,
                               args=odpo_args(tmp_path, temperature=0.5, beta=[0.5]), train_dataset=prompts,
                               processing_class=tokenizer)
    trainer.model.eval()
    batch = hand_batch(trainer, tokenizer, [1.0, 0.0, 0.0, 3.0])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    pi, ref = direct_seq_logps(trainer.model, batch), direct_seq_logps(trainer.ref_model, batch)
    h = torch.stack([(pi[0] - ref[0]) - (pi[1] - ref[1]), (pi[3] - ref[3]) - (pi[2] - ref[2])])
    expected = -torch.nn.functional.logsigmoid(0.5 * h).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # the check can tell the two apart: log-probs of logits / 0.5 give another loss
    pi_t, ref_t = direct_seq_logps(trainer.model, batch, 0.5), direct_seq_logps(trainer.ref_model, batch, 0.5)
    h_t = torch.stack([(pi_t[0] - ref_t[0]) - (pi_t[1] - ref_t[1]), (pi_t[3] - ref_t[3]) - (pi_t[2] - ref_t[2])])
    assert abs(float(-torch.nn.functional.logsigmoid(0.5 * h_t).mean() - expected)) > 1e-3
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert logged["objective/kl"] == pytest.approx(float((pi - ref).mean()), abs=1e-4)
    assert logged["objective/entropy"] == pytest.approx(float(-pi.mean()), rel=1e-5)
    assert logged["objective/scores"] == pytest.approx(1.0)  # (1 + 0 + 0 + 3) / 4
    assert logged["objective/scores_margin"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert logged["logps/chosen"] == pytest.approx(float((pi[0] + pi[3]) / 2), rel=1e-5)


@pytest.mark.parametrize("name, divides", [("OnlineDPOTrainer", False), ("XPOTrainer", False),
                                           ("NashMDTrainer", False), ("GRPOTrainer", True), ("RLOOTrainer", True)])
def test_which_trainers_take_logps_at_the_sampling_temperature(tiny_model_dir, tokenizer, prompts, tmp_path, name,
                                                               divides):
    """GRPO, RLOO (and PPO) take the training log-probs at the sampling temperature: their importance ratios and KL
    terms are against the distribution sampled from (as TRL's). The Online DPO family takes them of the raw logits."""
    import posttrain
    from posttrain.trainers.online_base import OnlineTrainer
    from posttrain.trainers.ppo import PPOTrainer

    cls = getattr(posttrain, name)
    config = getattr(posttrain, name.replace("Trainer", "Config"))
    extra = dict(num_generations=4, max_completion_length=8, per_device_train_batch_size=8) if divides else {}
    args = train_args(config, tmp_path, temperature=0.5, max_steps=1, **extra)
    trainer = cls(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                  processing_class=tokenizer)
    batch = hand_batch(trainer, tokenizer, [1.0, 0.0, 0.0, 3.0]) if not divides else None
    if batch is None:
        from posttrain.data.preference import build_rows

        ids = [trainer.train_dataset[i]["prompt_input_ids"] for i in (0, 1)]
        batch = build_rows(ids, [[5, 9, 11], [7]], pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logps, mask, _ = trainer.token_logps(trainer.model, batch)
    expected = direct_seq_logps(trainer.model, batch, 0.5 if divides else 1.0)
    torch.testing.assert_close((logps * mask).sum(1), expected, atol=1e-5, rtol=1e-5)
    assert trainer.logps_temperature() == (0.5 if divides else 1.0)
    assert PPOTrainer.logps_temperature is OnlineTrainer.logps_temperature  # PPO: the sampling temperature too
