"""`make demo` smoke test: the job runs end to end (few steps) and writes metrics, plot and model."""

import json

from posttrain.demo import DemoConfig, run


def test_demo_writes_metrics_plot_and_model(tmp_path, capsys):
    cfg = DemoConfig(output_dir=str(tmp_path / "demo"), model_size="tiny", train_examples=200, eval_examples=10,
                     sft_steps=3, sft_batch_size=8, grpo_steps=2, grpo_prompts=16, grpo_batch_size=8,
                     grpo_num_generations=4)
    metrics = run(cfg)
    out = capsys.readouterr().out
    assert "held-out exact match" in out and "after SFT" in out and "after GRPO" in out
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(saved["held_out_exact_match"]) == {"base model", "after SFT", "after GRPO"}
    assert set(saved["held_out_sampled_exact_match"]) == {"base model", "after SFT", "after GRPO"}
    assert set(saved["loss_curves"]) == {"SFT loss", "GRPO reward"}
    assert saved == json.loads(json.dumps(metrics))
    assert (tmp_path / "demo" / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "sft_model" / "model.safetensors").exists()
    assert (tmp_path / "demo" / "grpo_model" / "model.safetensors").exists()
