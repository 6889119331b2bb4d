"""XPOTrainer: it learns, the second completion of each pair comes from the reference, the exploration term and
per-epoch alpha reach the loss; the online-preference scripts run on local files."""

import json
import os
import runpy
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import XPOConfig, XPOTrainer
from posttrain.kit import make_dataset
from posttrain.rollout.rewards import accuracy_reward
from tests.conftest import reverse_prompts
from tests.trainers.test_online_dpo import LEARNING, judged_win_rate, odpo_args, sampled_accuracy, token_count_reward

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def prompts():
    return make_dataset("reverse", "prompt_only", n=32, seed=3, min_len=3, max_len=5)


def test_xpo_learns_reverse_task(sft_reverse_dir, tokenizer, tmp_path):
    """XPO (policy vs reference completions ranked by the exact-answer reward) raises the held-out sampled exact
    match (temperature 1, 4 per prompt) by >= 0.15 in 100 steps. In 60 steps it gained +0.14 / +0.29 / +0.34 over
    training seeds 0/1/2 against a 0.10 threshold here, and +0.06 on another machine (issue 18); in 100 steps:
    +0.25 / +0.35 / +0.41 (0.253 -> 0.500, 0.455 -> 0.802, 0.407 -> 0.818), win rates 0.62 / 0.67 / 0.71."""
    model = AutoModelForCausalLM.from_pretrained(sft_reverse_dir)
    test = reverse_prompts(100, seed=1)
    train = reverse_prompts(1024, seed=5, exclude=test)
    before = sampled_accuracy(model, tokenizer, test)
    args = odpo_args(tmp_path, XPOConfig, **{**LEARNING, "max_steps": 100})
    trainer = XPOTrainer(model, reward_funcs=accuracy_reward, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    after = sampled_accuracy(model, tokenizer, test)
    wins = judged_win_rate(model, sft_reverse_dir, tokenizer, test)
    print(f"XPO reverse: sampled exact match {before:.3f} -> {after:.3f}, win rate {wins:.3f}")
    assert wins >= 0.53, wins  # the judge prefers the trained policy to the starting one
    assert after - before >= 0.15, (before, after)
    logged = trainer.state.log_history[0]
    for name in ("loss/dpo", "loss/xpo", "objective/kl", "objective/entropy", "objective/model_scores",
                 "objective/ref_scores", "objective/scores_margin", "rewards/chosen", "rewards/accuracies",
                 "logps/chosen", "val/model_contain_eos_token", "val/ref_contain_eos_token", "alpha", "beta"):
        assert name in logged, name


def test_second_completion_comes_from_the_reference(tiny_model_dir, tokenizer, prompts, tmp_path, monkeypatch):
    import posttrain.rollout.backends as backends  # the policy's completions: the default rollout backend
    import posttrain.trainers.online_dpo as online_dpo  # the reference's completions

    trainer = XPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=odpo_args(tmp_path),
                         train_dataset=prompts, processing_class=tokenizer)
    calls = []
    for module in (backends, online_dpo):
        real = module.generate
        monkeypatch.setattr(module, "generate", lambda model, *a, _real=real, **k: calls.append(
            (model, len(k["prompt_ids"]))) or _real(model, *a, **k))
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(2)]
    trainer.model.train()
    trainer.generate_and_score(rows, 1)
    who = [("policy" if m is trainer.model else "reference" if m is trainer.ref_model else "other", n) for m, n in calls]
    assert sorted(who) == [("policy", 4), ("reference", 4)], who


def test_exploration_term_and_alpha_per_epoch(tiny_model_dir, tokenizer, prompts, tmp_path):
    """loss/xpo = alpha * log pi(y_ref) (negative log-probs: negative); alpha follows the per-epoch list."""
    args = odpo_args(tmp_path, XPOConfig, alpha=[0.1, 0.2], max_steps=10)
    trainer = XPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                         processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "alpha" in h]
    assert [h["alpha"] for h in logs] == [0.1] * 8 + [0.2] * 2
    first = logs[0]
    # first step: policy == reference, so the DPO part is log 2 on decided pairs and the XPO part alpha * logp
    assert first["loss/dpo"] == pytest.approx(0.6931, abs=1e-3)
    assert first["loss/xpo"] < 0


# ------------------------------------------------------------------------------------------------
# scripts (all three online preference commands)
# ------------------------------------------------------------------------------------------------


COMMON = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--max_new_tokens", "6", "--report_to", "none",
          "--save_strategy", "no", "--logging_steps", "1"]


def read_log(out):
    return [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"), encoding="utf-8")]


@pytest.mark.parametrize("command, metric", [("online-dpo", "objective/kl"), ("xpo", "loss/xpo"),
                                             ("nash-md", "loss/score")])
def test_cli_on_local_files(tiny_model_dir, tmp_path, command, metric):
    from posttrain.cli import main

    path = tmp_path / "prompts.jsonl"
    make_dataset("addition", "prompt_only", n=16, seed=0).to_json(str(path))
    out = tmp_path / "run"
    code = main([command, "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(path),
                 "--reward_funcs", "accuracy", "--output_dir", str(out), *COMMON])
    assert code == 0
    assert metric in read_log(out)[0] and (out / "config.json").exists()


def test_example_script_with_a_local_lm_judge(tiny_model_dir, tmp_path, monkeypatch):
    path = os.path.join(ROOT, "examples", "scripts", "dpo_online.py")
    data = tmp_path / "prompts.jsonl"
    make_dataset("addition", "prompt_only", n=16, seed=0).to_json(str(data))
    out = str(tmp_path / "example")
    monkeypatch.setattr(sys, "argv", [path, "--model_name_or_path", str(tiny_model_dir), "--judge",
                                      str(tiny_model_dir), "--dataset_name", str(data), "--output_dir", out, *COMMON])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(path, run_name="__main__")
    assert exit_info.value.code == 0
    assert read_log(out)[-1]["step"] == 2
    for name in ("dpo_online.py", "xpo.py", "nash_md.py"):
        source = open(os.path.join(ROOT, "examples", "scripts", name), encoding="utf-8").read()
        assert f"accelerate launch examples/scripts/{name}" in source and "DEFAULT_DATASET" in source


def test_reference_that_samples_keeps_float32_weights(tiny_model_dir, tokenizer, prompts, tmp_path):
    """XPO samples from its reference (outside the training autocast region), so under bf16 its weights stay as
    loaded; references that only score store their linear layers in bf16 (tests/trainers/test_grpo.py)."""
    from posttrain.trainers.base import bf16_supported

    if not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    trainer = XPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=odpo_args(tmp_path, XPOConfig, bf16=True),
                         train_dataset=prompts, processing_class=tokenizer)
    assert {p.dtype for p in trainer.ref_model.parameters()} == {torch.float32}
