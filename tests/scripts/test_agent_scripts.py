"""The agent example scripts and `posttrain grpo --tools / --environment_factory` on local kit files."""

import json
import os
import runpy
import sys

import pytest
from datasets import Dataset

from posttrain.kit.agents import guess_prompt_rows, tool_prompt_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
          "--max_completion_length", "40", "--report_to", "none", "--save_strategy", "no",
          "--max_tool_calling_iterations", "1"]


@pytest.mark.parametrize("name, rows, metric", [
    ("grpo_tools", lambda: tool_prompt_rows(8), "tools/call_frequency"),
    ("grpo_environment", lambda: guess_prompt_rows(8), "rewards/GuessNumberEnv/mean"),
])
def test_agent_example_script_runs_on_local_data(tiny_model_dir, tmp_path, monkeypatch, name, rows, metric):
    data = str(tmp_path / "prompts.jsonl")
    Dataset.from_list(rows()).to_json(data)
    path = os.path.join(ROOT, "examples", "scripts", f"{name}.py")
    out = str(tmp_path / name)
    monkeypatch.setattr(sys, "argv", [path, "--model_name_or_path", tiny_model_dir, "--dataset_name", data,
                                      "--output_dir", out, *COMMON])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(path, run_name="__main__")
    assert exit_info.value.code == 0
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    assert any(metric in entry for entry in log) and log[-1]["step"] == 2


def test_cli_loads_tools_from_a_file(tiny_model_dir, tmp_path):
    from posttrain.cli import main

    tools = tmp_path / "my_tools.py"
    tools.write_text('def lookup(key: str) -> str:\n    """Look a key up.\n\n    Args:\n        key: the key\n    """\n'
                     '    return key.upper()\n\n\ndef exact(completions, **kw):\n    return [0.0] * len(completions)\n')
    data = str(tmp_path / "prompts.jsonl")
    Dataset.from_list(tool_prompt_rows(8)).to_json(data)
    out = str(tmp_path / "out")
    code = main(["grpo", "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir", out,
                 "--tools", f"{tools}:lookup", "--reward_funcs", f"{tools}:exact", *COMMON])
    assert code == 0
    assert os.path.exists(os.path.join(out, "model.safetensors"))


def test_cli_names_a_tool_it_cannot_load(tiny_model_dir, tmp_path, capsys):
    from posttrain.cli import main

    data = str(tmp_path / "prompts.jsonl")
    Dataset.from_list(tool_prompt_rows(8)).to_json(data)
    code = main(["grpo", "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir",
                 str(tmp_path / "out"), "--tools", "nosuchmodule:fn", "--reward_funcs", "accuracy", *COMMON])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot import module 'nosuchmodule' of tool 'nosuchmodule:fn'" in err
    assert "Traceback" not in err
