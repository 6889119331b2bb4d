"""Build a tiny randomly initialised Stable Diffusion pipeline for tests, examples and demos.

Every component is created from a config (no hub access): a small ``UNet2DConditionModel`` on 8x8 latents, a
two-block ``AutoencoderKL`` (16x16 RGB images), a two-layer ``CLIPTextModel`` on the kit's byte-level tokenizer,
and a ``DDIMScheduler``. The safety checker is off. Needs ``diffusers`` (``pip install posttrain[diffusers]``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["build_tiny_diffusion"]

TEXT_MAX_LENGTH = 16
"""Prompt length (tokens) of the tiny pipeline's text encoder; prompts are padded or truncated to it."""


def build_tiny_diffusion(
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    latent_size: int = 8,
    **unet_overrides: Any,
) -> StableDiffusionPipeline | str:
    """Build a tiny text-to-image ``diffusers.StableDiffusionPipeline`` (float32, CPU).

    Args:
        seed: initialisation seed; the same arguments give identical weights. The global torch RNG state is left
            untouched.
        output_dir: if given, save the pipeline there (``StableDiffusionPipeline.from_pretrained(output_dir)`` loads
            it offline) and return the path.
        latent_size: side of the square latents; images are twice as large.
        **unet_overrides: any ``UNet2DConditionModel`` config field.

    Returns:
        The pipeline, or the output directory as a string if ``output_dir`` is set.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from posttrain.kit import load_tokenizer

    tokenizer = load_tokenizer()
    tokenizer.model_max_length = TEXT_MAX_LENGTH
    text_dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_kwargs: dict[str, Any] = dict(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        unet_kwargs.update(unet_overrides)
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=2 * latent_size,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_MAX_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    if output_dir is None:
        return pipeline
    path = os.fspath(output_dir)
    os.makedirs(path, exist_ok=True)
    pipeline.save_pretrained(path)
    return path
