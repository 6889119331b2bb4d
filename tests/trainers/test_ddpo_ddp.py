"""DDPO on 2 CPU processes (torchrun, gloo): each process samples its own images, the logged reward is pooled
over both, and DDP keeps the UNet replicas identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "ddpo_run.py"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
def test_ddpo_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29581",
           str(SCRIPT), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    for epoch in range(2):
        a, b = ranks[0]["rewards"][epoch], ranks[1]["rewards"][epoch]
        assert len(a) == len(b) == 4 and a != b  # each process sampled its own images
        logged = [h for h in ranks[0]["log"] if h["epoch"] == epoch][0]
        assert abs(logged["reward_mean"] - sum(a + b) / 8) < 1e-4  # pooled over both processes
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
