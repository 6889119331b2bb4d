"""Process reward modeling: step tokenization and label placement, truncation that keeps labels on their steps,
bad stepwise rows, PRMTrainer learning, LoRA, and the `posttrain prm` command."""

import math

import pytest
import torch
from datasets import Dataset

from posttrain.data import IGNORE_INDEX, DatasetFormatError
from posttrain.losses.reward import step_accuracy, step_classification_loss
from posttrain.trainers.prm import (
    DataCollatorForTokenClassification,
    PRMConfig,
    PRMTrainer,
    prepare_stepwise_dataset,
    tokenize_stepwise,
)
from tests.conftest import train_args

ROW = {"prompt": "Sort: 3 1 2\n", "completions": ["insert 3: 3", "insert 1: 1 3", "insert 2: 1 2 3", "Answer: 1 2 3"],
       "labels": [True, True, False, True]}


def _expected(tokenizer, row, sep="\n"):
    """Hand-built ids and the position of each step's label (the last token of step + separator)."""
    ids = tokenizer(row["prompt"])["input_ids"]
    positions = []
    for step in row["completions"]:
        ids = ids + tokenizer(step + sep, add_special_tokens=False)["input_ids"]
        positions.append(len(ids) - 1)
    return ids, positions


def _labelled(out):
    return [(i, y) for i, y in enumerate(out["labels"]) if y != IGNORE_INDEX]


def test_labels_sit_on_the_separator_token_of_each_step(tokenizer):
    ids, positions = _expected(tokenizer, ROW)
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer)
    assert out["input_ids"] == ids
    assert _labelled(out) == list(zip(positions, [1, 1, 0, 1]))
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert all(out["input_ids"][p] == newline[-1] for p in positions)
    # train_on_last_step_only keeps the last label only
    last = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, train_on_last_step_only=True)
    assert _labelled(last) == [(positions[-1], 1)] and last["input_ids"] == ids
    # another separator
    ids2, positions2 = _expected(tokenizer, ROW, sep=" ;; ")
    out2 = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, step_separator=" ;; ")
    assert out2["input_ids"] == ids2 and [p for p, _ in _labelled(out2)] == positions2


def test_truncation_keeps_labels_aligned_with_steps(tokenizer):
    ids, positions = _expected(tokenizer, ROW)
    n_prompt = len(tokenizer(ROW["prompt"])["input_ids"])
    # max_completion_length: cut inside step 2 -> steps 0 and 1 keep their labels, steps 2 and 3 lose theirs
    cut = positions[2] - n_prompt  # completion tokens up to (not including) step 2's separator
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_completion_length=cut)
    assert out["input_ids"] == ids[: n_prompt + cut]
    assert _labelled(out) == [(positions[0], 1), (positions[1], 1)]
    # keeping exactly through step 2's separator keeps its label too
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_completion_length=cut + 1)
    assert _labelled(out) == [(positions[0], 1), (positions[1], 1), (positions[2], 0)]
    # max_prompt_length keeps the END of the prompt; every label moves left by the dropped prompt tokens
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_prompt_length=3)
    shift = n_prompt - 3
    assert out["input_ids"] == ids[shift:]
    assert _labelled(out) == [(p - shift, y) for p, y in zip(positions, [1, 1, 0, 1])]
    assert out["input_ids"][:3] == ids[n_prompt - 3 : n_prompt]
    # max_length keeps the start of prompt + steps
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_length=positions[1] + 1)
    assert out["input_ids"] == ids[: positions[1] + 1]
    assert _labelled(out) == [(positions[0], 1), (positions[1], 1)]
    # all three together
    out = tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_prompt_length=3, max_completion_length=cut + 1,
                            max_length=3 + (positions[1] - n_prompt) + 1)
    assert _labelled(out) == [(positions[0] - shift, 1), (positions[1] - shift, 1)]
    for p, _ in _labelled(out):  # every kept label is still on a step's separator token
        assert out["input_ids"][p] == ids[p + shift]


def test_rows_that_lose_every_label_are_dropped_or_rejected(tokenizer, caplog):
    n_prompt = len(tokenizer(ROW["prompt"])["input_ids"])
    _, positions = _expected(tokenizer, ROW)
    long_prompt = "Sort: " + " ".join("3142" * 8) + "\n"
    assert len(tokenizer(long_prompt)["input_ids"]) > positions[0] + 1
    ds = Dataset.from_list([ROW, {**ROW, "prompt": long_prompt}])
    args = PRMConfig(output_dir="x", report_to=[], max_length=positions[0] + 1, max_prompt_length=None)
    out = prepare_stepwise_dataset(ds, tokenizer, args, "train")
    assert len(out) == 1 and "dropped 1 of 2 rows" in caplog.text
    # the prepared labels are ints (-100 / 0 / 1), not the input column's bools
    assert out[0]["labels"] == tokenize_stepwise(ROW, 0, tokenizer=tokenizer, max_length=positions[0] + 1)["labels"]
    assert out[0]["labels"].count(IGNORE_INDEX) == positions[0]
    with pytest.raises(DatasetFormatError, match="No row of the train dataset has a labelled step left"):
        prepare_stepwise_dataset(ds, tokenizer, PRMConfig(output_dir="x", report_to=[], max_length=n_prompt,
                                                     max_prompt_length=None), "train")


def test_bad_stepwise_rows_fail_clearly(tokenizer):
    args = PRMConfig(output_dir="x", report_to=[])
    bad = Dataset.from_list([ROW, {**ROW, "labels": [True, False]}])
    with pytest.raises(DatasetFormatError, match=r"Row 1 \(0-based\): 'completions' has 4 steps but 'labels' has 2"):
        prepare_stepwise_dataset(bad, tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match=r"Row 0 \(0-based\), column 'labels'"):
        prepare_stepwise_dataset(Dataset.from_list([{**ROW, "labels": [1, 1, 0, 1]}]), tokenizer, args, "train")
    with pytest.raises(DatasetFormatError, match="PRMTrainer needs a dataset of kind stepwise"):
        prepare_stepwise_dataset(Dataset.from_list([{"prompt": "a", "completion": "b"}]), tokenizer, args, "train")
    conv = {"prompt": [{"role": "user", "content": "Sort: 2 1"}], "completions": ["insert 2: 2"], "labels": [True]}
    with pytest.raises(DatasetFormatError, match="standard"):
        tokenize_stepwise(conv, 0, tokenizer=tokenizer)
    with pytest.raises(DatasetFormatError, match="step 0"):
        tokenize_stepwise({**ROW, "completions": ["", "a", "b", "c"]}, 0, tokenizer=tokenizer, step_separator="")


def test_step_loss_and_accuracy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([1, 1, 1])
    expected = torch.log1p(torch.exp(torch.tensor([0.0, 2.0, -3.0])))  # -log softmax[label]
    assert torch.allclose(step_classification_loss(logits, labels), expected)
    assert step_accuracy(logits, labels).tolist() == [0.0, 0.0, 1.0]  # argmax of a tie is class 0


def _held_out(model, tokenizer, prepared) -> dict[str, float]:
    """Step accuracy, F1 of the "wrong step" class (0) and mean cross-entropy over every labelled step of a
    prepared split."""
    batch = DataCollatorForTokenClassification(tokenizer.pad_token_id)(list(prepared))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"] != IGNORE_INDEX
    logits, labels = logits[mask], batch["labels"][mask]
    pred = logits.argmax(-1)
    tp = ((pred == 0) & (labels == 0)).sum().item()
    f1_wrong = 2 * tp / max(1, 2 * tp + ((pred == 0) & (labels == 1)).sum().item() + ((pred == 1) & (labels == 0)).sum().item())
    return {"accuracy": step_accuracy(logits, labels).mean().item(), "f1_wrong": f1_wrong,
            "cross_entropy": step_classification_loss(logits, labels).mean().item()}


def _label_baselines(prepared) -> tuple[float, float]:
    """(majority-class accuracy, entropy of the label marginal in nats) of a prepared split."""
    labels = [y for row in prepared["labels"] for y in row if y != IGNORE_INDEX]
    p = sum(labels) / len(labels)
    return max(p, 1 - p), -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _train_prm(tokenizer, tmp_path, *, step_errors, seed=0, n=1000, epochs=15, max_len=4, arch="gpt2", **task_kwargs):
    from posttrain.kit import build_tiny_model, make_dataset

    kw = dict(step_errors=step_errors, max_len=max_len, **task_kwargs)
    train = make_dataset("sort", "stepwise", n=n, seed=seed, **kw)
    test = make_dataset("sort", "stepwise", n=300, seed=seed + 1000, exclude=train, **kw)
    model = build_tiny_model(arch, head="token-cls", size="tiny", seed=seed)
    args = train_args(PRMConfig, tmp_path, per_device_train_batch_size=32, learning_rate=3e-3, num_train_epochs=epochs,
                      lr_scheduler_type="constant", logging_steps=40, seed=seed)
    held_out = prepare_stepwise_dataset(test, tokenizer, args, "test")
    before = _held_out(model, tokenizer, held_out)
    trainer = PRMTrainer(model, args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    after = _held_out(trainer.model, tokenizer, held_out)
    majority, entropy = _label_baselines(held_out)
    print(f"{step_errors} seed {seed}: held-out step accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
          f"(majority {majority:.3f}); F1 on wrong steps {before['f1_wrong']:.3f} -> {after['f1_wrong']:.3f}; "
          f"cross-entropy {after['cross_entropy']:.3f} (marginal {entropy:.3f})")
    return trainer, before, after, majority, entropy


def test_prm_learns_to_check_each_step(tokenizer, tmp_path):
    """A tiny PRM (GPT-2, 0.26M parameters) learns to check steps. Data: insertion-sort solutions of 3-4 digits where
    every step is wrong with probability 1/2 on its own (``step_errors="independent"``: a digit inserted at a wrong
    place leaves the line out of order; a wrong first digit or a wrong answer contradicts the prompt), so the
    labels are balanced and each is checkable from its step and what precedes it.

    Measured (1000 training rows, 15 epochs, seed 0; 82 s for the whole test on a 2-core machine shared with
    other jobs): held-out step accuracy 0.497 -> 0.775 against a 0.505 majority class; F1 on wrong steps
    0.127 -> 0.763; cross-entropy 0.446 (label marginal 0.693). Asserted: accuracy >= majority + 0.15 and >=
    untrained + 0.15, F1 on wrong steps >= 0.6, cross-entropy <= marginal - 0.15. Learning starts after a plateau
    whose length depends on the seed (a qwen2 tiny model took 10 to more than 15 epochs); the slow test below
    trains 20 epochs on three seeds.
    Its data and model seeds are its own (the three-seed record is `test_prm_learns_to_check_each_step_longer`);
    `make test-seeds` (training seeds 0/1/2): step accuracy 0.775, F1 on wrong steps 0.763 in each."""
    trainer, before, after, majority, entropy = _train_prm(tokenizer, tmp_path, step_errors="independent")
    assert after["accuracy"] >= majority + 0.15 and after["accuracy"] >= before["accuracy"] + 0.15, (before, after)
    assert after["f1_wrong"] >= 0.6, after
    assert after["cross_entropy"] <= entropy - 0.15, (after, entropy)
    logs = [h for h in trainer.state.log_history if "loss" in h and "accuracy" in h]
    assert logs and {"loss", "accuracy", "num_tokens"} <= set(logs[-1])
    assert logs[-1]["accuracy"] >= logs[0]["accuracy"] + 0.15  # the logged training accuracy rises too


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prm_learns_to_check_each_step_longer(tokenizer, tmp_path, seed):
    """The same as above for 20 epochs and three seeds (~2 min each on a busy 2-core machine). Measured, seeds
    0/1/2: held-out step accuracy 0.497/0.511/0.491 -> 0.807/0.886/0.892 against majority classes
    0.505/0.504/0.520; F1 on wrong steps -> 0.803/0.885/0.886; cross-entropy 0.393/0.289/0.280 (marginal 0.693).
    Asserted for every seed: accuracy >= majority + 0.25 and F1 on wrong steps >= 0.75."""
    _, before, after, majority, _ = _train_prm(tokenizer, tmp_path, step_errors="independent", seed=seed, epochs=20)
    assert after["accuracy"] >= majority + 0.25 and after["f1_wrong"] >= 0.75, (seed, before, after, majority)


@pytest.mark.slow
def test_prm_learns_outcome_consistent_labels(tokenizer, tmp_path):
    """Math-Shepherd-style labels (``step_errors="first"``: half the solutions have one wrong step, and every step
    from the first wrong one on is False) are harder for a tiny model: a label depends on every earlier step, and
    the classes are unbalanced. Measured (sort, 3-6 digits, 1000 rows, 15 epochs, seed 0, the same tiny GPT-2):
    held-out step accuracy 0.676 -> 0.788 against a 0.701 majority class, F1 on wrong steps 0.032 -> 0.526,
    cross-entropy 0.468 vs. 0.610 for the label marginal. (The earlier default test, qwen2 at lr 1e-3 for 10
    epochs, measured 0.68-0.73 against 0.66 on seeds 0-4.) Asserted: accuracy >= majority + 0.06, F1 on wrong
    steps >= 0.4, cross-entropy <= marginal - 0.1."""
    _, before, after, majority, entropy = _train_prm(tokenizer, tmp_path, step_errors="first", max_len=6)
    assert after["accuracy"] >= majority + 0.06 and after["f1_wrong"] >= 0.4, (before, after, majority)
    assert after["cross_entropy"] <= entropy - 0.1, (after, entropy)


def test_eval_lora_and_loading_by_path(tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig

    from posttrain.kit import make_dataset

    ds = make_dataset("sort", "stepwise", n=12, seed=0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # task type set to TOKEN_CLS
    args = train_args(PRMConfig, tmp_path, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=6)
    trainer = PRMTrainer(str(tiny_model_dir), args, train_dataset=ds, eval_dataset=ds, processing_class=tokenizer,
                         peft_config=lora)
    assert trainer.model.config.num_labels == 2
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy"} <= set(metrics)
    from posttrain.kit import build_tiny_model

    with pytest.raises(ValueError, match="2 labels"):
        PRMTrainer(build_tiny_model("qwen2", head="seq-cls"), train_args(PRMConfig, tmp_path), train_dataset=ds,
                   processing_class=tokenizer)


def test_prm_cli_trains_on_local_files(tiny_model_dir, tmp_path):
    from transformers import AutoModelForTokenClassification

    from posttrain.cli import main
    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("sort", "stepwise", n=16, seed=0), tmp_path / "steps.jsonl")
    out = tmp_path / "cli-prm"
    rc = main(["prm", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", data, "--output_dir", str(out),
               "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
               "--train_on_last_step_only"])
    assert rc == 0
    assert AutoModelForTokenClassification.from_pretrained(out).config.num_labels == 2


def test_example_script_runs_on_local_files(tiny_model_dir, tmp_path, monkeypatch):
    import pathlib
    import runpy
    import sys

    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("sort", "stepwise", n=8, seed=0), tmp_path / "steps.jsonl")
    script = str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "scripts" / "prm.py")
    monkeypatch.setattr(sys, "argv", [script, "--model_name_or_path", str(tiny_model_dir), "--dataset_name", data,
                                      "--output_dir", str(tmp_path / "ex"), "--max_steps", "1", "--report_to", "none",
                                      "--per_device_train_batch_size", "4", "--save_strategy", "no",
                                      "--step_separator", " ;"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 0
    assert (tmp_path / "ex" / "config.json").exists()
