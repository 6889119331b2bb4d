"""AlignProp: ``AlignPropConfig`` and ``AlignPropTrainer`` (TRL-compatible names).

Prabhudesai et al. 2023, 'Aligning Text-to-Image Diffusion Models with Reward Backpropagation'. Each step samples
``train_batch_size`` images keeping the graph through the last denoising steps (UNet calls checkpointed; earlier
steps run without gradients: truncated backpropagation, at a random cutoff when ``truncated_backprop_rand``),
scores them with a *differentiable* ``reward_function`` and minimises
:func:`posttrain.losses.diffusion.alignprop_loss` (minus the mean reward) by backpropagating through the sampler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..losses.diffusion import alignprop_loss
from ..rollout.diffusion import sample
from .diffusion_base import DiffusionConfig, DiffusionTrainerBase


@dataclass
class AlignPropConfig(DiffusionConfig):
    """Configuration of :class:`AlignPropTrainer`. Field names and defaults follow TRL's ``AlignPropConfig``
    (except ``mixed_precision``, whose default runs anywhere, and the additions ``output_dir`` and ``lora_rank``).

    ``truncated_backprop_timestep=k``: gradients flow through denoising steps ``k .. sample_num_steps - 1``;
    ``truncated_backprop_rand``: ``k`` is drawn uniformly from ``truncated_rand_backprop_minmax`` every step."""

    train_learning_rate: float = 1e-3
    log_image_freq: int = 1
    truncated_backprop_rand: bool = True
    truncated_backprop_timestep: int = 49
    truncated_rand_backprop_minmax: list[int] = field(
        default_factory=lambda: [0, 50],
        metadata={"help": "Range (low high) of the random truncation step; a (low, high) tuple in Python."})

    def __post_init__(self):
        super().__post_init__()
        if len(self.truncated_rand_backprop_minmax) != 2:
            raise ValueError("truncated_rand_backprop_minmax takes two numbers (low, high), got "
                             f"{self.truncated_rand_backprop_minmax!r}")
        lo, hi = self.truncated_rand_backprop_minmax
        if not 0 <= lo <= hi:
            raise ValueError(f"truncated_rand_backprop_minmax must be (low, high) with 0 <= low <= high, got {(lo, hi)}")
        self.truncated_rand_backprop_minmax = (int(lo), int(hi))


class AlignPropTrainer(DiffusionTrainerBase):
    """AlignProp on a ``StableDiffusionPipeline`` (or a local pipeline folder).

    ``reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`` must be differentiable in
    ``images`` ((N, 3, H, W) in [0, 1]); ``prompt_function() -> (prompt, prompt_metadata)``. Logs TRL's names
    ``reward_mean``, ``reward_std``, ``loss`` (here minus the mean reward) and ``epoch``."""

    def __init__(self, config: AlignPropConfig, reward_function: Callable, prompt_function: Callable,
                 sd_pipeline: Any, image_samples_hook: Optional[Callable] = None):
        super().__init__(config, reward_function, prompt_function, sd_pipeline, image_samples_hook,
                         gradient_accumulation_steps=config.train_gradient_accumulation_steps)
        self._rng = random.Random(config.seed + self.accelerator.process_index)

    def backprop_cutoff(self) -> int:
        """Index of the first denoising step whose UNet call keeps gradients (at most the last step)."""
        c = self.config
        if c.truncated_backprop_rand:
            k = self._rng.randint(*c.truncated_rand_backprop_minmax)
        else:
            k = c.truncated_backprop_timestep
        return max(0, min(k, c.sample_num_steps - 1))

    def step(self, epoch: int, global_step: int) -> int:
        """``train_gradient_accumulation_steps`` sampled batches with gradients, then one optimizer step."""
        c = self.config
        self.unet.train()
        rewards_seen, losses = [], []
        for _ in range(c.train_gradient_accumulation_steps):
            with self.accelerator.accumulate(self.unet):
                prompts, metadata = self.next_prompts(c.train_batch_size)
                with self.accelerator.autocast():
                    out = sample(self.sd_pipeline, prompts, num_steps=c.sample_num_steps, eta=c.sample_eta,
                                 guidance_scale=c.sample_guidance_scale, negative_prompt=self.negative_prompt,
                                 generator=self.generator, unet=self.unet, grad_from_step=self.backprop_cutoff())
                rewards, reward_metadata = self.compute_rewards(out.images, prompts, metadata)
                loss = alignprop_loss(rewards)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.trainable_parameters, c.train_max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            rewards_seen.append(rewards.detach())
            losses.append(loss.detach())
            if (self.image_samples_callback is not None and self.accelerator.is_main_process and c.log_image_freq > 0
                    and global_step % c.log_image_freq == 0):
                tracker = self.accelerator.trackers[0] if self.accelerator.trackers else None
                self.image_samples_callback([[out.images.detach(), prompts, metadata, rewards.detach(),
                                              reward_metadata]], global_step, tracker)
        all_rewards = self.accelerator.gather(torch.cat(rewards_seen))
        self.log({"reward_mean": all_rewards.mean(), "reward_std": all_rewards.std(unbiased=False),
                  "loss": self.accelerator.reduce(torch.stack(losses).mean(), reduction="mean"), "epoch": epoch},
                 global_step)
        self.sd_pipeline.unet = self.accelerator.unwrap_model(self.unet)
        return global_step + 1


__all__ = ["AlignPropConfig", "AlignPropTrainer"]
