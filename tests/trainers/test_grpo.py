"""GRPOTrainer: it learns, the importance ratio is exactly 1 on-policy, every variant runs, bad input fails early."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import GRPOConfig, GRPOTrainer
from posttrain.data import DatasetFormatError
from posttrain.evaluation import exact_match_accuracy
from posttrain.kit import make_dataset
from posttrain.rollout import RewardFunctionError, generate
from posttrain.rollout.rewards import accuracy_reward
from posttrain.data.preference import build_rows
from posttrain.trainers.base import bf16_supported
from tests.conftest import PRECISIONS, reverse_prompts, train_args, use_precision


def grpo_args(tmp_path, **overrides):
    defaults = dict(num_generations=4, max_completion_length=8, per_device_train_batch_size=8, max_steps=2)
    defaults.update(overrides)
    return train_args(GRPOConfig, tmp_path, **defaults)


def token_count_reward(prompts, completions, completion_ids, **kwargs):
    """Dense toy reward: prefer completions made of low token ids."""
    return [-sum(ids) / (1024.0 * max(len(ids), 1)) for ids in completion_ids]


@pytest.fixture(scope="module")
def prompts():
    return make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------


# CISPO and SAPO train on each generation batch twice (so the capped weights and the soft gate act off-policy): twice
# the optimizer steps at half the learning rate, the same 60 generation batches (measured: sampled 0.25 -> 0.50 CISPO,
# 0.25 -> 0.49 SAPO; greedy 0.92 -> 0.97 and 0.92)
_OFF_POLICY = dict(num_iterations=2, max_steps=120, learning_rate=1.5e-4)
LOSS_VARIANTS = {"dapo": {}, "cispo": dict(loss_type="cispo", epsilon_high=5.0, **_OFF_POLICY),
                 "sapo": dict(loss_type="sapo", **_OFF_POLICY)}


@pytest.mark.parametrize("precision,variant", [(p, "dapo") for p in PRECISIONS] + [("default", "cispo"),
                                                                                    ("default", "sapo")])
def test_grpo_learns_reverse_task(precision, variant, sft_reverse_dir, tokenizer, tmp_path, monkeypatch):
    """GRPO with the exact-answer reward raises the held-out exact match of the policy's own samples
    (temperature 1, 4 per prompt) by >= 0.12 in 60 steps (measured: 0.25 -> 0.52 in fp32), and greedy exact match
    does not drop by more than 0.05 (the SFT model's greedy answers are already about 0.97 right; see
    sft_reverse_dir). In fp32 and in the default precision (bf16 autocast, also for sampling, on a CPU with native
    bf16); CISPO and SAPO in the default precision (LOSS_VARIANTS).
    Margins over training seeds 0/1/2 (`make test-seeds`, sampled exact match): fp32 dapo +0.27 / +0.30 / +0.39,
    default dapo +0.22 / +0.35 / +0.35, cispo +0.24 / +0.31 / +0.38, sapo +0.23 / +0.39 / +0.39."""
    use_precision(monkeypatch, precision)
    model = AutoModelForCausalLM.from_pretrained(sft_reverse_dir)
    test = reverse_prompts(100, seed=1)
    train = reverse_prompts(1024, seed=5, exclude=test)

    def accuracy(**sampling):
        return exact_match_accuracy(model, tokenizer, test["prompt"], test["answer"], max_new_tokens=12, **sampling)[0]

    sampled_before, greedy_before = accuracy(temperature=1.0, num_samples=4), accuracy()
    args = grpo_args(tmp_path, **{**dict(num_generations=8, max_completion_length=12, per_device_train_batch_size=64,
                                         max_steps=60, learning_rate=3e-4, lr_scheduler_type="constant_with_warmup",
                                         warmup_steps=10, temperature=1.0, logging_steps=10), **LOSS_VARIANTS[variant]})
    assert args.bf16 == (precision == "default" and bf16_supported())
    trainer = GRPOTrainer(model, accuracy_reward, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    sampled_after, greedy_after = accuracy(temperature=1.0, num_samples=4), accuracy()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert sampled_after - sampled_before >= 0.12, (sampled_before, sampled_after, rewards)
    assert greedy_after >= greedy_before - 0.05, (greedy_before, greedy_after)
    assert rewards[-1] > rewards[0], rewards
    print(f"GRPO reverse ({precision}, {variant}, bf16={args.bf16}): sampled {sampled_before:.3f} -> {sampled_after:.3f}, greedy {greedy_before:.3f} -> "
          f"{greedy_after:.3f}, rewards {[round(r, 3) for r in rewards]}")
    logged = trainer.state.log_history[0]
    for name in ("loss", "reward", "reward_std", "rewards/accuracy_reward/mean", "rewards/accuracy_reward/std",
                 "frac_reward_zero_std", "entropy", "completions/mean_length", "completions/clipped_ratio",
                 "completions/mean_terminated_length", "num_tokens"):
        assert name in logged, name
    clip_metrics = {"dapo": "clip_ratio/region_mean", "cispo": "cispo_clip_ratio", "sapo": None}[variant]
    assert clip_metrics is None or clip_metrics in logged


# ------------------------------------------------------------------------------------------------
# the importance ratio
# ------------------------------------------------------------------------------------------------


def test_sampling_logps_equal_training_logps(tiny_model_dir, tokenizer, prompts, tmp_path):
    """The log-probs the sampler drew each token with (temperature, top-k, top-p applied) equal the trainer's
    log-probs of the same tokens: with num_iterations=1 and no KL, the importance ratio is exactly 1."""
    args = grpo_args(tmp_path, temperature=0.7)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer)
    model = trainer.model
    ids = trainer.train_dataset["prompt_input_ids"][:4]
    gens = generate(model, tokenizer, prompt_ids=ids, max_new_tokens=8, do_sample=True, temperature=0.7,
                    num_return_sequences=2, return_logprobs=True, seed=0)
    batch = build_rows(gens.prompt_ids, gens.completion_ids, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logps, mask, _ = trainer.token_logps(model, batch)
    for i, sampled in enumerate(gens.logprobs):
        assert len(sampled) == int(mask[i].sum()) == len(gens.completion_ids[i])
        torch.testing.assert_close(logps[i][mask[i]], torch.tensor(sampled), atol=1e-5, rtol=0)
    # on-policy (num_iterations=1, one micro-step per generation): no extra forward pass for old log-probs
    trainer.model.train()
    batch = trainer.generate_and_score([trainer.train_dataset[i] for i in range(2) for _ in range(4)], 1)[0]
    assert "old_logps" not in batch and "ref_logps" not in batch


def test_reused_generation_batch_computes_old_logps_once(tiny_model_dir, tokenizer, prompts, tmp_path, monkeypatch):
    """num_iterations=2 x steps_per_generation=2: one generation every 4 micro-steps, old log-probs stored, and at
    the first micro-step they equal the current ones (no clipping can happen)."""
    import posttrain.rollout.backends as backends  # the default (transformers) rollout backend's generate

    calls = []
    real = backends.generate
    monkeypatch.setattr(backends, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = grpo_args(tmp_path, num_iterations=2, steps_per_generation=2, max_steps=8, per_device_train_batch_size=4)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer)
    trainer.train()
    assert len(calls) == 8 // 4
    assert "old_logps" in trainer._buffer[0]
    first = trainer.state.log_history[0]
    assert first["clip_ratio/region_mean"] == 0.0


def test_reward_std_is_over_the_batch_and_zero_std_counts_groups(tiny_model_dir, tokenizer, prompts, tmp_path):
    """TRL 1.x's definitions. Rewards 1 2 3 4 | 5 5 5 5 (two groups of 4): mean 3.75, squared deviations 7.5625 +
    3.0625 + 0.5625 + 0.0625 + 4 x 1.5625 = 17.5, so reward_std = sqrt(17.5 / 7) = sqrt(2.5) (the mean per-group
    std, TRL 0.x's, would be sqrt(5/3) / 2 = 0.6455); the second group has zero std: frac_reward_zero_std = 0.5."""
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=grpo_args(tmp_path), train_dataset=prompts,
                          processing_class=tokenizer)
    trainer.model.train()
    trainer.process_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]))
    logged = trainer._metrics["train"]
    assert logged["reward_std"] == [pytest.approx(2.5 ** 0.5)]
    assert logged["frac_reward_zero_std"] == [0.5]


# ------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    dict(loss_type="grpo"), dict(loss_type="bnpo"), dict(loss_type="dr_grpo"),
    dict(importance_sampling_level="sequence", num_iterations=2),
    dict(scale_rewards="batch", mask_truncated_completions=True, top_entropy_quantile=0.5),
    dict(beta=0.04, epsilon_high=0.28, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
    dict(loss_type="cispo", epsilon_high=5.0, num_iterations=2), dict(loss_type="sapo", num_iterations=2),
    dict(num_iterations=2, off_policy_mask_threshold=0.01, learning_rate=0.1),
    dict(loss_type="luspo", importance_sampling_level="sequence", num_iterations=2),
], ids=["grpo", "bnpo", "dr_grpo", "gspo", "batch-scale", "kl-sampling", "cispo", "sapo", "off-policy-mask", "luspo"])
def test_grpo_variants_run(tiny_model_dir, tokenizer, prompts, tmp_path, overrides):
    args = grpo_args(tmp_path, **overrides)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(logs["loss"]))
    assert ("kl" in logs) == (overrides.get("beta", 0) > 0)
    assert (trainer.ref_model is not None) == (overrides.get("beta", 0) > 0)
    loss_type = overrides.get("loss_type", "dapo")
    assert ("clip_ratio/region_mean" in logs) == (loss_type not in ("cispo", "sapo"))
    assert ("cispo_clip_ratio" in logs) == (loss_type == "cispo")
    assert ("off_policy_masked_ratio" in logs) == ("off_policy_mask_threshold" in overrides)


def test_gdpo_normalises_each_reward_function_in_its_group_before_summing(tiny_model_dir, tokenizer, prompts,
                                                                          tmp_path):
    from posttrain.losses.policy import decoupled_group_rewards

    def starts_with_digit(completions, **kwargs):
        return [float(c[:1].isdigit()) for c in completions]

    args = grpo_args(tmp_path, multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])
    trainer = GRPOTrainer(tiny_model_dir, [token_count_reward, starts_with_digit], args=args, train_dataset=prompts,
                          processing_class=tokenizer)
    per_function = torch.tensor([[3.0, 1.0], [5.0, 0.0], [2.0, 1.0], [2.0, 1.0]] * (args.num_generations // 2))
    per_function = per_function[: 2 * args.num_generations]
    got = trainer.combine_rewards(per_function, per_function.sum(1))
    torch.testing.assert_close(got, decoupled_group_rewards(per_function, torch.tensor([1.0, 0.5]),
                                                            args.num_generations))
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        grpo_args(tmp_path, multi_objective_aggregation="average")


@pytest.mark.parametrize("loss_type,warns", [("dapo", True), ("bnpo", True), ("grpo", False)])
def test_sequence_level_ratios_with_a_token_summed_loss_warn(loss_type, warns, tiny_model_dir, tokenizer, prompts,
                                                             tmp_path, caplog):
    args = grpo_args(tmp_path, importance_sampling_level="sequence", loss_type=loss_type)
    with caplog.at_level("WARNING", logger="posttrain"):
        GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts, processing_class=tokenizer)
    assert ("weights each sequence by its completion length" in caplog.text) == warns


def test_grpo_lora_kl_uses_adapter_free_policy_as_reference(tiny_model_dir, tokenizer, prompts, tmp_path):
    from peft import LoraConfig

    args = grpo_args(tmp_path, beta=0.1, learning_rate=1e-2)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None
    trainer.train()
    kls = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # first step: adapter is zero-initialised, policy == reference
    assert kls[-1] > 0


def test_conversational_prompts_and_evaluation(tiny_model_dir, tokenizer, tmp_path):
    data = make_dataset("addition", "prompt_only", n=24, seed=0, conversational=True)
    args = grpo_args(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8)
    trainer = GRPOTrainer(tiny_model_dir, [accuracy_reward, token_count_reward], args=args, train_dataset=data,
                          eval_dataset=data.select(range(8)), processing_class=tokenizer)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and "eval_reward" in evals[0] and "eval_rewards/token_count_reward/mean" in evals[0]
    # prompts went through the chat template with the generation prompt
    assert trainer.train_dataset[0]["prompt_input_ids"][-3:] == tokenizer("<|im_start|>assistant\n")["input_ids"][-3:]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_num_generations_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="num_generations=3 must divide the generation batch of 8"):
        grpo_args(tmp_path, num_generations=3)
    with pytest.raises(ValueError, match="num_generations >= 2"):
        grpo_args(tmp_path, num_generations=1)
    with pytest.raises(ValueError, match="not both"):
        grpo_args(tmp_path, generation_batch_size=16, steps_per_generation=2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_args(tmp_path, loss_type="ppo")
    with pytest.raises(ValueError, match="epsilon_high=5.0"):
        grpo_args(tmp_path, loss_type="cispo")  # the cap would default to epsilon (0.2)
    with pytest.raises(ValueError, match="sapo_temperature"):
        grpo_args(tmp_path, loss_type="sapo", sapo_temperature_neg=0.0)
    assert grpo_args(tmp_path, generation_batch_size=32).steps_per_generation == 4


@pytest.mark.parametrize("bad, message", [
    (lambda prompts, completions, **k: 1 / 0, "broken_reward.*ZeroDivisionError"),
    (lambda prompts, completions, **k: None, "broken_reward.*None"),
    (lambda prompts, completions, **k: [0.0], "broken_reward.*1 .*8"),
])
def test_bad_reward_function_is_named(tiny_model_dir, tokenizer, prompts, tmp_path, bad, message):
    bad.__name__ = "broken_reward"
    trainer = GRPOTrainer(tiny_model_dir, bad, args=grpo_args(tmp_path), train_dataset=prompts,
                          processing_class=tokenizer)
    with pytest.raises(RewardFunctionError, match=message):
        trainer.train()


def test_long_prompts_keep_their_last_tokens(tiny_model_dir, tokenizer, prompts, tmp_path, caplog):
    from datasets import Dataset

    long = Dataset.from_dict({"prompt": ["a b c d e f g h i j k l m n o p\n"] * 8})
    args = grpo_args(tmp_path, max_prompt_length=5)
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=long,
                              processing_class=tokenizer)
    assert "8 of 8 train prompts are longer than max_prompt_length=5" in caplog.text
    full = tokenizer("a b c d e f g h i j k l m n o p\n")["input_ids"]
    assert trainer.train_dataset[0]["prompt_input_ids"] == full[-5:]


def test_dataset_without_prompt_column(tiny_model_dir, tokenizer, tmp_path):
    data = make_dataset("reverse", "preference", n=8, seed=0)
    with pytest.raises(DatasetFormatError, match="'prompt' column"):
        GRPOTrainer(tiny_model_dir, token_count_reward, args=grpo_args(tmp_path),
                    train_dataset=data.remove_columns("prompt"), processing_class=tokenizer)


def test_too_few_prompts_for_one_generation_batch(tiny_model_dir, tokenizer, prompts, tmp_path):
    with pytest.raises(ValueError, match="one generation batch needs 4"):
        GRPOTrainer(tiny_model_dir, token_count_reward, args=grpo_args(tmp_path, per_device_train_batch_size=16),
                    train_dataset=prompts.select(range(3)), processing_class=tokenizer)


# ------------------------------------------------------------------------------------------------
# the script
# ------------------------------------------------------------------------------------------------


def test_grpo_script_on_local_files(tiny_model_dir, tmp_path):
    from posttrain.cli import main

    data = make_dataset("addition", "prompt_only", n=16, seed=0)
    path = tmp_path / "prompts.jsonl"
    data.to_json(str(path))
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def short(prompts, completions, **kw):\n    return [-len(c) / 10 for c in completions]\n")
    out = tmp_path / "run"
    code = main(["grpo", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(path),
                 "--reward_funcs", "accuracy_reward", f"{rewards}:short", "--reward_weights", "1.0", "0.5",
                 "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
                 "--num_generations", "4", "--max_completion_length", "6", "--report_to", "none",
                 "--save_strategy", "no", "--logging_steps", "1"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert "rewards/short/mean" in rows[0] and "rewards/accuracy_reward/mean" in rows[0]
    assert (out / "config.json").exists()


def test_bf16_reward_models_score_in_the_training_precision(tiny_model_dir, tokenizer, prompts, tmp_path):
    """Under bf16, reward models score inside the training autocast region (as TRL 1.x's GRPO does). One given by
    path stores its linear layers in bf16; one given as an object keeps its float32 weights (its owner may still
    call it outside the region). Both score exactly as the float32 weights under the same autocast, which is not
    what they score in float32."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.kit import build_tiny_model
    from posttrain.rollout import score_with_model

    if not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    rm_dir = str(build_tiny_model("qwen2", head="seq-cls", size="tiny", output_dir=tmp_path / "rm"))
    given = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    trainer = GRPOTrainer(tiny_model_dir, [rm_dir, given, token_count_reward], args=grpo_args(tmp_path, bf16=True),
                          train_dataset=prompts, processing_class=tokenizer,
                          reward_processing_classes=[None, tokenizer, None])
    loaded = trainer.scorer.reward_funcs[0]
    assert {m.weight.dtype for m in loaded.modules() if type(m) is torch.nn.Linear} == {torch.bfloat16}
    assert {p.dtype for p in loaded.get_input_embeddings().parameters()} == {torch.float32}
    assert trainer.scorer.reward_funcs[1] is given and {p.dtype for p in given.parameters()} == {torch.float32}
    texts = [prompts[i]["prompt"] for i in range(6)]
    completions = ["e r s", "a b c", "x", "d c b a", "", "q q q q q"]
    fp32 = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with trainer.autocast_region():
        want = score_with_model(fp32, tokenizer, texts, completions)
    in_fp32 = score_with_model(fp32, tokenizer, texts, completions)
    scores = trainer.scorer(texts, completions, completion_ids=[tokenizer(c)["input_ids"] for c in completions])
    assert torch.equal(scores.per_function[:, 0], want) and torch.equal(scores.per_function[:, 1], want)
    assert not torch.equal(in_fp32, want)
    assert torch.allclose(in_fp32, want, atol=0.05)  # bf16 rounding, nothing more


def test_frozen_model_that_is_the_trained_model_is_refused(tiny_model_dir, tokenizer, prompts, tmp_path):
    """A reward model that shares its parameters with the policy would be frozen with them (training nothing):
    refused at construction with the fix in the message."""
    from posttrain.models.loading import load_pretrained

    policy = load_pretrained(tiny_model_dir, None)
    with pytest.raises(ValueError, match="separate copy"):
        GRPOTrainer(policy, [policy, token_count_reward], args=grpo_args(tmp_path), train_dataset=prompts,
                    processing_class=tokenizer, reward_processing_classes=[tokenizer, None])


def test_bf16_reference_stores_linear_layers_in_bf16(tiny_model_dir, tokenizer, prompts, tmp_path):
    """Under bf16 a reference that only scores keeps its linear layers in bf16 (autocast casts them anyway): its
    log-probs equal those of the float32 weights under the same autocast, bit for bit."""
    if not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=grpo_args(tmp_path, beta=0.1, bf16=True),
                          train_dataset=prompts, processing_class=tokenizer)
    ref, head = trainer.ref_model, trainer.ref_model.get_output_embeddings()
    assert {m.weight.dtype for m in ref.modules() if type(m) is torch.nn.Linear and m is not head} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    ids = trainer.train_dataset["prompt_input_ids"][:4]
    gens = generate(trainer.model, tokenizer, prompt_ids=ids, max_new_tokens=8, do_sample=True, seed=0)
    batch = build_rows(gens.prompt_ids, gens.completion_ids, pad_token_id=tokenizer.pad_token_id)
    trainer.model.eval()
    with torch.no_grad(), trainer.autocast_region():
        want = trainer.token_logps(trainer.model, batch)[0]
    assert torch.equal(trainer.reference_logps(batch), want)


def test_evaluation_samples_num_generations_eval_completions_per_prompt(tiny_model_dir, tokenizer, prompts, tmp_path):
    args = grpo_args(tmp_path, num_generations_eval=2, per_device_eval_batch_size=4)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          eval_dataset=prompts.select(range(4)), processing_class=tokenizer)
    metrics = trainer.evaluate()
    samples = trainer.completion_samples
    assert len(samples) == 4 and [s["prompt"] for s in samples[::2]] == [s["prompt"] for s in samples[1::2]]
    assert len({s["prompt"] for s in samples}) == 2  # 2 prompts x 2 completions (training samples 4 per prompt)
    assert "eval_reward" in metrics
    with pytest.raises(ValueError, match="num_generations_eval must be >= 1"):
        grpo_args(tmp_path, num_generations_eval=0)
