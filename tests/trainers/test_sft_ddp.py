"""SFT with 2 processes (torchrun, CPU/gloo) follows the single-process loss trajectory at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "sft_run.py"
ROOT = Path(__file__).resolve().parents[2]


def run(cmd, tmp):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [h for h in json.loads((tmp / "log.json").read_text()) if "loss" in h]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    """1 x 8, 2 x 4 and 1 x 4 with 2 accumulation steps log the same loss and token metrics: the token accuracy
    and entropy are pooled over all loss tokens of the step, not averaged over processes or micro-batches (which
    made them differ by up to 1e-3 and 2e-5)."""
    single, multi, accum = tmp_path / "single", tmp_path / "multi", tmp_path / "accum"
    single.mkdir(), multi.mkdir(), accum.mkdir()
    one = run([sys.executable, str(SCRIPT), tiny_model_dir, str(single), "8"], single)
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               str(SCRIPT), tiny_model_dir, str(multi), "4"], multi)
    acc = run([sys.executable, str(SCRIPT), tiny_model_dir, str(accum), "4", '{"gradient_accumulation_steps": 2}'],
              accum)
    assert len(one) == len(two) == len(acc) == 6
    for other in (two, acc):
        for a, b in zip(one, other):
            assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
            # the same correct / total counts (one token more or less would move it by ~0.01)
            assert abs(a["mean_token_accuracy"] - b["mean_token_accuracy"]) < 1e-6, (a, b)
            # fp32 per-token entropies of differently padded batches: observed within 1e-6
            assert abs(a["entropy"] - b["entropy"]) < 5e-6, (a, b)
        assert other[-1]["num_tokens"] == one[-1]["num_tokens"]  # every token counted once across processes
    assert one[-1]["loss"] < one[0]["loss"]
    assert len({round(h["mean_token_accuracy"], 6) for h in one}) > 2  # the accuracy moves: a real comparison


def test_accelerate_launch_multi_cpu_config_starts_two_processes(tiny_model_dir, tmp_path):
    """The seed's `accelerate launch --config_file ... --num_processes N script.py` form really runs N CPU processes."""
    from posttrain.kit import make_dataset, write_dataset

    data = write_dataset(make_dataset("reverse", "prompt_completion", n=256, seed=0), str(tmp_path / "d.jsonl"))
    out = tmp_path / "acc"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    proc = subprocess.run(
        [accelerate, "launch", "--config_file", str(ROOT / "examples/accelerate_configs/multi_cpu.yaml"),
         "--num_processes", "2", "--main_process_port", "29537", str(ROOT / "examples/scripts/sft.py"),
         "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir", str(out),
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
         "--logging_steps", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 2 * 4 / 256  # one step consumed 2 processes x 4 examples
