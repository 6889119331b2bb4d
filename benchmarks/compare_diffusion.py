"""A fixed sampled chain for the DDPO check: both libraries train on the same recorded transitions.

DDPO's first step depends on the images each library samples, and the two sample differently (their own DDIM loops
and RNG use), so whole steps cannot be compared as they run. Both split an epoch into "sample" (a method that returns
the recorded chains and the images) and "train on the samples" (advantages from the rewards, the transition
log-probabilities re-scored under the current UNet, the clipped PPO objective). The check therefore records one chain
once, here, and replaces each library's sampling method by one that returns it in that library's layout:

* posttrain: ``generate_samples`` -> dicts with ``log_probs`` as the transition's summed log-density (posttrain
  divides by the number of latent elements itself);
* TRL 0.21: ``_generate_samples`` -> dicts with ``prompt_ids`` and ``log_probs`` as the per-element mean (TRL's
  scheduler step returns the mean over the latent's elements).

The recorded "old" log-probabilities are the sampler's own, shifted per transition by a fixed random amount (about
twice the default clip range per element), so the importance ratios are not all 1: clipping, ``clipfrac`` and
``approx_kl`` are exercised, and the loss depends on each library's re-scoring of the transitions.

    python benchmarks/compare_diffusion.py record PIPELINE_DIR OUT.pt --batch 8 --steps 10   # posttrain's venv
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIFT = 2e-4  # standard deviation of the per-element shift of the recorded log-probabilities


def record(pipeline_dir: str, out: str, batch: int, steps: int, eta: float = 1.0, guidance: float = 5.0,
           seed: int = 0) -> str:
    """Sample ``batch`` chains of ``steps`` DDIM steps from the pipeline folder with posttrain's sampler (harness
    input, run in posttrain's venv) and save them with the prompts, their token ids and the decoded images."""
    import torch
    from diffusers import StableDiffusionPipeline

    sys.path.insert(0, str(ROOT))
    from benchmarks.compare_worker import CyclePrompts
    from posttrain.rollout.diffusion import sample

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    prompts_fn = CyclePrompts()
    prompts = [prompts_fn()[0] for _ in range(batch)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        o = sample(pipe, prompts, num_steps=steps, eta=eta, guidance_scale=guidance, negative_prompt="", generator=gen)
    dims = o.latents[0, 0].numel()
    shift = torch.randn(o.log_probs.shape, generator=torch.Generator().manual_seed(seed + 1)) * SHIFT
    ids = pipe.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length).input_ids
    chain = {"prompts": prompts, "prompt_ids": ids, "prompt_embeds": o.prompt_embeds,
             "negative_prompt_embeds": o.negative_prompt_embeds, "timesteps": o.timesteps.long(),
             "latents": o.latents, "next_latents": o.next_latents,
             "log_probs": o.log_probs.float() + shift * dims,  # summed over the latent's elements
             "latent_dims": dims, "images": o.images.detach().float(), "num_steps": steps}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(chain, out)
    return out


def install_fixed_chain(trainer, lib: str, cfg: dict) -> None:
    """Replace ``trainer``'s sampling with the recorded chain (``cfg['chain']``), in the library's own layout."""
    import torch

    path = cfg["chain"]
    chain = torch.load(path, weights_only=False)
    with open(path, "rb") as f:
        trainer._fixed_chain_fingerprint = hashlib.sha1(f.read()).hexdigest()[:12]
    n = len(chain["prompts"])
    meta = [{} for _ in range(n)]
    trainer.sd_pipeline.scheduler.set_timesteps(chain["num_steps"])  # sampling would have set it
    if lib == "posttrain":
        def generate_samples(num_batches, batch_size):
            assert num_batches == 1 and batch_size == n, (num_batches, batch_size, n)
            s = {k: chain[k].clone() for k in ("prompt_embeds", "negative_prompt_embeds", "timesteps", "latents",
                                              "next_latents", "log_probs")}
            return [s], [[chain["images"].clone(), list(chain["prompts"]), meta]]

        trainer.generate_samples = generate_samples
    else:
        def _generate_samples(iterations, batch_size):
            assert iterations == 1 and batch_size == n, (iterations, batch_size, n)
            s = {k: chain[k].clone() for k in ("prompt_ids", "prompt_embeds", "negative_prompt_embeds", "timesteps",
                                              "latents", "next_latents")}
            s["log_probs"] = chain["log_probs"] / chain["latent_dims"]  # TRL: mean over the latent's elements
            return [s], [[chain["images"].clone(), tuple(chain["prompts"]), tuple(meta)]]

        trainer._generate_samples = _generate_samples


def install_shared_noise(trainer, cfg: dict) -> None:
    """Make every ``torch.randn`` draw during training come from one private generator seeded with ``cfg['seed']``.

    AlignProp's step is the sampling itself, so equal numbers need equal noise. Both libraries draw their noise with
    ``torch.randn`` (posttrain in ``rollout.diffusion.sample``; TRL 0.21 through diffusers' and its own
    ``randn_tensor``): the initial latents, then one draw per denoising step (``eta`` > 0), in the same order and
    shapes. Served from the same seeded stream, they draw the same values; the sequence of shapes drawn is the run's
    first-batch fingerprint, so a difference in what was drawn shows as a fingerprint mismatch. The gradient norm
    each step clips (``accelerator.clip_grad_norm_``, called by both) is recorded as ``grad_norm``: the gradient
    through the sampler is compared too."""
    import torch

    original = torch.randn
    stream = torch.Generator().manual_seed(cfg.get("seed", 0))
    shapes: list = []

    def randn(*size, generator=None, dtype=None, device=None, **kw):  # noqa: ARG001 - the caller's generator is replaced
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        shapes.append(list(shape))
        x = original(shape, generator=stream, dtype=torch.float32)
        return x.to(dtype=dtype or torch.get_default_dtype(), device=device or "cpu")

    torch.randn = randn
    trainer._noise_shapes = shapes
    trainer._grad_norms = []
    clip = trainer.accelerator.clip_grad_norm_

    def recording_clip(*a, **k):
        norm = clip(*a, **k)
        trainer._grad_norms.append(float(norm))
        return norm

    trainer.accelerator.clip_grad_norm_ = recording_clip


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["record"])
    p.add_argument("pipeline_dir")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    print(record(a.pipeline_dir, a.out, a.batch, a.steps))
    os._exit(0)
