"""Completion-only and assistant-only loss masks select exactly the right tokens."""

import re

import datasets
import pytest

from posttrain import SFTConfig, SFTTrainer
from posttrain.data import DataCollatorForLanguageModeling, DatasetFormatError, detect_format, tokenize_sft_example
from posttrain.data.collators import IGNORE_INDEX
from tests.conftest import train_args


def _label_text(tokenizer, row, completion_only=True):
    batch = DataCollatorForLanguageModeling(tokenizer.pad_token_id, completion_only_loss=completion_only)([row])
    labels = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    return tokenizer.decode(labels)


def _tok(tokenizer, row, **kw):
    fmt = detect_format(row.keys(), row)
    return tokenize_sft_example(row, 0, tokenizer=tokenizer, fmt=fmt, eos_token_id=tokenizer.eos_token_id, **kw)


def test_completion_only_standard(tokenizer):
    row = _tok(tokenizer, {"prompt": "What is 2+3? ", "completion": "5"})
    assert _label_text(tokenizer, row) == "5" + tokenizer.eos_token
    # With completion_only_loss=False the whole sequence (minus the first token) is trained on.
    full = _label_text(tokenizer, row, completion_only=False)
    assert full.endswith("2+3? 5" + tokenizer.eos_token) and len(full) > len("5<|im_end|>")


def test_completion_only_conversational(tokenizer):
    row = _tok(tokenizer, {"prompt": [{"role": "user", "content": "What is 2+3?"}],
                           "completion": [{"role": "assistant", "content": "5"}]})
    assert _label_text(tokenizer, row) == "5<|im_end|>\n"


def test_assistant_only_multi_turn(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8"},
    ]
    row = _tok(tokenizer, {"messages": messages}, assistant_only_loss=True)
    assert _label_text(tokenizer, row) == "5<|im_end|>8<|im_end|>"
    plain = _tok(tokenizer, {"messages": messages})
    assert "assistant_masks" not in plain
    assert "Be brief" in _label_text(tokenizer, plain)


def test_assistant_only_loss_needs_generation_markers(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tok.chat_template)
    assert not re.search(r"%-?\s*generation", tok.chat_template)
    with pytest.raises(DatasetFormatError, match="generation"):
        _tok(tok, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
             assistant_only_loss=True)


def test_rows_truncation_leaves_nothing_to_learn_from_are_dropped_with_a_count(tiny_model_dir, tokenizer, tmp_path,
                                                                                caplog):
    """As TRL 1.9: a row whose completion max_length cuts away is dropped (a warning counts them); labels are baked
    into the prepared rows (the masks' tokens -100), and a split left with no row is an error."""
    rows = [{"prompt": "a b c d e f g h i j k l", "completion": "m"}, {"prompt": "a", "completion": "b"}]
    args = train_args(SFTConfig, tmp_path, max_length=6)
    with caplog.at_level("WARNING", logger="posttrain"):
        trainer = SFTTrainer(tiny_model_dir, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer)
    assert "dropped 1 of 2 rows with no token to train on" in caplog.text
    (row,) = trainer.train_dataset
    assert set(row) == {"input_ids", "labels"}
    prompt = len(tokenizer("a")["input_ids"])
    assert row["labels"][:prompt] == [IGNORE_INDEX] * prompt and row["labels"][prompt:] == row["input_ids"][prompt:]
    with pytest.raises(DatasetFormatError, match="No row of the train dataset has a token to train on: max_length=6"):
        SFTTrainer(tiny_model_dir, args=args, train_dataset=datasets.Dataset.from_list(rows[:1]),
                   processing_class=tokenizer)


def test_given_labels_are_kept_and_pre_tokenized_rows_are_cut_and_labelled(tiny_model_dir, tokenizer, tmp_path):
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "assistant_masks": [1, 1, 1, 1, 1]},
            {"input_ids": [5, 6, 7], "assistant_masks": [0, 1, 1]}]
    trainer = SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, max_length=4),
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    assert trainer.train_dataset["labels"] == [[-100, 6, -100, 8], [-100, 6, 7]]


def test_missing_chat_template_is_a_clear_error(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DatasetFormatError, match="no chat template"):
        _tok(tok, {"messages": [{"role": "user", "content": "hi"}]})


def test_trainer_rejects_wrong_dataset_kind(tiny_model_dir, tokenizer, tmp_path):
    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DatasetFormatError, match="SFTTrainer needs a dataset of kind language_modeling, prompt_completion"):
        SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path), train_dataset=ds, processing_class=tokenizer)


def test_trainer_rejects_assistant_only_on_plain_text(tiny_model_dir, tokenizer, tmp_path):
    ds = datasets.Dataset.from_list([{"text": "hello"}])
    with pytest.raises(DatasetFormatError, match="assistant_only_loss=True needs conversational data"):
        SFTTrainer(tiny_model_dir, args=train_args(SFTConfig, tmp_path, assistant_only_loss=True),
                   train_dataset=ds, processing_class=tokenizer)


def test_unknown_loss_type_and_strategy():
    with pytest.raises(ValueError, match="Unknown loss_type 'mse'"):
        SFTConfig(output_dir="/tmp/x", loss_type="mse")
    with pytest.raises(ValueError, match="Unknown packing_strategy"):
        SFTConfig(output_dir="/tmp/x", packing_strategy="first_fit")
