"""What a TRL script passes and expects, accepted as TRL does (issue 22): a plain TrainingArguments, ShareGPT rows,
chat_template_kwargs (config and per-row column), model tags; a transformed dataset is refused clearly."""

import copy
import math
import types

import datasets
import torch
import pytest
from transformers import TrainingArguments

from posttrain import (CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer,
                       RewardConfig, RewardTrainer, SFTConfig, SFTTrainer)
from posttrain.kit import build_tiny_model, make_dataset

from conftest import train_args

# a template with an argument of its own: role names in capitals when `shout`
SHOUT = ("{% for m in messages %}<|im_start|>{{ m.role.upper() if shout else m.role }}\n{{ m.content }}<|im_end|>\n"
         "{% endfor %}{% if add_generation_prompt %}<|im_start|>{{ 'ASSISTANT' if shout else 'assistant' }}\n"
         "{% endif %}")


@pytest.fixture
def shouting(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = SHOUT
    return tok


def _rendered_ids(tok, messages, shout, **kwargs):
    return tok(tok.apply_chat_template(messages, tokenize=False, shout=shout, **kwargs))["input_ids"]


def test_a_plain_training_arguments_becomes_the_trainers_config(tiny_model_dir, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-4, per_device_train_batch_size=2,
                             max_steps=1, report_to=[], save_strategy="no")
    trainer = SFTTrainer(tiny_model_dir, args=args, train_dataset=make_dataset("addition", "language_modeling", n=4))
    assert isinstance(trainer.args, SFTConfig)
    assert (trainer.args.learning_rate, trainer.args.per_device_train_batch_size) == (3e-4, 2)
    assert trainer.args.max_length == SFTConfig.max_length  # SFT's own fields keep their defaults
    trainer.train()


def test_sharegpt_conversations_train_as_messages(tiny_model_dir, tokenizer, tmp_path):
    chatml = make_dataset("addition", "language_modeling", n=6, conversational=True)
    sharegpt = chatml.map(lambda ex: {"conversations": [{"from": m["role"], "value": m["content"]}
                                                         for m in ex["messages"]]}, remove_columns=["messages"])
    ours = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path), train_dataset=sharegpt,
                      processing_class=tokenizer)
    reference = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path), train_dataset=chatml,
                           processing_class=tokenizer)
    assert ours.train_dataset["input_ids"] == reference.train_dataset["input_ids"]


def test_a_dataset_with_a_transform_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    data = datasets.Dataset.from_dict({"text": ["hello world"]}).with_transform(lambda batch: batch)
    with pytest.raises(ValueError, match=r"Dataset\.with_transform\(\).*skip_prepare_dataset.*trainer-ready"):
        SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path), train_dataset=data)
    with pytest.raises(ValueError, match=r"with_transform.*dataset\.map\(\.\.\.\) first\.$"):
        DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path),
                   train_dataset=make_dataset("addition", "preference", n=2).with_transform(lambda batch: batch))


def test_the_model_is_tagged_with_the_library_and_the_method(tiny_model_dir, tmp_path):
    trainer = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path),
                         train_dataset=make_dataset("addition", "preference", n=2))
    assert trainer.model.model_tags == ["posttrain", "dpo"]


def test_sft_chat_template_kwargs_from_the_config_and_each_row(tiny_model_dir, shouting, tmp_path):
    data = make_dataset("addition", "language_modeling", n=2, conversational=True)
    data = data.add_column("chat_template_kwargs", [{}, {"shout": False}])
    trainer = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, chat_template_kwargs={"shout": True}),
                         train_dataset=data, processing_class=shouting)
    rows = trainer.train_dataset["input_ids"]
    assert rows[0] == _rendered_ids(shouting, data[0]["messages"], True)  # the config's
    assert rows[1] == _rendered_ids(shouting, data[1]["messages"], False)  # the row's, over the config's
    assert rows[0] != rows[1][: len(rows[0])]


def test_dpo_reward_and_grpo_render_prompts_with_chat_template_kwargs(tiny_model_dir, shouting, tmp_path):
    pairs = make_dataset("addition", "preference", n=2, conversational=True)
    dpo = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, chat_template_kwargs={"shout": True}),
                     train_dataset=pairs, processing_class=shouting)
    prompt = _rendered_ids(shouting, pairs[0]["prompt"], True, add_generation_prompt=True)
    assert dpo.train_dataset[0]["prompt_ids"] == prompt

    reward = RewardTrainer(build_tiny_model("qwen2", head="seq-cls", size="tiny"),
                           args=train_args(RewardConfig, tmp_path, chat_template_kwargs={"shout": True}),
                           train_dataset=pairs, processing_class=shouting)
    assert reward.train_dataset[0]["chosen_ids"][: len(prompt)] == prompt

    prompts = make_dataset("addition", "prompt_only", n=2, conversational=True)
    prompts = prompts.add_column("chat_template_kwargs", [{"shout": True}, {"shout": False}])
    grpo = GRPOTrainer(tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                       args=train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=2),
                       train_dataset=prompts, processing_class=shouting)
    for i, shout in enumerate((True, False)):
        assert grpo.train_dataset[i]["prompt_input_ids"] == _rendered_ids(shouting, prompts[i]["prompt"], shout,
                                                                          add_generation_prompt=True)


def test_import_utils_answer_whether_each_package_imports():
    import importlib.util

    from posttrain import import_utils

    for name, module in (("is_deepspeed_available", "deepspeed"), ("is_vllm_available", "vllm"),
                         ("is_liger_kernel_available", "liger_kernel"), ("is_jmespath_available", "jmespath")):
        assert getattr(import_utils, name)() == (importlib.util.find_spec(module) is not None)
    assert not import_utils._available("no_such_package_anywhere")
    assert not import_utils._available("torch", min_version="999.0")


@pytest.mark.parametrize("trainer_cls,config_cls,kind", [(DPOTrainer, DPOConfig, "preference"),
                                                          (KTOTrainer, KTOConfig, "unpaired_preference")])
def test_compute_metrics_gets_each_examples_implicit_rewards(trainer_cls, config_cls, kind, tiny_model_dir, tmp_path):
    seen = []

    def accuracy(pred):
        seen.append(pred)
        scores, labels = pred.predictions, pred.label_ids
        right = scores.argmax(-1) == labels if scores.ndim == 2 else (scores > 0) == labels.astype(bool)
        return {"my_accuracy": float(right.mean())}

    data = make_dataset("addition", kind, n=6)
    trainer = trainer_cls(tiny_model_dir, args=train_args(config_cls, tmp_path, max_steps=1), train_dataset=data,
                          eval_dataset=data, compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_my_accuracy"] <= 1.0
    (pred,) = seen
    if kind == "preference":  # (chosen, rejected) rewards of each pair; label 0: the chosen one
        assert pred.predictions.shape == (6, 2) and (pred.label_ids == 0).all()
        assert metrics["eval_rewards/accuracies"] == pytest.approx(metrics["eval_my_accuracy"])
    else:  # each row's reward and its label
        assert pred.predictions.shape == (6,) and sorted(pred.label_ids.tolist()) == sorted(int(x) for x in data["label"])


def test_evaluating_a_new_dataset_once_the_initial_policy_is_trained_is_refused(tiny_model_dir, tmp_path):
    data = make_dataset("addition", "preference", n=4)
    trainer = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, max_steps=1, precompute_ref_log_probs=True),
                         train_dataset=data)
    assert trainer.evaluate(eval_dataset=data)["eval_loss"] > 0  # before training the policy is the reference
    trainer.train()
    with pytest.raises(ValueError, match="Cannot compute reference log-probs for a dataset passed to evaluate"):
        trainer.evaluate(eval_dataset=make_dataset("addition", "preference", n=4, seed=5))


def test_trl_module_paths_name_posttrains_classes():
    import posttrain
    from posttrain.data import DataCollatorForLanguageModeling
    from posttrain.data.preference import DataCollatorForPreference as DPOCollator
    from posttrain.trainer import dpo_trainer, grpo_trainer, kto_trainer, reward_trainer, rloo_trainer, sft_trainer
    from posttrain.trainers.reward import RewardDataCollator

    assert sft_trainer.SFTTrainer is posttrain.SFTTrainer and sft_trainer.DataCollatorForLanguageModeling is \
        DataCollatorForLanguageModeling
    assert dpo_trainer.DataCollatorForPreference is DPOCollator
    assert reward_trainer.DataCollatorForPreference is RewardDataCollator  # TRL's name for the reward pairs' collator
    assert (kto_trainer.KTOTrainer, grpo_trainer.GRPOTrainer, rloo_trainer.RLOOTrainer) == \
        (posttrain.KTOTrainer, posttrain.GRPOTrainer, posttrain.RLOOTrainer)


def test_collators_and_pre_tokenized_data_take_trl_1x_column_names(tiny_model_dir, tokenizer, tmp_path):
    from posttrain.trainer.dpo_trainer import DataCollatorForPreference
    from posttrain.trainer.kto_trainer import DataCollatorForUnpairedPreference

    old = [{"prompt_input_ids": [1, 2, 3], "chosen_input_ids": [4, 5], "rejected_input_ids": [6]}]
    new = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}]
    pairs = DataCollatorForPreference(pad_token_id=0)
    for key, value in pairs(old).items():
        torch.testing.assert_close(pairs(new)[key], value)
    unpaired = DataCollatorForUnpairedPreference(pad_token_id=0)
    rows_old = [{"prompt_input_ids": [1, 2], "completion_input_ids": [3], "label": True}]
    rows_new = [{"prompt_ids": [1, 2], "completion_ids": [3], "label": True}]
    for key, value in unpaired(rows_old).items():
        torch.testing.assert_close(unpaired(rows_new)[key], value)

    # DPO's prepared splits carry TRL 1.x's names (CPO's TRL 0.x's); pre-tokenized data may use either
    raw = make_dataset("addition", "preference", n=4)
    prepared = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path), train_dataset=raw,
                          processing_class=tokenizer).train_dataset
    assert prepared.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    cpo = CPOTrainer(tiny_model_dir, args=train_args(CPOConfig, tmp_path), train_dataset=raw, processing_class=tokenizer)
    assert cpo.train_dataset.column_names == ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]
    for given in (prepared, cpo.train_dataset):
        again = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path), train_dataset=given,
                           processing_class=tokenizer).train_dataset
        assert again.to_list() == prepared.to_list()


def test_reward_data_uses_trl_1x_names_and_reads_older_ones_with_a_warning(tokenizer, tmp_path):
    model = build_tiny_model("qwen2", head="seq-cls", size="tiny")
    prepared = RewardTrainer(model, args=train_args(RewardConfig, tmp_path), processing_class=tokenizer,
                             train_dataset=make_dataset("addition", "preference", n=4)).train_dataset
    assert set(prepared.column_names) == {"chosen_ids", "rejected_ids"}
    older = prepared.rename_columns({"chosen_ids": "chosen_input_ids", "rejected_ids": "rejected_input_ids"})
    with pytest.warns(FutureWarning, match="'chosen_input_ids' is an older name of 'chosen_ids'"):
        again = RewardTrainer(model, args=train_args(RewardConfig, tmp_path), processing_class=tokenizer,
                              train_dataset=older).train_dataset
    assert again.to_list() == prepared.to_list()


def test_pad_token_and_trust_remote_code_reach_the_tokenizer_and_the_loader(tiny_model_dir, tmp_path, monkeypatch):
    from posttrain.trainers import base

    data = make_dataset("addition", "language_modeling", n=2)
    trainer = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, pad_token="<|endoftext|>"),
                         train_dataset=data)
    assert trainer.processing_class.pad_token == "<|endoftext|>"
    assert trainer.data_collator.pad_token_id == trainer.processing_class.convert_tokens_to_ids("<|endoftext|>")
    with pytest.raises(ValueError, match="pad_token='<no such token>' is not a token of the tokenizer's vocabulary"):
        SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, pad_token="<no such token>"),
                   train_dataset=data)
    seen = {}
    real = base.load_pretrained

    def spy(name, auto_class=None, **kwargs):
        seen.update(kwargs)
        return real(name, auto_class, **kwargs)

    monkeypatch.setattr(base, "load_pretrained", spy)
    SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, trust_remote_code=True), train_dataset=data)
    assert seen["trust_remote_code"] is True


def test_online_trainers_expose_their_reward_functions_and_check_processing_classes(tiny_model_dir, tokenizer,
                                                                                   tmp_path):
    def one(completions, **kwargs):
        return [1.0] * len(completions)

    def two(completions, **kwargs):
        return [2.0] * len(completions)

    prompts = make_dataset("addition", "prompt_only", n=4)
    args = train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=2)
    trainer = GRPOTrainer(tiny_model_dir, reward_funcs=[one, two], args=args, train_dataset=prompts,
                          reward_processing_classes=[None, None])
    assert trainer.reward_funcs == [one, two] and trainer.reward_processing_classes == [None, None]
    assert trainer.reward_weights.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="1 reward_processing_classes for 2 reward functions: their numbers must match"):
        GRPOTrainer(tiny_model_dir, reward_funcs=[one, two], args=args, train_dataset=prompts,
                    reward_processing_classes=tokenizer)


def test_trls_dft_loss_function_is_dfts_loss_on_the_shifted_labels():
    from posttrain.trainer.sft_trainer import dft_loss

    logits = torch.zeros(2, 3, 2)  # two equally likely tokens: DFT's weight p = 1/2 halves the cross-entropy
    labels = torch.tensor([[1, 0, 0], [0, 1, -100]])
    loss = dft_loss(types.SimpleNamespace(logits=logits), labels, num_items_in_batch=3)
    torch.testing.assert_close(loss, torch.tensor(math.log(2) / 2))


def test_a_reward_model_given_without_a_tokenizer_reads_its_own_or_the_policys(tiny_model_dir, tokenizer, tmp_path):
    from posttrain import XPOConfig, XPOTrainer

    prompts = make_dataset("addition", "prompt_only", n=4)
    saved = build_tiny_model("qwen2", head="seq-cls", size="tiny", output_dir=tmp_path / "rm")  # a folder
    in_memory = build_tiny_model("qwen2", head="seq-cls", size="tiny")  # no folder: the policy's tokenizer
    args = train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=2)
    from transformers import AutoModelForSequenceClassification

    grpo = GRPOTrainer(tiny_model_dir, reward_funcs=AutoModelForSequenceClassification.from_pretrained(saved),
                       args=args, train_dataset=prompts, processing_class=tokenizer)
    (own,) = grpo.reward_processing_classes
    assert own is not tokenizer and own.name_or_path == str(saved)
    xpo = XPOTrainer(tiny_model_dir, reward_funcs=in_memory, processing_class=tokenizer, train_dataset=prompts,
                     args=train_args(XPOConfig, tmp_path, per_device_train_batch_size=2))
    assert xpo.reward_processing_classes == [tokenizer]


def test_trls_experimental_ppo_paths_hold_the_masked_statistics():
    from posttrain.experimental.ppo import AutoModelForSeq2SeqLMWithValueHead, PPOTrainer
    from posttrain.experimental.ppo.ppo_trainer import PPOTrainer as again
    from posttrain.experimental.ppo.ppo_trainer import masked_mean, masked_var, masked_whiten

    x, mask = torch.tensor([5.0, 1.0, 2.0, 9.0]), torch.tensor([0, 1, 1, 0]).bool()
    assert again is PPOTrainer and AutoModelForSeq2SeqLMWithValueHead.transformers_parent_class is not None
    assert float(masked_mean(x, mask)) == 1.5 and float(masked_var(x, mask)) == float(torch.var(x[1:3]))
    torch.testing.assert_close(masked_whiten(x, mask)[1:3], (x[1:3] - 1.5) * torch.rsqrt(torch.var(x[1:3]) + 1e-8))


def test_reward_functions_get_trls_log_extra_and_log_metric(tiny_model_dir, tokenizer, tmp_path):
    def reward(completions, log_extra, log_metric, **kwargs):
        log_extra("first_chars", [c[:3] for c in completions])
        log_metric("custom_accuracy", 0.75)
        return [float(len(c)) for c in completions]

    args = train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=4, max_steps=1,
                      max_completion_length=4, log_completions=True)
    trainer = GRPOTrainer(tiny_model_dir, reward_funcs=reward, args=args, processing_class=tokenizer,
                          train_dataset=make_dataset("addition", "prompt_only", n=8))
    trainer.train()
    assert trainer.state.log_history[0]["custom_accuracy"] == 0.75
    samples = trainer.completion_samples
    assert samples and all(s["first_chars"] == s["completion"][:3] for s in samples)


def test_activation_offloading_keeps_saved_activations_on_the_cpu_with_the_same_training(tiny_model_dir, tmp_path,
                                                                                         monkeypatch):
    from posttrain.trainers import base

    data = make_dataset("addition", "language_modeling", n=8)
    with pytest.warns(UserWarning, match="activation_offloading=True has no effect here"):
        SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, activation_offloading=True), train_dataset=data)
    monkeypatch.setattr(base, "has_accelerator", lambda: True)  # as on a GPU machine: the hooks are installed
    entered = []
    real = torch.autograd.graph.save_on_cpu

    def spy(*args, **kwargs):
        entered.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", spy)
    losses = []
    for offload in (False, True):
        trainer = SFTTrainer(tiny_model_dir, train_dataset=data,
                             args=train_args(SFTConfig, tmp_path / str(offload), max_steps=2, activation_offloading=offload))
        trainer.train()
        losses.append([row["loss"] for row in trainer.state.log_history if "loss" in row])
    assert len(entered) == 2 and losses[0] == losses[1]


def test_completions_no_reward_function_scores_are_named_in_the_warning(tiny_model_dir, tokenizer, tmp_path, caplog):
    def abstains(completions, **kwargs):
        return [None] * len(completions)

    args = train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=2, max_steps=1,
                      max_completion_length=4)
    trainer = GRPOTrainer(tiny_model_dir, reward_funcs=abstains, args=args, processing_class=tokenizer,
                          train_dataset=make_dataset("addition", "prompt_only", n=4))
    with caplog.at_level("WARNING", logger="posttrain"):
        trainer.train()
    assert "All reward functions returned None for the following kwargs: {'prompt':" in caplog.text


def test_online_trainers_sample_as_their_generation_config_says(tiny_model_dir, tokenizer, tmp_path):
    args = train_args(GRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=4, max_steps=1,
                      max_completion_length=6, temperature=0.7, top_p=0.9)
    trainer = GRPOTrainer(tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          processing_class=tokenizer, train_dataset=make_dataset("addition", "prompt_only", n=8))
    config = trainer.generation_config
    assert (config.max_new_tokens, config.temperature, config.top_p) == (6, 0.7, 0.9)
    trainer.generation_config.max_new_tokens = 2
    seen, real = [], trainer.rollout_backend.generate

    def generate(prompt_ids, **kwargs):
        seen.append(kwargs)
        return real(prompt_ids, **kwargs)

    trainer.rollout_backend.generate = generate
    trainer.train()
    assert seen and all(kw["max_new_tokens"] == 2 and kw["temperature"] == 0.7 for kw in seen)
