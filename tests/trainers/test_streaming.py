"""Streamed datasets (``datasets.IterableDataset``) in every kind of trainer, and raw datasets given to ``evaluate``
(issue 22; data/streaming.py). A stream is read in the order a map-style split is evaluated in, so evaluating one
equals evaluating the other; training on one moves the weights; what cannot stream says so."""

import pytest
import torch
from datasets import Dataset, IterableDataset

from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, PRMConfig, PRMTrainer,
                       RewardConfig, RewardTrainer, SFTConfig, SFTTrainer)
from posttrain.data import DatasetFormatError, column_names, first_row, pack_stream, require_sized
from posttrain.data.sampling import RepeatedPromptSampler, RepeatedPromptStream
from posttrain.kit import build_tiny_model, make_dataset

from conftest import train_args


def _stream(kind, n=12, seed=0, **kwargs):
    return make_dataset("addition", kind, n=n, seed=seed, **kwargs).to_iterable_dataset()


def _changed(before, model):
    return any(not torch.equal(p, model.get_parameter(n)) for n, p in before.items())


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


# -- the data layer ------------------------------------------------------------------------------------------
def test_a_mapped_streams_columns_are_read_from_its_first_row():
    stream = _stream("prompt_completion").map(lambda ex: {"extra": 1})
    assert stream.column_names is None  # a map forgets a stream's features
    assert set(column_names(stream)) == {"prompt", "completion", "answer", "extra"}


def test_an_empty_stream_is_a_clear_error():
    empty = IterableDataset.from_generator(lambda: iter(()))
    with pytest.raises(DatasetFormatError, match="The train dataset is empty"):
        first_row(empty, "train")


def test_what_needs_the_whole_split_refuses_a_stream():
    with pytest.raises(ValueError, match="precompute_ref_log_probs=True is not supported with IterableDataset: it "
                                         "needs the whole train dataset"):
        require_sized(_stream("preference"), "train", "precompute_ref_log_probs=True")
    require_sized(make_dataset("addition", "preference", n=4), "train", "anything")  # a Dataset passes


def test_a_packed_stream_keeps_every_token_in_rows_of_at_most_max_length():
    rows = [list(range(1, n + 1)) for n in (5, 3, 7, 2, 6, 4)]
    stream = Dataset.from_dict({"input_ids": rows}).to_iterable_dataset()
    packed = list(pack_stream(stream, 8, rows_at_a_time=4))
    assert all(len(r["input_ids"]) <= 8 and sum(r["seq_lengths"]) == len(r["input_ids"]) for r in packed)
    assert sorted(t for r in packed for t in r["input_ids"]) == sorted(t for r in rows for t in r)
    # rounds of 4 rows are packed apart: {7}, {5, 3}, {2} then {6}, {4}: 5 rows (the whole split at once packs in 4)
    assert [r["seq_lengths"] for r in packed] == [[7], [5, 3], [2], [6], [4]]


def test_the_prompt_stream_reads_in_the_samplers_order():
    rows = [{"i": i} for i in range(7)]
    sampler = RepeatedPromptSampler(7, num_generations=3, prompts_per_batch=2, repeats=2, shuffle=False)
    stream = RepeatedPromptStream(rows, num_generations=3, prompts_per_batch=2, repeats=2)
    assert [r["i"] for r in stream] == list(sampler)  # the last, unfilled batch (prompt 6) is dropped by both


# -- offline trainers --------------------------------------------------------------------------------------
def test_sft_trains_on_a_stream_and_evaluates_one_as_the_same_dataset(tiny_model_dir, tmp_path):
    # one evaluation batch, so that the loss does not depend on the order the rows are read in
    data = make_dataset("addition", "prompt_completion", n=12, seed=1)
    trainer = SFTTrainer(str(tiny_model_dir), args=train_args(SFTConfig, tmp_path, max_steps=2,
                                                              per_device_train_batch_size=4,
                                                              per_device_eval_batch_size=16),
                         train_dataset=_stream("prompt_completion"))
    assert trainer.args.accelerator_config.dispatch_batches is False  # each process reads its share
    before = _snapshot(trainer)
    trainer.train()
    assert _changed(before, trainer.model)
    raw = trainer.evaluate(eval_dataset=data)["eval_loss"]
    streamed = trainer.evaluate(eval_dataset=data.to_iterable_dataset())["eval_loss"]
    assert streamed == pytest.approx(raw, rel=1e-6)
    both = trainer.evaluate(eval_dataset={"a": data, "b": data.to_iterable_dataset()})
    assert both["eval_a_loss"] == pytest.approx(raw, rel=1e-6) and both["eval_b_loss"] == pytest.approx(raw, rel=1e-6)


def test_sft_packs_a_stream_as_it_is_read(tiny_model_dir, tmp_path):
    trainer = SFTTrainer(str(tiny_model_dir), args=train_args(SFTConfig, tmp_path, max_steps=2, packing=True,
                                                              max_length=48, per_device_train_batch_size=2),
                         train_dataset=_stream("language_modeling"))
    row = next(iter(trainer.train_dataset))
    assert len(row["input_ids"]) <= 48 and len(row["seq_lengths"]) > 1
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_stream_without_max_steps_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="stream.*set max_steps"):
        SFTTrainer(str(tiny_model_dir), args=train_args(SFTConfig, tmp_path), train_dataset=_stream("language_modeling"))


@pytest.mark.parametrize("trainer_cls,config_cls,kind", [(DPOTrainer, DPOConfig, "preference"),
                                                          (KTOTrainer, KTOConfig, "unpaired_preference"),
                                                          (KTOTrainer, KTOConfig, "preference")])
def test_preference_trainers_train_on_a_stream(trainer_cls, config_cls, kind, tiny_model_dir, tmp_path):
    trainer = trainer_cls(str(tiny_model_dir), args=train_args(config_cls, tmp_path, max_steps=2,
                                                               per_device_train_batch_size=4,
                                                               per_device_eval_batch_size=16),
                          train_dataset=_stream(kind, conversational=True))
    before = _snapshot(trainer)
    trainer.train()
    assert _changed(before, trainer.model)
    data = make_dataset("addition", kind, n=8, seed=2, conversational=True)
    metrics = trainer.evaluate(eval_dataset={"raw": data, "stream": data.to_iterable_dataset()})
    assert metrics["eval_stream_loss"] == pytest.approx(metrics["eval_raw_loss"], rel=1e-6)


@pytest.mark.parametrize("where", ["train", "eval"])
def test_precomputed_reference_log_probs_refuse_a_stream(where, tiny_model_dir, tmp_path):
    data = {"train": make_dataset("addition", "preference", n=4), "eval": None}
    data[where] = _stream("preference")
    with pytest.raises(ValueError, match=f"precompute_ref_log_probs=True is not supported with IterableDataset.*{where}"):
        DPOTrainer(str(tiny_model_dir), args=train_args(DPOConfig, tmp_path, max_steps=1, precompute_ref_log_probs=True),
                   train_dataset=data["train"], eval_dataset=data["eval"])


def test_reward_trainer_drops_overlong_pairs_of_a_stream_as_it_reads_them(tokenizer, tmp_path):
    model = build_tiny_model("qwen2", head="seq-cls", size="tiny")
    data = make_dataset("addition", "preference", n=12)
    short = RewardTrainer(model, args=train_args(RewardConfig, tmp_path, max_length=None, max_steps=1),
                          train_dataset=data.to_iterable_dataset(), processing_class=tokenizer)
    lengths = [max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in short.train_dataset]
    limit = min(lengths)
    assert max(lengths) > limit
    trainer = RewardTrainer(model, args=train_args(RewardConfig, tmp_path, max_length=limit, max_steps=2,
                                                   per_device_train_batch_size=2),
                            train_dataset=data.to_iterable_dataset(), processing_class=tokenizer)
    kept = list(trainer.train_dataset)
    assert 0 < len(kept) < len(lengths)
    assert all(max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= limit for r in kept)
    before = _snapshot(trainer)
    trainer.train()
    assert _changed(before, trainer.model)


def test_prm_trains_on_a_stream(tokenizer, tmp_path):
    model = build_tiny_model("qwen2", head="token-cls", size="tiny")
    trainer = PRMTrainer(model, args=train_args(PRMConfig, tmp_path, max_steps=2, per_device_train_batch_size=4),
                         train_dataset=_stream("stepwise"), processing_class=tokenizer)
    before = _snapshot(trainer)
    trainer.train()
    assert _changed(before, trainer.model)


# -- online trainers --------------------------------------------------------------------------------------
def _lengths(completions, **kwargs):
    """The length of each completion's text (a conversational completion is a list of one message)."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def test_grpo_trains_on_a_stream_and_evaluates_one(tiny_model_dir, tmp_path):
    args = train_args(GRPOConfig, tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, per_device_eval_batch_size=4, dataloader_num_workers=2)
    trainer = GRPOTrainer(str(tiny_model_dir), reward_funcs=_lengths, args=args,
                          train_dataset=_stream("prompt_only", conversational=True))
    assert trainer.args.dataloader_num_workers == 0  # one reader keeps each prompt's group together
    before = _snapshot(trainer)
    trainer.train()
    assert _changed(before, trainer.model)
    metrics = trainer.evaluate(eval_dataset=_stream("prompt_only", n=4, seed=3))
    assert metrics["eval_completions/mean_length"] > 0


def test_a_stream_cannot_be_dispatched_to_an_online_trainer(tiny_model_dir, tmp_path):
    args = train_args(GRPOConfig, tmp_path, max_steps=1, num_generations=2, accelerator_config={"dispatch_batches": True})
    with pytest.raises(ValueError, match="Iterable datasets require `dispatch_batches=False`"):
        GRPOTrainer(str(tiny_model_dir), reward_funcs=_lengths, args=args, train_dataset=_stream("prompt_only"))


def test_a_stream_given_to_evaluate_after_a_map_style_set_up_is_read_per_process(tiny_model_dir, tmp_path):
    args = train_args(GRPOConfig, tmp_path, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, per_device_eval_batch_size=4)
    trainer = GRPOTrainer(str(tiny_model_dir), reward_funcs=_lengths, args=args,
                          train_dataset=make_dataset("addition", "prompt_only", n=8))
    metrics = trainer.evaluate(eval_dataset=_stream("prompt_only", n=4, seed=3))
    assert metrics["eval_completions/mean_length"] > 0
    assert trainer.accelerator.dataloader_config.dispatch_batches is False
