"""Denoising Diffusion Policy Optimization: ``DDPOConfig`` and ``DDPOTrainer`` (TRL-compatible names).

Black et al. 2023, 'Training Diffusion Models with Reinforcement Learning'. Every epoch samples
``sample_num_batches_per_epoch x sample_batch_size`` images with DDIM (``sample_eta`` > 0: each denoising step is a
Gaussian action, :func:`posttrain.rollout.diffusion.sample`), scores them with ``reward_function``, turns rewards
into advantages (per-prompt stat tracking or batch whitening, :mod:`posttrain.losses.diffusion`) and trains the
UNet (LoRA by default) on every recorded transition with the clipped importance-sampling objective
(:func:`posttrain.losses.diffusion.ddpo_loss`).

Log-probabilities enter the ratio per latent dimension (the transition's log-density divided by the number of
latent elements), as in TRL and the reference implementation, so ``train_clip_range`` has their scale.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..losses.diffusion import PerPromptStatTracker, ddpo_loss, whiten_rewards
from ..rollout.diffusion import sample, transition_log_prob
from .diffusion_base import DiffusionConfig, DiffusionTrainerBase


@dataclass
class DDPOConfig(DiffusionConfig):
    """Configuration of :class:`DDPOTrainer`. Field names and defaults follow TRL's ``DDPOConfig`` (except
    ``mixed_precision``, whose default runs anywhere, and the additions ``output_dir`` and ``lora_rank``)."""

    sample_batch_size: int = field(default=1, metadata={"help": "Images sampled per batch (per process)."})
    sample_num_batches_per_epoch: int = field(default=2, metadata={"help": "Sampling batches per epoch."})
    train_num_inner_epochs: int = field(default=1, metadata={"help": "Passes over each epoch's samples."})
    train_cfg: bool = field(default=True, metadata={"help": "Classifier-free guidance when re-scoring transitions."})
    train_adv_clip_max: float = field(default=5.0, metadata={"help": "Clip advantages to [-max, max]."})
    train_clip_range: float = field(default=1e-4, metadata={"help": "PPO clip range of the per-dimension ratio."})
    train_timestep_fraction: float = field(default=1.0, metadata={"help": "Fraction of each chain's steps trained on."})
    per_prompt_stat_tracking: bool = field(default=False, metadata={"help": "Standardise rewards per prompt."})
    per_prompt_stat_tracking_buffer_size: int = 16
    per_prompt_stat_tracking_min_count: int = 16
    async_reward_computation: bool = False
    max_workers: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.train_timestep_fraction <= 1.0:
            raise ValueError(f"train_timestep_fraction must be in (0, 1], got {self.train_timestep_fraction}")
        if self.sample_eta <= 0:
            raise ValueError("DDPO needs sample_eta > 0: with eta = 0 DDIM is deterministic and has no log-probability")
        total = self.sample_batch_size * self.sample_num_batches_per_epoch
        if total % self.train_batch_size:
            raise ValueError(f"sample_batch_size * sample_num_batches_per_epoch ({total}) must be a multiple of "
                             f"train_batch_size ({self.train_batch_size})")

    @property
    def num_train_timesteps(self) -> int:
        return max(1, int(self.sample_num_steps * self.train_timestep_fraction))


class DDPOTrainer(DiffusionTrainerBase):
    """DDPO on a ``StableDiffusionPipeline`` (or a local pipeline folder).

    ``reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`` with ``images`` (N, 3, H, W)
    in [0, 1]; ``prompt_function() -> (prompt, prompt_metadata)``; ``image_samples_hook(prompt_image_data,
    global_step, tracker)`` as in TRL. Logs TRL's names: ``reward_mean``, ``reward_std``, ``loss``, ``approx_kl``,
    ``clipfrac``, ``epoch`` (also kept in ``trainer.log_history``).
    """

    def __init__(self, config: DDPOConfig, reward_function: Callable, prompt_function: Callable, sd_pipeline: Any,
                 image_samples_hook: Optional[Callable] = None):
        super().__init__(config, reward_function, prompt_function, sd_pipeline, image_samples_hook,
                         gradient_accumulation_steps=config.train_gradient_accumulation_steps
                         * config.num_train_timesteps)
        self.stat_tracker = (PerPromptStatTracker(config.per_prompt_stat_tracking_buffer_size,
                                                  config.per_prompt_stat_tracking_min_count)
                             if config.per_prompt_stat_tracking else None)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_samples(self, num_batches: int, batch_size: int) -> tuple[list[dict[str, Any]], list[list[Any]]]:
        """Sample ``num_batches`` chains of ``batch_size`` images under the current UNet (no gradients)."""
        c = self.config
        self.unet.eval()
        samples, prompt_image_pairs = [], []
        for _ in range(num_batches):
            prompts, metadata = self.next_prompts(batch_size)
            with self.accelerator.autocast():
                out = sample(self.sd_pipeline, prompts, num_steps=c.sample_num_steps, eta=c.sample_eta,
                             guidance_scale=c.sample_guidance_scale, negative_prompt=self.negative_prompt,
                             generator=self.generator, unet=self.unet)
            samples.append({"prompt_embeds": out.prompt_embeds, "negative_prompt_embeds": out.negative_prompt_embeds,
                            "timesteps": out.timesteps, "latents": out.latents, "next_latents": out.next_latents,
                            "log_probs": out.log_probs})
            prompt_image_pairs.append([out.images, prompts, metadata])
        return samples, prompt_image_pairs

    def compute_advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Advantages of this process's samples from the rewards of all processes' samples."""
        all_rewards = self.accelerator.gather(rewards)
        if self.stat_tracker is not None:
            all_prompts = prompts
            if self.accelerator.num_processes > 1:
                from accelerate.utils import gather_object

                all_prompts = gather_object(prompts)
            advantages = self.stat_tracker.update(all_prompts, all_rewards)
        else:
            advantages = whiten_rewards(all_rewards)
        n = rewards.numel()
        start = self.accelerator.process_index * n
        return advantages[start:start + n].to(rewards.device)

    def step(self, epoch: int, global_step: int) -> int:
        """One DDPO epoch: sample, score, compute advantages, then ``train_num_inner_epochs`` passes of updates."""
        c = self.config
        samples, prompt_image_data = self.generate_samples(c.sample_num_batches_per_epoch, c.sample_batch_size)
        batch = {k: (torch.cat([s[k] for s in samples]) if samples[0][k] is not None else None) for k in samples[0]}
        rewards_list, prompts = [], []
        for images, batch_prompts, metadata in prompt_image_data:
            rewards, reward_metadata = self.compute_rewards(images, batch_prompts, metadata)
            rewards_list.append(rewards)
            prompts.extend(batch_prompts)
            prompt_image_data_row = [images, batch_prompts, metadata, rewards, reward_metadata]
            if self.image_samples_callback is not None and self.accelerator.is_main_process:
                tracker = self.accelerator.trackers[0] if self.accelerator.trackers else None
                self.image_samples_callback([prompt_image_data_row], global_step, tracker)
        rewards = torch.cat(rewards_list)
        all_rewards = self.accelerator.gather(rewards)
        epoch_metrics = {"reward_mean": all_rewards.mean(), "reward_std": all_rewards.std(unbiased=False),
                         "epoch": epoch}
        batch["advantages"] = self.compute_advantages(rewards, prompts)
        batch["prompts"] = prompts

        for inner_epoch in range(c.train_num_inner_epochs):
            global_step = self._train_on_samples(batch, epoch_metrics, global_step)
        return global_step

    def _train_on_samples(self, batch: dict[str, Any], epoch_metrics: dict[str, Any], global_step: int) -> int:
        c = self.config
        n, num_steps = batch["timesteps"].shape
        # shuffle the samples, and each sample's timesteps independently (every step is trained on equally often)
        perm = torch.randperm(n, generator=self.generator)
        time_perm = torch.stack([torch.randperm(num_steps, generator=self.generator) for _ in range(n)])
        rows = torch.arange(n)[:, None]
        shuffled = {}
        for key in ("timesteps", "latents", "next_latents", "log_probs"):
            value = batch[key][perm]
            shuffled[key] = value[rows, time_perm.to(value.device)] if value.dim() >= 2 else value
        for key in ("prompt_embeds", "negative_prompt_embeds", "advantages"):
            shuffled[key] = batch[key][perm] if batch[key] is not None else None
        latent_dims = batch["latents"][0, 0].numel()
        guidance = c.sample_guidance_scale if c.train_cfg else 1.0
        self.unet.train()
        info: dict[str, list[torch.Tensor]] = defaultdict(list)
        for start in range(0, n, c.train_batch_size):
            sl = slice(start, start + c.train_batch_size)
            negative = shuffled["negative_prompt_embeds"][sl] if shuffled["negative_prompt_embeds"] is not None else None
            for j in range(c.num_train_timesteps):
                with self.accelerator.accumulate(self.unet):
                    with self.accelerator.autocast():
                        log_probs = transition_log_prob(
                            self.unet, self.sd_pipeline.scheduler, shuffled["latents"][sl, j],
                            shuffled["next_latents"][sl, j], shuffled["timesteps"][sl, j],
                            shuffled["prompt_embeds"][sl], negative, guidance, c.sample_eta)
                    out = ddpo_loss(log_probs / latent_dims, shuffled["log_probs"][sl, j] / latent_dims,
                                    shuffled["advantages"][sl], clip_range=c.train_clip_range,
                                    adv_clip_max=c.train_adv_clip_max)
                    info["loss"].append(out.loss.detach())
                    info["approx_kl"].append(out.approx_kl)
                    info["clipfrac"].append(out.clipfrac)
                    self.accelerator.backward(out.loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.trainable_parameters, c.train_max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if self.accelerator.sync_gradients:
                    metrics = {k: self.accelerator.reduce(torch.stack(v).mean(), reduction="mean")
                               for k, v in info.items()}
                    metrics.update(epoch_metrics)
                    self.log(metrics, global_step)
                    global_step += 1
                    info = defaultdict(list)
        self.sd_pipeline.unet = self.accelerator.unwrap_model(self.unet)
        return global_step


__all__ = ["DDPOConfig", "DDPOTrainer"]
