"""`posttrain dpo|cpo|orpo|kto|bco` and examples/scripts/{dpo,cpo,orpo,kto,bco}.py on a local file and a tiny model."""

import json
import os
import runpy
import sys

import pytest
import torch

from posttrain.cli import main as cli_main
from posttrain.kit import make_dataset, write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--logging_steps", "1",
          "--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "1e-3"]



@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pref-data")
    return {
        "pairs": write_dataset(make_dataset("sort", "preference", n=16, seed=0), folder / "pairs.jsonl"),
        "unpaired": write_dataset(make_dataset("sort", "unpaired_preference", n=16, seed=0), folder / "unpaired.jsonl"),
    }


def read_log(out):
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("command,data,extra,metric", [
    ("dpo", "pairs", ["--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.5"], "rewards/margins"),
    ("cpo", "pairs", ["--loss_type", "simpo", "--cpo_alpha", "0"], "nll_loss"),
    ("orpo", "pairs", [], "log_odds_ratio"),
    ("kto", "unpaired", [], "kl"),
    ("bco", "pairs", [], "delta"),
])
def test_cli_commands(tiny_model_dir, tmp_path, data_files, command, data, extra, metric):
    out = str(tmp_path / command)
    rc = cli_main([command, "--model_name_or_path", tiny_model_dir, "--dataset_name", data_files[data],
                   "--output_dir", out, *COMMON, *extra])
    assert rc == 0
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    logs = read_log(out)
    assert any(metric in row for row in logs)
    assert logs[-1]["step"] == 2


def test_cli_yaml_config_with_loss_list(tiny_model_dir, tmp_path, data_files):
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset_name: {data_files['pairs']}\n"
                   "loss_type: [sigmoid, bco_pair, sft]\nloss_weights: [0.8, 0.2, 1.0]\nbeta: 0.2\n")
    out = str(tmp_path / "dpo-yaml")
    assert cli_main(["dpo", "--config", str(cfg), "--output_dir", out, *COMMON, "--beta", "0.3"]) == 0
    args = torch.load(os.path.join(out, "training_args.bin"), weights_only=False)
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"] and args.loss_weights == [0.8, 0.2, 1.0]
    assert args.beta == 0.3  # the command line overrides the file


def test_cli_help_lists_preference_commands(capsys):
    assert cli_main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("dpo", "cpo", "orpo", "kto", "bco"):
        assert f"  {command} " in text


@pytest.mark.parametrize("name", ["dpo", "cpo", "orpo", "kto", "bco"])
def test_example_scripts_run_on_local_data(tiny_model_dir, tmp_path, data_files, name, monkeypatch):
    path = os.path.join(ROOT, "examples", "scripts", f"{name}.py")
    out = str(tmp_path / name)
    argv = [path, "--model_name_or_path", tiny_model_dir, "--dataset_name", data_files["pairs"], "--output_dir", out,
            *COMMON]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(path, run_name="__main__")
    assert exit_info.value.code == 0
    assert read_log(out)[-1]["step"] == 2
    source = open(path, encoding="utf-8").read()
    assert "accelerate launch examples/scripts/" in source and "DEFAULT_DATASET" in source
