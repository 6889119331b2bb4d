"""DPO and KTO with 2 processes (torchrun, CPU/gloo): same trajectory as one process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "preference_run.py"
ROOT = Path(__file__).resolve().parents[2]


def run(cmd, tmp):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "log.json").read_text())


def one_and_two(method, model_dir, tmp_path, extra="{}", port="29541"):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    one = run([sys.executable, str(SCRIPT), method, model_dir, str(single), "8", extra], single)
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(SCRIPT), method, model_dir, str(multi), "4", extra], multi)
    return one, two


def steps(result):
    return [h for h in result["log"] if "loss" in h]


def test_dpo_two_processes_match_one_with_precomputed_reference(tiny_model_dir, tmp_path):
    one, two = one_and_two("dpo", tiny_model_dir, tmp_path, json.dumps({"precompute_ref_log_probs": True,
                                                                          "precompute_ref_batch_size": 5}))
    # the reference columns were gathered in dataset order, without duplicates from the uneven last batch
    assert len(two["ref_chosen_logps"]) == 64
    for a, b in zip(one["ref_chosen_logps"] + one["ref_rejected_logps"],
                    two["ref_chosen_logps"] + two["ref_rejected_logps"]):
        assert abs(a - b) < 1e-4
    a_steps, b_steps = steps(one), steps(two)
    assert len(a_steps) == len(b_steps) == 4
    for a, b in zip(a_steps, b_steps):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
        for name in ("rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert abs(a[name] - b[name]) < 1e-3 * max(1.0, abs(a[name])), (name, a, b)
        # token means pooled over both processes' completion tokens (observed within 1e-7; the mean of the two
        # processes' token means differed by ~1e-4)
        for name in ("logits/chosen", "logits/rejected"):
            assert abs(a[name] - b[name]) < 1e-6, (name, a, b)
    assert a_steps[-1]["num_tokens"] == b_steps[-1]["num_tokens"]


def test_kto_two_processes_pool_metrics(tiny_model_dir, tmp_path):
    one, two = one_and_two("kto", tiny_model_dir, tmp_path, port="29542")
    a_steps, b_steps = steps(one), steps(two)
    assert len(b_steps) == 4
    for a, b in zip(a_steps, b_steps):
        for name in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert name in b and b[name] == b[name]
        # the KL pairs differ (shifted within each process's batch), everything else is the same batch
        assert abs(a["logps/chosen"] - b["logps/chosen"]) < 1e-3 * abs(a["logps/chosen"])
    assert abs(a_steps[0]["loss"] - b_steps[0]["loss"]) < 1e-4  # step 1: policy == reference, kl == 0
