"""Outcome reward modeling: the Bradley-Terry loss, data preparation and errors, RewardTrainer learning, LoRA,
saving, and the `posttrain reward` command."""

import math

import pytest
import torch
from datasets import Dataset

from posttrain.data import DatasetFormatError
from posttrain.data.tokenize import chat_template_ids
from posttrain.losses.reward import bradley_terry_loss, center_rewards_penalty, reward_accuracy
from posttrain.trainers.reward import RewardConfig, RewardDataCollator, RewardTrainer, prepare_reward_dataset
from tests.conftest import train_args


@pytest.fixture(scope="module")
def rm_model_dir(tmp_path_factory):
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", head="seq-cls", size="tiny", output_dir=tmp_path_factory.mktemp("tiny-rm"))


def _pairs(n=8, **kw):
    from posttrain.kit import make_dataset

    return make_dataset("sort", "preference", n=n, seed=0, **kw)


# -- loss -------------------------------------------------------------------------------------------------
def test_bradley_terry_loss_by_hand():
    c, r = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = [math.log1p(math.exp(-1.0)), math.log(2.0), math.log1p(math.exp(2.0))]
    assert torch.allclose(bradley_terry_loss(c, r), torch.tensor(expected))
    # margin: -log sigmoid(r_c - r_r - m)
    m = torch.tensor([1.0, -2.0, 0.5])
    expected_m = [math.log(2.0), math.log1p(math.exp(-2.0)), math.log1p(math.exp(2.5))]
    assert torch.allclose(bradley_terry_loss(c, r, margin=m), torch.tensor(expected_m))
    assert torch.allclose(bradley_terry_loss(c, r, margin=1.0)[0], torch.tensor(math.log(2.0)))
    # centering: + coef * (r_c + r_r)^2, so the mean is TRL's mean(BT) + coef * mean((r_c + r_r)^2)
    centred = bradley_terry_loss(c, r, center_rewards_coefficient=0.1)
    assert torch.allclose(centred, torch.tensor(expected) + 0.1 * torch.tensor([9.0, 0.0, 0.0]))
    assert torch.allclose(center_rewards_penalty(c, r), torch.tensor([9.0, 0.0, 0.0]))
    assert reward_accuracy(c, r).tolist() == [1.0, 0.0, 0.0]  # ties count as wrong
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(c, r[:2])


def test_bradley_terry_gradient_pushes_rewards_apart():
    c = torch.zeros(4, requires_grad=True)
    r = torch.zeros(4, requires_grad=True)
    bradley_terry_loss(c, r).mean().backward()
    assert torch.allclose(c.grad, torch.full((4,), -0.125)) and torch.allclose(r.grad, torch.full((4,), 0.125))


# -- data -------------------------------------------------------------------------------------------------
def test_explicit_and_implicit_prompts_tokenize_identically(tokenizer):
    explicit = prepare_reward_dataset(_pairs(), tokenizer, RewardConfig(output_dir="x", report_to=[]), "train")
    implicit = prepare_reward_dataset(_implicit(_pairs()), tokenizer, RewardConfig(output_dir="x", report_to=[]), "train")
    row = _pairs()[0]
    want = tokenizer(row["prompt"] + row["chosen"])["input_ids"] + [tokenizer.eos_token_id]
    assert explicit[0]["chosen_ids"] == want
    assert explicit["chosen_ids"] == implicit["chosen_ids"]
    assert explicit["rejected_ids"] == implicit["rejected_ids"]


def _implicit(ds):
    return Dataset.from_list([{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in ds])


def test_conversational_pairs_use_the_chat_template(tokenizer):
    from posttrain.kit import make_dataset

    ds = make_dataset("sort", "preference", n=4, seed=0, conversational=True)
    out = prepare_reward_dataset(ds, tokenizer, RewardConfig(output_dir="x", report_to=[]), "train")
    row = ds[0]
    assert out[0]["chosen_ids"] == chat_template_ids(tokenizer, row["prompt"] + row["chosen"])
    assert out[0]["rejected_ids"] == chat_template_ids(tokenizer, row["prompt"] + row["rejected"])
    # implicit-prompt conversations: the whole conversation through the chat template
    imp = Dataset.from_list([{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in ds])
    out2 = prepare_reward_dataset(imp, tokenizer, RewardConfig(output_dir="x", report_to=[]), "train")
    assert out2["chosen_ids"] == out["chosen_ids"]


def test_collator_concatenates_chosen_then_rejected_with_margin(tokenizer):
    ds = _pairs(3).add_column("margin", [0.5, 1.0, 2.0])
    prepared = prepare_reward_dataset(ds, tokenizer, RewardConfig(output_dir="x", report_to=[]), "train")
    assert set(prepared.column_names) == {"chosen_ids", "rejected_ids", "margin"}
    batch = RewardDataCollator(tokenizer.pad_token_id)(list(prepared))
    assert batch["input_ids"].shape[0] == 6 and batch["margin"].tolist() == [0.5, 1.0, 2.0]
    for i in range(3):
        n = len(prepared[i]["rejected_ids"])
        assert batch["input_ids"][3 + i, :n].tolist() == prepared[i]["rejected_ids"]
        assert batch["attention_mask"][3 + i].sum() == n
        assert (batch["input_ids"][3 + i, n:] == tokenizer.pad_token_id).all()


def test_bad_preference_rows_fail_clearly(tokenizer):
    args = RewardConfig(output_dir="x", report_to=[])
    rows = [{"prompt": "Sort: 2 1\n", "chosen": "1 2", "rejected": "2 1"},
            {"prompt": "Sort: 3 1\n", "chosen": "1 3", "rejected": ""}]
    with pytest.raises(DatasetFormatError, match=r"Row 1 \(0-based\), column 'rejected'.*empty"):
        prepare_reward_dataset(Dataset.from_list(rows), tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match="RewardTrainer needs a dataset of kind preference"):
        prepare_reward_dataset(Dataset.from_list([{"prompt": "a", "completion": "b"}]), tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match=r"Row 0 \(0-based\), column 'chosen'.*empty"):
        prepare_reward_dataset(Dataset.from_list([{"chosen": "", "rejected": "Sort: 2 1\n1"}]), tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match=r"Row 0 \(0-based\), column 'margin'"):
        prepare_reward_dataset(Dataset.from_list([{**rows[0], "margin": "big"}]), tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match="is empty"):
        prepare_reward_dataset(Dataset.from_list(rows).select([]), tokenizer, args, "train")


def test_max_length_drops_long_pairs_and_errors_when_none_fit(tokenizer, caplog):
    ds = Dataset.from_list([{"prompt": "Sort: 2 1\n", "chosen": "1 2", "rejected": "2 1"},
                            {"prompt": "Sort: 9 8 7 6 5 4 3 2 1 0 9 8 7 6\n", "chosen": "0 1", "rejected": "1 0"}])
    lengths = [len(tokenizer(r["prompt"] + r["chosen"])["input_ids"]) + 1 for r in ds]
    out = prepare_reward_dataset(ds, tokenizer, RewardConfig(output_dir="x", report_to=[], max_length=lengths[0]), "train")
    assert len(out) == 1 and len(out[0]["chosen_ids"]) == lengths[0]
    assert "dropped 1 of 2 pairs longer than max_length" in caplog.text
    with pytest.raises(DatasetFormatError, match=r"longer than max_length=4 tokens .*Increase max_length"):
        prepare_reward_dataset(ds, tokenizer, RewardConfig(output_dir="x", report_to=[], max_length=4), "train")
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        RewardConfig(output_dir="x", report_to=[], max_length=1)


# -- trainer ----------------------------------------------------------------------------------------------
def _held_out_accuracy(model, tokenizer, ds) -> float:
    from posttrain.rollout import score_with_model

    chosen = score_with_model(model, tokenizer, ds["prompt"], ds["chosen"])
    rejected = score_with_model(model, tokenizer, ds["prompt"], ds["rejected"])
    return (chosen > rejected).float().mean().item()


def test_reward_model_learns_sorted_answers(tokenizer, tmp_path):
    """A tiny RM (0.14M parameters) trained on 1000 synthetic pairs ("Sort: 3 1 2" -> the sorted list vs. a wrong
    answer: out of order, a digit missing or replaced) ranks held-out pairs right >= 90% of the time, from ~50%
    before training. Measured with model/data seeds 0-4: 0.39-0.49 before, 0.94-0.96 after (~6 s of training).
    Over training seeds 0/1/2 (`make test-seeds`): 0.49 -> 0.945 / 0.945 / 0.925."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.kit import build_tiny_model, make_dataset

    train = make_dataset("sort", "preference", n=1000, seed=0)
    test = make_dataset("sort", "preference", n=200, seed=1, exclude=train)
    model = build_tiny_model("qwen2", head="seq-cls", size="tiny")
    args = train_args(RewardConfig, tmp_path, per_device_train_batch_size=32, learning_rate=1e-3, num_train_epochs=6,
                      lr_scheduler_type="constant", logging_steps=25)
    before = _held_out_accuracy(model, tokenizer, test)
    trainer = RewardTrainer(model, args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    after = _held_out_accuracy(trainer.model, tokenizer, test)
    print(f"held-out pairwise accuracy: {before:.3f} -> {after:.3f}")
    assert 0.3 <= before <= 0.7, before
    assert after >= 0.90, (before, after)
    logs = [h for h in trainer.state.log_history if "loss" in h and "accuracy" in h]
    for key in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "mean_reward", "min_reward",
                "max_reward", "num_tokens"):
        assert key in logs[-1], key
    assert logs[-1]["rewards/chosen"] > logs[-1]["rewards/rejected"] and logs[-1]["margin"] > 0
    # the saved folder is an ordinary sequence classifier that scores like the trained model
    trainer.save_model(str(tmp_path / "rm"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert loaded.config.num_labels == 1 and loaded.config.pad_token_id == tokenizer.pad_token_id
    assert _held_out_accuracy(loaded, tokenizer, test) == after


def test_eval_metrics_center_rewards_and_pad_token_id(tokenizer, tmp_path):
    from posttrain.kit import build_tiny_model

    model = build_tiny_model("qwen2", head="seq-cls", size="tiny", pad_token_id=None)
    assert model.config.pad_token_id is None
    ds = _pairs(16).add_column("margin", [0.1] * 16)
    args = train_args(RewardConfig, tmp_path, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=8,
                      center_rewards_coefficient=0.01)
    trainer = RewardTrainer(model, args, train_dataset=ds, eval_dataset=ds, processing_class=tokenizer)
    assert trainer.model.config.pad_token_id == tokenizer.pad_token_id
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_accuracy", "eval_margin", "eval_rewards/chosen", "eval_rewards/rejected"):
        assert key in metrics, key
    out = trainer.predict(trainer.eval_dataset)
    assert out.predictions.shape == (16, 2) and (out.label_ids == 0).all()


def test_loads_by_path_with_one_label_and_rejects_other_heads(rm_model_dir, tiny_model_dir, tokenizer, tmp_path):
    ds = _pairs(4)
    trainer = RewardTrainer(str(rm_model_dir), train_args(RewardConfig, tmp_path), train_dataset=ds)
    assert trainer.model.config.num_labels == 1
    # a causal-LM checkpoint becomes a fresh 1-output classifier
    trainer = RewardTrainer(str(tiny_model_dir), train_args(RewardConfig, tmp_path), train_dataset=ds)
    assert trainer.model.score.out_features == 1
    from posttrain.kit import build_tiny_model

    with pytest.raises(ValueError, match="num_labels=1"):
        RewardTrainer(build_tiny_model("qwen2", head="token-cls"), train_args(RewardConfig, tmp_path),
                      train_dataset=ds, processing_class=tokenizer)


def test_lora_reward_model_trains_and_saves_the_score_head(rm_model_dir, tokenizer, tmp_path):
    from peft import AutoPeftModelForSequenceClassification, LoraConfig

    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # fixed to SEQ_CLS
    args = train_args(RewardConfig, tmp_path, max_steps=3, per_device_train_batch_size=4)
    trainer = RewardTrainer(str(rm_model_dir), args, train_dataset=_pairs(12), processing_class=tokenizer,
                            peft_config=lora)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    score_before = trainer.model.base_model.model.score.modules_to_save["default"].weight.clone()
    trainer.train()
    score_after = trainer.model.base_model.model.score.modules_to_save["default"].weight
    assert not torch.equal(score_before, score_after)
    trainer.save_model(str(tmp_path / "lora-rm"))
    loaded = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "lora-rm")).eval()
    ids = torch.tensor([tokenizer("Sort: 2 1\n1 2")["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6)


def test_reward_cli_trains_on_local_files(rm_model_dir, tmp_path):
    from posttrain.cli import main
    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("sort", "preference", n=16, seed=0), tmp_path / "pairs.jsonl")
    out = tmp_path / "cli-rm"
    rc = main(["reward", "--model_name_or_path", str(rm_model_dir), "--dataset_name", data, "--output_dir", str(out),
               "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
               "--save_strategy", "no", "--center_rewards_coefficient", "0.01"])
    assert rc == 0
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


def test_example_script_runs_on_local_files(rm_model_dir, tmp_path, monkeypatch):
    import runpy
    import sys

    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("sort", "preference", n=8, seed=0, conversational=True), tmp_path / "conv.jsonl")
    script = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "scripts" / "reward_modeling.py")
    monkeypatch.setattr(sys, "argv", [script, "--model_name_or_path", str(rm_model_dir), "--dataset_name", data,
                                      "--output_dir", str(tmp_path / "ex"), "--max_steps", "1", "--report_to", "none",
                                      "--per_device_train_batch_size", "4", "--save_strategy", "no"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 0
    assert (tmp_path / "ex" / "config.json").exists()
