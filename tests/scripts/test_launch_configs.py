"""Shipped accelerate configs and `posttrain <trainer> --accelerate_config` (no processes are launched here)."""

import sys
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.cli import accelerate_config_path, launch_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "accelerate_configs"
PACKAGED = ROOT / "posttrain" / "accelerate_configs"


def test_packaged_configs_are_the_examples():
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == sorted(p.name for p in PACKAGED.glob("*.yaml"))
    for name in names:
        assert (EXAMPLES / name).read_text() == (PACKAGED / name).read_text(), name
    for stage in (1, 2, 3):
        cfg = yaml.safe_load((EXAMPLES / f"deepspeed_zero{stage}.yaml").read_text())
        assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == stage
    offload = yaml.safe_load((EXAMPLES / "deepspeed_zero3_offload.yaml").read_text())["deepspeed_config"]
    assert offload["offload_param_device"] == offload["offload_optimizer_device"] == "cpu"
    assert yaml.safe_load((EXAMPLES / "fsdp.yaml").read_text())["distributed_type"] == "FSDP"


def test_launch_command_resolves_names_and_passes_the_rest_on(tmp_path):
    cmd = launch_command("sft", ["--model_name_or_path", "m", "--accelerate_config", "deepspeed_zero3",
                                 "--num_processes=2", "--output_dir", "o", "--mixed_precision", "no"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:5] == ["--config_file", str(PACKAGED / "deepspeed_zero3.yaml")]
    launcher = cmd[5:cmd.index("posttrain.cli") - 1]
    assert launcher == ["--num_processes", "2", "--mixed_precision", "no"]
    assert cmd[cmd.index("posttrain.cli") - 1:] == ["-m", "posttrain.cli", "sft", "--model_name_or_path", "m",
                                                     "--output_dir", "o"]
    assert accelerate_config_path("fsdp.yaml") == str(PACKAGED / "fsdp.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: NO\n")
    assert accelerate_config_path(str(own)) == str(own)
    with pytest.raises(SystemExit, match="deepspeed_zero2"):  # the message lists the shipped names
        accelerate_config_path("zero9")


def test_fsdp_that_accelerate_did_not_set_up_is_reported(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from posttrain.models.sharding import check_launch

    cpu_ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert check_launch(cpu_ddp) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "DS_ACCELERATOR=cpu" in check_launch(cpu_ddp)
    assert check_launch(SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))) is None
