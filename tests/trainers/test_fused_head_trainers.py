"""The fused output head (posttrain.models.fused_head) in every trainer that takes log-probs (and GKD's fused
divergence): two training steps with it and two without (the head projecting the selected positions, log-softmax from those logits) log the same losses
and metrics and leave the same weights, fp32, SGD (so a weight difference is a gradient difference)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))

from matrix_run import main as run_family  # noqa: E402

FAMILIES = ["sft", "gkd", "dpo", "kto", "bco", "cpo", "orpo", "grpo", "rloo", "ppo", "online_dpo", "xpo", "nash_md"]
ONLINE = ("grpo", "rloo", "ppo", "online_dpo", "xpo", "nash_md")
SKIP = {"epoch", "learning_rate", "num_tokens", "step"}


@pytest.fixture(scope="module")
def tiny_value_dir(tmp_path_factory):
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", head="seq-cls", size="tiny", output_dir=tmp_path_factory.mktemp("tiny-value"))


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", size="tiny", seed=1, output_dir=tmp_path_factory.mktemp("tiny-teacher"))


def run(family, model_dir, out, fused, monkeypatch, extra):
    import posttrain.trainers.gkd as gkd
    import posttrain.trainers.logprobs as logprobs

    calls = []

    def counting(real):
        return lambda *a, **k: calls.append(1) or real(*a, **k)

    for module, name in ((logprobs, "fused_head"), (gkd, "fused_head_divergence")):
        monkeypatch.setattr(module, name, counting(getattr(module, name)))
        monkeypatch.setattr(module, "fused_head_supported", lambda model: fused)
    run_family([family, str(model_dir), str(out), "4", json.dumps(dict(extra, max_steps=2, optim="sgd",
                                                                       learning_rate=0.1))])
    assert bool(calls) == fused
    log = json.loads((out / "log.json").read_text())["log"]
    return [h for h in log if "train_runtime" not in h], load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_head_steps_equal_the_unfused_ones(family, tiny_model_dir, tiny_value_dir, tiny_teacher_dir, tmp_path,
                                                 monkeypatch):
    extra = {"top_k": 0} if family in ONLINE else {}  # sampled completions: greedy ones are equal within a group
    if family == "ppo":
        extra["value_model"] = str(tiny_value_dir)
    if family == "nash_md":
        extra["judge_model"] = str(tiny_model_dir)
    if family == "gkd":  # a teacher unlike the student: the divergence has a gradient
        extra["teacher_model_name_or_path"] = str(tiny_teacher_dir)
    logs_f, weights_f = run(family, tiny_model_dir, tmp_path / "fused", True, monkeypatch, extra)
    logs_u, weights_u = run(family, tiny_model_dir, tmp_path / "unfused", False, monkeypatch, extra)
    assert len(logs_f) == len(logs_u) == 2
    for step_f, step_u in zip(logs_f, logs_u):
        assert set(step_f) == set(step_u)
        # a margin is a difference of sequence log-probs: float32 rounding of those (sums of tokens, ~1e2) is its floor
        operands = max([1.0] + [abs(step_u[k]) for k in ("logps/chosen", "logps/rejected") if k in step_u])
        for key in set(step_f) - SKIP:
            atol = 1e-6 * (operands if key.endswith("margins") else 1.0)
            assert step_f[key] == pytest.approx(step_u[key], rel=1e-5, abs=atol), (key, step_f[key], step_u[key])
    moved = 0.0
    for name, w in weights_f.items():
        ref = weights_u[name]
        torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    moved = max((weights_f[n] - start[n]).abs().max().item() for n in weights_f if n in start)
    assert moved > 1e-4  # the steps changed the weights: the comparison covers the gradients
