"""Sampling from a text-to-image diffusion pipeline as a sequence of stochastic actions.

DDIM sampling with ``eta > 0`` is a Markov chain of Gaussian transitions
x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I): each denoising step is an action whose log-probability DDPO
(Black et al. 2023, 'Training Diffusion Models with Reinforcement Learning') needs for its importance ratio.
:func:`sample` records the chain (latents, timesteps, per-step log-probabilities); :func:`transition_log_prob`
re-scores recorded transitions under the current UNet. With ``grad_from_step`` the same loop keeps the graph
through the last denoising steps (UNet calls checkpointed), which AlignProp (Prabhudesai et al. 2023) backpropagates
a reward through.

The functions take a ``diffusers`` ``StableDiffusionPipeline`` (or its components) but import nothing from
``diffusers`` themselves. Only DDIM-style schedulers (``alphas_cumprod``, ``final_alpha_cumprod``) with
``prediction_type`` ``"epsilon"`` or ``"v_prediction"`` are supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DiffusionSamples",
    "color_reward",
    "image_closeness_reward",
    "ddim_step_mean_std",
    "decode_latents",
    "encode_prompts",
    "gaussian_log_prob",
    "predict_noise",
    "sample",
    "transition_log_prob",
]


@dataclass
class DiffusionSamples:
    """What :func:`sample` returns for ``N`` prompts and ``S`` denoising steps.

    ``images`` (N, 3, H, W) in [0, 1]; ``latents`` (N, S, C, h, w): x_t before each step; ``next_latents``
    (N, S, C, h, w): x_{t-1} after it; ``timesteps`` (N, S); ``log_probs`` (N, S): log N(x_{t-1}; mu, sigma^2 I)
    summed over the latent dimensions; ``prompt_embeds`` / ``negative_prompt_embeds`` (N, L, D) (the latter None
    without classifier-free guidance)."""

    images: torch.Tensor
    latents: torch.Tensor
    next_latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: Optional[torch.Tensor]


def encode_prompts(pipeline: Any, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Text-encoder hidden states (N, L, D) of ``prompts``, padded/truncated to the tokenizer's model_max_length."""
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    device = device if device is not None else text_encoder.device
    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


def _alphas(scheduler: Any, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-bar at t and at the previous DDIM timestep t - T/S (``final_alpha_cumprod`` below 0), per sample."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps - step
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=timesteps.device)
    alpha_t = alphas_cumprod[timesteps.long()]
    alpha_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0).long()], final)
    return alpha_t, alpha_prev


def ddim_step_mean_std(
    scheduler: Any, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the DDIM transition p(x_{t-1} | x_t) — Song et al. 2021, 'Denoising Diffusion Implicit
    Models', Eq. 12 and 16: mu = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat,
    sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev).

    ``timesteps`` is (N,) (or a scalar); returns ``mean`` like ``latents`` and ``std`` broadcastable to it, both
    float32.
    """
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError("the scheduler's `thresholding=True` (dynamic thresholding) is not supported by the DDIM "
                         "step with log-probabilities; load the scheduler with `thresholding=False`")
    x = latents.float()
    out = model_output.float()
    t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
    alpha_t, alpha_prev = _alphas(scheduler, t)
    shape = (-1,) + (1,) * (x.dim() - 1)
    alpha_t, alpha_prev = alpha_t.view(shape), alpha_prev.view(shape)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x - (1 - alpha_t).sqrt() * out
        eps = alpha_t.sqrt() * out + (1 - alpha_t).sqrt() * x
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
    if getattr(scheduler.config, "clip_sample", False):  # as DDIMScheduler.step: x0_hat clipped, eps_hat the model's
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over every dimension but the first (per-sample log-density), float32."""
    x, mean = x.float(), mean.float()
    std = std.float().expand_as(x)
    logp = -((x - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).sum(dim=1)


def predict_noise(
    unet: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: Optional[torch.Tensor] = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """UNet output with classifier-free guidance — Ho & Salimans 2022: uncond + w (cond - uncond); one batched call."""
    t = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(latents.shape[0])
    if negative_prompt_embeds is None or guidance_scale == 1.0:
        return unet(latents, t, encoder_hidden_states=prompt_embeds).sample
    both = unet(torch.cat([latents, latents]), torch.cat([t, t]),
                encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds])).sample
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def transition_log_prob(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    next_latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: Optional[torch.Tensor] = None,
    guidance_scale: float = 1.0,
    eta: float = 1.0,
) -> torch.Tensor:
    """log p_theta(x_{t-1} | x_t, c) (N,) of recorded transitions under the current UNet (DDPO's ratio numerator).

    ``scheduler`` must have had ``set_timesteps`` called with the sampling step count."""
    noise = predict_noise(unet, latents, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale)
    mean, std = ddim_step_mean_std(scheduler, noise, timesteps, latents, eta)
    return gaussian_log_prob(next_latents, mean, std)


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] from latents (differentiable)."""
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def sample(
    pipeline: Any,
    prompts: Sequence[str],
    num_steps: int = 50,
    eta: float = 1.0,
    guidance_scale: float = 5.0,
    negative_prompt: str = "",
    generator: Optional[torch.Generator] = None,
    unet: Any = None,
    grad_from_step: Optional[int] = None,
) -> DiffusionSamples:
    """Sample images for ``prompts`` with DDIM (``eta`` > 0 makes every step a Gaussian action) and record the chain.

    ``unet`` overrides ``pipeline.unet`` (e.g. an accelerate-wrapped one). ``grad_from_step=None`` samples without
    gradients; an index ``k`` keeps the graph through steps ``k .. num_steps - 1`` and the VAE decode (earlier steps
    run without gradients: truncated backpropagation), with each UNet call checkpointed.
    """
    unet = unet if unet is not None else pipeline.unet
    scheduler = pipeline.scheduler
    vae = pipeline.vae
    device = next(unet.parameters()).device
    n = len(prompts)
    with torch.no_grad():
        prompt_embeds = encode_prompts(pipeline, prompts, device)
        negative_embeds = None
        if guidance_scale != 1.0:
            negative_embeds = encode_prompts(pipeline, [negative_prompt] * n, device)
    scheduler.set_timesteps(num_steps, device=device)
    in_channels = unet.config.in_channels if hasattr(unet, "config") else pipeline.unet.config.in_channels
    size = pipeline.unet.config.sample_size
    x = torch.randn((n, in_channels, size, size), generator=generator, device="cpu").to(device)
    x = x * scheduler.init_noise_sigma
    all_latents, all_next, all_logps, all_t = [], [], [], []
    for i, t in enumerate(scheduler.timesteps):
        t_batch = t.expand(n).to(device)
        with_grad = grad_from_step is not None and i >= grad_from_step
        with torch.set_grad_enabled(with_grad):
            model_in = scheduler.scale_model_input(x, t)
            if with_grad:
                noise = checkpoint(predict_noise, unet, model_in, t_batch, prompt_embeds, negative_embeds,
                                   guidance_scale, use_reentrant=False)
            else:
                noise = predict_noise(unet, model_in, t_batch, prompt_embeds, negative_embeds, guidance_scale)
            mean, std = ddim_step_mean_std(scheduler, noise, t_batch, x, eta)
            step_noise = torch.randn(x.shape, generator=generator, device="cpu").to(device)
            x_next = mean + std * step_noise
            logp = gaussian_log_prob(x_next.detach(), mean.detach(), std) if eta > 0 else torch.zeros(n, device=device)
        all_latents.append(x.detach())
        all_next.append(x_next.detach())
        all_logps.append(logp)
        all_t.append(t_batch)
        x = x_next
    with torch.set_grad_enabled(grad_from_step is not None):
        images = decode_latents(vae, x.to(next(vae.parameters()).dtype))
    return DiffusionSamples(
        images=images,
        latents=torch.stack(all_latents, dim=1),
        next_latents=torch.stack(all_next, dim=1),
        timesteps=torch.stack(all_t, dim=1),
        log_probs=torch.stack(all_logps, dim=1),
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
    )


# -- image rewards: (images, prompts, prompt_metadata) -> (rewards, reward_metadata), differentiable -----------------


def color_reward(rgb: Sequence[float], scale: float = 100.0):
    """Reward function of the diffusion trainers: ``-scale x`` the mean squared distance of each image's pixels to the
    colour ``rgb`` (three numbers in [0, 1]). Differentiable, so AlignProp can backpropagate it."""
    target = torch.tensor([float(c) for c in rgb]).view(1, 3, 1, 1)
    if target.numel() != 3 or not bool(((target >= 0) & (target <= 1)).all()):
        raise ValueError(f"rgb must be three numbers in [0, 1], got {list(rgb)!r}")

    def reward_fn(images: torch.Tensor, prompts: Any = None, prompt_metadata: Any = None):
        return -((images - target.to(images.device, images.dtype)) ** 2).mean(dim=(1, 2, 3)) * scale, {}

    return reward_fn


def image_closeness_reward(target: torch.Tensor, scale: float = 100.0):
    """Reward function: ``-scale x`` the mean squared distance of each image to ``target`` ((1, 3, H, W) in [0, 1],
    the images' size). Differentiable."""

    def reward_fn(images: torch.Tensor, prompts: Any = None, prompt_metadata: Any = None):
        if images.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"target image is {tuple(target.shape[-2:])}, the samples {tuple(images.shape[-2:])}")
        return -((images - target.to(images.device, images.dtype)) ** 2).mean(dim=(1, 2, 3)) * scale, {}

    return reward_fn
