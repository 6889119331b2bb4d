"""DDPO run used by the multi-process test: `torchrun --nproc_per_node N ddpo_run.py OUT`.

Every process writes OUT/rank<i>.json: the world size its accelerator sees, the rewards of its own samples per epoch,
the logged history and a checksum of its final UNet weights.
"""

import json
import sys

import torch

from posttrain import DDPOConfig, DDPOTrainer
from posttrain.kit.diffusion import build_tiny_diffusion
from posttrain.rollout.diffusion import color_reward

out = sys.argv[1]
torch.set_num_threads(1)
reward = color_reward((1.0, 0.5, 0.0))
own_rewards = []


def recording_reward(images, prompts, metadata):
    rewards, info = reward(images, prompts, metadata)
    own_rewards.append(rewards.tolist())
    return rewards, info


config = DDPOConfig(num_epochs=2, sample_num_steps=4, sample_batch_size=4, sample_num_batches_per_epoch=1,
                    train_batch_size=2, use_lora=False, save_freq=0, output_dir=out, seed=0, mixed_precision="no")
trainer = DDPOTrainer(config, recording_reward, lambda: ("a cat", {}), build_tiny_diffusion(seed=0))
trainer.train()
acc = trainer.accelerator
checksum = sum(float(p.detach().double().sum()) for p in trainer.accelerator.unwrap_model(trainer.unet).parameters())
with open(f"{out}/rank{acc.process_index}.json", "w") as f:
    json.dump({"world": acc.num_processes, "rewards": own_rewards, "log": trainer.log_history, "checksum": checksum}, f)
