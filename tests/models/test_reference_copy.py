"""create_reference_model (TRL's name; posttrain.models.sharding) and the trl.experimental import paths."""

import torch

from posttrain import create_reference_model
from posttrain.kit import build_tiny_model


def step(model):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_a_full_copy_is_frozen_and_stays_put():
    model = build_tiny_model("qwen2", size="tiny", seed=0)
    ref = create_reference_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    step(model)
    for name, p in ref.named_parameters():
        assert torch.equal(p, before[name]), name
    assert not torch.equal(model.get_parameter("model.layers.0.mlp.up_proj.weight"),
                           before["model.layers.0.mlp.up_proj.weight"])


def test_shared_layers_are_one_storage_and_frozen_in_both():
    model = build_tiny_model("qwen2", size="tiny", seed=0)
    ref = create_reference_model(model, num_shared_layers=1)
    shared, own = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert ref.get_parameter(shared).data_ptr() == model.get_parameter(shared).data_ptr()
    assert ref.get_parameter(own).data_ptr() != model.get_parameter(own).data_ptr()
    assert not model.get_parameter(shared).requires_grad and model.get_parameter(own).requires_grad
    before_shared, before_own = model.get_parameter(shared).clone(), model.get_parameter(own).clone()
    step(model)
    assert torch.equal(ref.get_parameter(shared), before_shared) and torch.equal(ref.get_parameter(own), before_own)
    assert not torch.equal(model.get_parameter(own), before_own)


def test_trl_experimental_paths_name_posttrains_trainers():
    import posttrain
    from posttrain.experimental.kto import KTOTrainer
    from posttrain.experimental.ppo import AutoModelForCausalLMWithValueHead, PPOTrainer
    from posttrain.experimental.utils import create_reference_model as experimental_create

    assert KTOTrainer is posttrain.KTOTrainer and PPOTrainer is posttrain.PPOTrainer
    assert AutoModelForCausalLMWithValueHead is posttrain.AutoModelForCausalLMWithValueHead
    assert experimental_create is create_reference_model
