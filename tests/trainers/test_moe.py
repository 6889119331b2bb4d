"""Mixture-of-Experts models: the router's load-balancing loss is added with ``router_aux_loss_coef`` (TRL's field and
metric ``aux_loss``), in SFT and the preference trainers (posttrain/models/moe.py)."""

import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from posttrain import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from posttrain.kit import make_dataset

from conftest import train_args


def _moe(tokenizer):
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return MixtralForCausalLM(config)


def test_sft_loss_is_the_models_own_loss_with_its_router_loss(tokenizer, tmp_path):
    """The loss SFT computes from the fused head's log-probs plus its collected aux_loss equals the loss the MoE model
    computes itself from labels (cross-entropy + router_aux_loss_coef x load-balancing loss)."""
    model = _moe(tokenizer)
    data = make_dataset("addition", "prompt_completion", n=8, seed=0)
    trainer = SFTTrainer(model, args=train_args(SFTConfig, tmp_path, router_aux_loss_coef=0.5, padding_free=False),
                         train_dataset=data, processing_class=tokenizer)
    assert trainer.aux_loss_enabled and model.config.output_router_logits and model.config.router_aux_loss_coef == 0.5
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        theirs = model(**batch, use_cache=False)
        ours = trainer.compute_loss(model, dict(batch))
    assert theirs.aux_loss > 0
    assert float(ours) == pytest.approx(float(theirs.loss), rel=1e-5)
    trainer._metrics["eval"].clear()


def test_sft_and_dpo_log_aux_loss_and_a_zero_weight_turns_it_off(tokenizer, tmp_path):
    sft = SFTTrainer(_moe(tokenizer), args=train_args(SFTConfig, tmp_path / "sft", max_steps=2),
                     train_dataset=make_dataset("addition", "prompt_completion", n=16), processing_class=tokenizer)
    sft.train()
    assert all(row["aux_loss"] > 0 for row in sft.state.log_history if "loss" in row)

    dpo = DPOTrainer(_moe(tokenizer), args=train_args(DPOConfig, tmp_path / "dpo", max_steps=2),
                     train_dataset=make_dataset("addition", "preference", n=16), processing_class=tokenizer)
    assert dpo.ref_model.config.output_router_logits is False  # the reference only scores: no router loss
    dpo.train()
    assert all(row["aux_loss"] > 0 for row in dpo.state.log_history if "loss" in row)

    off = SFTTrainer(_moe(tokenizer), args=train_args(SFTConfig, tmp_path / "off", max_steps=1,
                                                      router_aux_loss_coef=0.0),
                     train_dataset=make_dataset("addition", "prompt_completion", n=8), processing_class=tokenizer)
    assert not off.aux_loss_enabled and off.model.config.output_router_logits is False
    off.train()
    assert not any("aux_loss" in row for row in off.state.log_history)


def test_grpo_adds_the_policys_router_loss(tokenizer, tmp_path):
    args = train_args(GRPOConfig, tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, learning_rate=1e-2)
    trainer = GRPOTrainer(_moe(tokenizer), reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
                          args=args, train_dataset=make_dataset("addition", "prompt_only", n=8),
                          processing_class=tokenizer)
    assert trainer.aux_loss_enabled
    trainer.train()
    assert all(row["aux_loss"] > 0 for row in trainer.state.log_history if "loss" in row)
