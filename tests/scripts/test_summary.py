"""The end of a command-line run: a summary (model, checkpoints, log, curves, final and best metrics, time) and
curves.png in the output folder (posttrain/scripts/summary.py)."""

import types

import pytest

from posttrain.cli import main
from posttrain.scripts.summary import curves, plot_curves, summarize

HISTORY = [
    {"loss": 2.0, "rewards/accuracies": 0.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
    {"eval_loss": 1.9, "eval_rewards/accuracies": 0.55, "epoch": 0.5, "step": 1},
    {"loss": 1.0, "rewards/accuracies": 0.75, "learning_rate": 5e-4, "epoch": 1.0, "step": 2},
    {"eval_loss": 1.2, "eval_rewards/accuracies": 0.7, "epoch": 1.0, "step": 2},
    {"train_runtime": 3.0, "train_loss": 1.5, "epoch": 1.0, "step": 2},
]


def test_curves_are_every_logged_metric_by_step_without_bookkeeping():
    series = curves(HISTORY)
    assert series["loss"] == ([1, 2], [2.0, 1.0]) and series["eval_loss"] == ([1, 2], [1.9, 1.2])
    assert "epoch" not in series and "train_runtime" not in series and "train_loss" not in series


def test_the_png_is_written_and_nothing_is_written_for_an_empty_log(tmp_path):
    path = plot_curves(HISTORY, str(tmp_path / "curves.png"))
    assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([], str(tmp_path / "none.png")) is None and not (tmp_path / "none.png").exists()


def test_the_summary_names_the_final_and_the_best_metrics(tmp_path):
    trainer = types.SimpleNamespace(
        state=types.SimpleNamespace(log_history=HISTORY, global_step=2, epoch=1.0, best_model_checkpoint=None),
        args=types.SimpleNamespace(metric_for_best_model=None, greater_is_better=None))
    text = summarize(trainer, str(tmp_path), 75.0, log_file="log.jsonl", curves_file="curves.png")
    assert text.startswith("Done in 1m 15s: 2 optimizer steps, 1.00 epochs.")
    assert "final train: loss 1, rewards/accuracies 0.75, learning_rate 0.0005 (step 2)" in text
    assert "final eval:  eval_loss 1.2, eval_rewards/accuracies 0.7 (step 2)" in text
    assert "best eval:   eval_loss 1.2 at step 2" in text and "curves:      curves.png" in text


def test_a_cli_run_prints_its_summary_and_draws_its_curves(tiny_model_dir, tmp_path, capsys):
    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("copy", "prompt_completion", n=16, seed=0), str(tmp_path / "train.jsonl"))
    out = tmp_path / "run"
    assert main(["sft", "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir", str(out),
                 "--max_steps", "2", "--logging_steps", "1", "--save_steps", "1", "--report_to", "none"]) == 0
    printed = capsys.readouterr().out
    assert f"model:       {out}" in printed and "checkpoints: 2 (last: checkpoint-2)" in printed
    assert "final train: loss" in printed and f"curves:      {out / 'curves.png'}" in printed
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_generate_prints_completions_and_writes_them(tiny_model_dir, tmp_path, capsys):
    import json

    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--model_name_or_path", tiny_model_dir, "--prompt", "Sort: 3 1 2", "hi",
                 "--max_new_tokens", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "> Sort: 3 1 2" in printed and "> hi" in printed and "2 samples written to" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Sort: 3 1 2", "hi"] and all(isinstance(r["completion"], str) for r in rows)


def test_eval_scores_sampled_completions_with_the_kits_answers(tiny_model_dir, tmp_path, capsys):
    import json

    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("addition", "prompt_only", n=6, seed=0), str(tmp_path / "test.jsonl"))
    out = tmp_path / "scored.jsonl"
    assert main(["eval", "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--reward_funcs", "accuracy",
                 "--temperature", "1.0", "--num_samples", "2", "--max_new_tokens", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 completions of 6 prompts (temperature 1.0):" in printed and "accuracy" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(set(r["scores"]) == {"accuracy_reward"} or len(r["scores"]) == 1 for r in rows)
    with pytest.raises(SystemExit, match="give --reward_funcs"):  # nothing to score with
        main(["eval", "--model_name_or_path", tiny_model_dir, "--dataset_name", data])
