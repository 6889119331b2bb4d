"""Selective activation checkpointing: the recomputation keeps attention's outputs (models.checkpointing)."""

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from posttrain import SFTConfig, SFTTrainer
from posttrain.kit import make_dataset
from posttrain.models.checkpointing import ATTENTION_OPS, keep_attention_outputs
from tests.conftest import train_args


class CountAttention(TorchDispatchMode):
    """Counts the fused attention kernels' forward calls that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in ATTENTION_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    counter = CountAttention()
    with counter:
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, counter.calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputation_reuses_attention_with_the_same_gradients(tiny_model_dir, dtype):
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=dtype).train()
    layers = model.config.num_hidden_layers
    plain_loss, plain, plain_calls = _loss_and_grads(model, ids)
    assert plain_calls == 0  # no checkpointing: backward runs no attention forward

    model.activation_checkpointing_enable()  # transformers' default: use_reentrant=False
    full_loss, full, full_calls = _loss_and_grads(model, ids)
    assert full_calls == layers  # each layer's attention runs again in the recomputation

    assert keep_attention_outputs(model) >= layers  # the decoder layers (and the model, which carries the flag too)
    kept_loss, kept, kept_calls = _loss_and_grads(model, ids)
    assert kept_calls == 0  # served from the saved outputs
    assert keep_attention_outputs(model) == 0  # applied once: a second call changes nothing
    for loss in (full_loss, kept_loss):
        torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name in plain:
        torch.testing.assert_close(kept[name], plain[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(full[name], plain[name], rtol=0, atol=0, msg=name)


def test_reentrant_and_user_context_fn_are_left_alone(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert keep_attention_outputs(model) == 0
    mine = functools.partial(torch.utils.checkpoint.create_selective_checkpoint_contexts, [])
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": mine})
    assert keep_attention_outputs(model) == 0
    funcs = {m._gradient_checkpointing_func for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert funcs and all(f.keywords["context_fn"] is mine for f in funcs)


def test_trainer_keeps_attention_when_it_checkpoints(tiny_model_dir, tmp_path):
    data = make_dataset("reverse", "prompt_completion", n=32, seed=0, conversational=True)
    args = train_args(SFTConfig, tmp_path, max_steps=2, gradient_checkpointing=True, bf16=False)
    trainer = SFTTrainer(model=tiny_model_dir, args=args, train_dataset=data)
    trainer.train()
    layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == trainer.model.config.num_hidden_layers
    assert all("context_fn" in m._gradient_checkpointing_func.keywords for m in layers)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
