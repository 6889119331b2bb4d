"""GRPO with 2 processes (torchrun, CPU/gloo): a group of num_generations completions spans both processes, its
advantages are computed over the whole group, metrics pool both processes, and the replicas stay identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "grpo_run.py"
ROOT = Path(__file__).resolve().parents[2]


def test_grpo_two_processes(tiny_model_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           str(SCRIPT), str(tiny_model_dir), str(tmp_path), "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == 3
    for step in range(3):
        a, b = ranks[0]["samples"][step], ranks[1]["samples"][step]
        assert len(a) == len(b) == 4
        # num_generations=8 > per-process batch of 4: one prompt's group is split across the two processes
        assert {s["prompt"] for s in a} == {s["prompt"] for s in b} and len({s["prompt"] for s in a}) == 1
        rewards = torch.tensor([s["reward"] for s in a + b])
        expected = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        got = torch.tensor([s["advantages"] for s in a + b])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        logged = [h for h in ranks[0]["log"] if "reward" in h][step]
        assert abs(logged["reward"] - rewards.mean().item()) < 1e-5  # pooled over both processes
    # DDP keeps the replicas identical
    assert abs(ranks[0]["checksum"] - ranks[1]["checksum"]) < 1e-6 * abs(ranks[0]["checksum"])
    assert "kl" in ranks[0]["log"][0]
