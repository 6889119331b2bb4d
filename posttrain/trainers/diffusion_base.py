"""What the diffusion trainers (:class:`~posttrain.trainers.ddpo.DDPOTrainer`,
:class:`~posttrain.trainers.alignprop.AlignPropTrainer`) share: the config fields common to TRL's ``DDPOConfig`` and
``AlignPropConfig``, an accelerate ``Accelerator`` (device, mixed precision, gradient accumulation, trackers), the
pipeline (frozen VAE and text encoder, LoRA on the UNet through peft), the optimizer, metric logging and saving.

Diffusion RL samples whole denoising chains and trains on them, which does not fit ``transformers.Trainer``; these
trainers run their own loop (as TRL's do). Needs ``diffusers`` (``pip install posttrain[diffusers]``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from ..allocator import raise_mmap_threshold
from .base import write_log
from .speed import bf16_supported, has_accelerator
from .run_dir import TrainingDivergedError, nonfinite_parameters, publish_files, write_error

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class DiffusionConfig:
    """Fields shared by :class:`~posttrain.DDPOConfig` and :class:`~posttrain.AlignPropConfig` (TRL's names)."""

    exp_name: str = field(default_factory=lambda: os.path.splitext(os.path.basename(sys.argv[0]))[0])
    run_name: str = ""
    seed: int = 0
    log_with: Optional[str] = field(default=None, metadata={"help": "accelerate tracker: 'wandb' or 'tensorboard'."})
    tracker_kwargs: dict = field(default_factory=dict)
    accelerator_kwargs: dict = field(default_factory=dict)
    project_kwargs: dict = field(default_factory=dict)
    tracker_project_name: str = "trl"
    logdir: str = "logs"
    output_dir: str = field(default="outputs", metadata={"help": "Where checkpoints and the final UNet are saved."})
    num_epochs: int = 100
    save_freq: int = field(default=1, metadata={"help": "Epochs between checkpoints (0: only the final save)."})
    num_checkpoint_limit: int = 5
    mixed_precision: Optional[str] = field(
        default=None, metadata={"help": "'no', 'fp16' or 'bf16'. Default: the `accelerate launch` config's, else bf16 "
                                        "where the hardware runs it natively, else no (TRL's default is fp16)."})
    allow_tf32: bool = True
    resume_from: str = ""
    sample_num_steps: int = 50
    sample_eta: float = 1.0
    sample_guidance_scale: float = 5.0
    train_batch_size: int = 1
    train_use_8bit_adam: bool = False
    train_learning_rate: float = 3e-4
    train_adam_beta1: float = 0.9
    train_adam_beta2: float = 0.999
    train_adam_weight_decay: float = 1e-4
    train_adam_epsilon: float = 1e-8
    train_gradient_accumulation_steps: int = 1
    train_max_grad_norm: float = 1.0
    negative_prompts: Optional[str] = ""
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters on the UNet's attention projections."})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank (and alpha) when use_lora."})
    push_to_hub: bool = False

    def __post_init__(self):
        if self.mixed_precision is None:
            launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
            if launcher in ("no", "fp16", "bf16"):
                self.mixed_precision = launcher
            else:
                self.mixed_precision = "bf16" if bf16_supported() else "no"
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.log_with not in (None, "wandb", "tensorboard"):
            raise ValueError(f"log_with must be None, 'wandb' or 'tensorboard', got {self.log_with!r}")
        if self.resume_from:
            raise NotImplementedError("resume_from is not supported yet; load the saved UNet/LoRA into the pipeline")
        if self.push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; upload output_dir with huggingface_hub")
        if self.sample_num_steps < 1:
            raise ValueError(f"sample_num_steps must be >= 1, got {self.sample_num_steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_pipeline(sd_pipeline: Any) -> Any:
    """A ``StableDiffusionPipeline`` from a pipeline, a wrapper holding one as ``.sd_pipeline``, or a local path."""
    if isinstance(sd_pipeline, (str, os.PathLike)):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(os.fspath(sd_pipeline))
    return getattr(sd_pipeline, "sd_pipeline", sd_pipeline)


class DiffusionTrainerBase:
    """Accelerator, pipeline, LoRA, optimizer, logging and saving for the diffusion trainers."""

    def __init__(self, config: DiffusionConfig, reward_function: Callable, prompt_function: Callable,
                 sd_pipeline: Any, image_samples_hook: Optional[Callable] = None, gradient_accumulation_steps: int = 1):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        raise_mmap_threshold()
        self.config = config
        self.reward_fn = reward_function
        self.prompt_fn = prompt_function
        self.image_samples_callback = image_samples_hook
        project_kwargs = dict(config.project_kwargs)
        project_kwargs.setdefault("project_dir", config.output_dir)
        project_kwargs.setdefault("logging_dir", os.path.join(config.output_dir, config.logdir))
        accelerator_kwargs = dict(config.accelerator_kwargs)
        # without cpu=True accelerate sets up no process group on a CPU-only machine: under `accelerate launch` /
        # torchrun every process would train alone on its own samples
        accelerator_kwargs.setdefault("cpu", not has_accelerator())
        self.accelerator = Accelerator(
            log_with=config.log_with,
            mixed_precision=config.mixed_precision,
            project_config=ProjectConfiguration(**project_kwargs),
            gradient_accumulation_steps=gradient_accumulation_steps,
            **accelerator_kwargs,
        )
        if config.log_with is not None and self.accelerator.is_main_process:
            self.accelerator.init_trackers(config.tracker_project_name, config=config.to_dict(),
                                           init_kwargs=config.tracker_kwargs)
        set_seed(config.seed, device_specific=True)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.generator = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)

        self.sd_pipeline = load_pipeline(sd_pipeline)
        pipe = self.sd_pipeline
        device = self.accelerator.device
        frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        for module in (pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
            module.to(device)
            if device.type == "cuda" and frozen_dtype != torch.float32:
                module.to(dtype=frozen_dtype)
            module.eval()
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None
        unet = pipe.unet
        unet.requires_grad_(False)
        if config.use_lora:
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, init_lora_weights="gaussian",
                                        target_modules=LORA_TARGET_MODULES))
            for p in unet.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            unet.requires_grad_(True)
        unet.to(device)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer(trainable)
        self.unet, self.optimizer = self.accelerator.prepare(unet, self.optimizer)
        self.trainable_parameters = trainable
        self.negative_prompt = config.negative_prompts or ""
        self.log_history: list[dict[str, float]] = []
        self.first_epoch = 0

    def _make_optimizer(self, params):
        c = self.config
        if c.train_use_8bit_adam:
            import bitsandbytes as bnb

            optimizer_cls = bnb.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        return optimizer_cls(params, lr=c.train_learning_rate, betas=(c.train_adam_beta1, c.train_adam_beta2),
                             weight_decay=c.train_adam_weight_decay, eps=c.train_adam_epsilon)

    # ------------------------------------------------------------------------------------------------------------
    def next_prompts(self, n: int) -> tuple[list[str], list[Any]]:
        """``n`` prompts and their metadata from ``prompt_function``."""
        pairs = [self.prompt_fn() for _ in range(n)]
        return [p for p, _ in pairs], [m for _, m in pairs]

    def compute_rewards(self, images: torch.Tensor, prompts: list[str], metadata: list[Any]):
        """``reward_function(images, prompts, prompt_metadata)`` -> (rewards (N,) float32 tensor, reward metadata)."""
        out = self.reward_fn(images, prompts, metadata)
        rewards, reward_metadata = out if isinstance(out, tuple) else (out, {})
        rewards = torch.as_tensor(rewards, dtype=torch.float32, device=self.accelerator.device).reshape(-1)
        return rewards, reward_metadata

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        row["step"] = step
        self.log_history.append(row)
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)

    # ------------------------------------------------------------------------------------------------------------
    def train(self, epochs: Optional[int] = None) -> None:
        """Run ``epochs`` (default ``config.num_epochs``) epochs, checkpointing every ``save_freq``, then save."""
        from tqdm.auto import tqdm

        global_step = 0
        epochs = self.config.num_epochs if epochs is None else epochs
        bar = tqdm(range(self.first_epoch, epochs), desc=type(self).__name__, unit="epoch",
                   disable=not self.accelerator.is_local_main_process)
        for epoch in bar:
            logged = len(self.log_history)
            global_step = self.step(epoch, global_step)
            self._stop_if_diverged(epoch, self.log_history[logged:])
            if self.log_history:  # the epoch's last logged metrics, on the bar
                last = self.log_history[-1]
                bar.set_postfix({k: f"{last[k]:.4g}" for k in ("reward_mean", "loss") if k in last})
            if self.config.save_freq and (epoch + 1) % self.config.save_freq == 0 and epoch + 1 < epochs:
                self._checkpoint(epoch)
        self.save_model(self.config.output_dir)
        if self.accelerator.is_main_process:
            write_log(self.log_history, self.config.output_dir)
        self.accelerator.end_training()

    def _stop_if_diverged(self, epoch: int, rows: list[dict[str, float]]) -> None:
        """Raise :class:`~.run_dir.TrainingDivergedError` when a loss logged in ``epoch`` is not finite (before
        anything of this epoch is saved), naming the newest checkpoint (docs/reliability.md)."""
        bad = [row for row in rows if not math.isfinite(row.get("loss", 0.0))]
        if not bad:
            return
        root = os.path.join(self.config.output_dir, "checkpoints")
        found = sorted((d for d in os.listdir(root) if d.startswith("checkpoint_")),
                       key=lambda d: int(d.split("_")[1])) if os.path.isdir(root) else []
        note = (f"The last good checkpoint is {os.path.join(root, found[-1])}." if found
                else "No checkpoint was written before it.")
        raise TrainingDivergedError(f"Training stopped in epoch {epoch}: the loss was not finite at step "
                                    f"{bad[0]['step']} ({bad[0]['loss']}); nothing of this epoch was saved. {note} "
                                    "Lower train_learning_rate or check the reward function.")

    def step(self, epoch: int, global_step: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _checkpoint(self, epoch: int) -> None:
        root = os.path.join(self.config.output_dir, "checkpoints")
        self.save_model(os.path.join(root, f"checkpoint_{epoch}"))
        if self.accelerator.is_main_process and self.config.num_checkpoint_limit:
            existing = sorted((d for d in os.listdir(root) if d.startswith("checkpoint_")),
                              key=lambda d: int(d.split("_")[1]))
            for old in existing[: max(0, len(existing) - self.config.num_checkpoint_limit)]:
                shutil.rmtree(os.path.join(root, old))

    def save_model(self, save_directory: str) -> None:
        """LoRA: the adapter as ``pytorch_lora_weights.safetensors`` (``pipeline.load_lora_weights(dir)`` loads it);
        full fine-tuning: the UNet with ``save_pretrained`` under ``save_directory/unet``."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        unet = self.accelerator.unwrap_model(self.unet)
        if bad := nonfinite_parameters(unet):
            raise TrainingDivergedError(f"Refusing to save to {save_directory}: {len(bad)} UNet tensor(s) hold NaN or "
                                        f"inf (first: {bad[0]}).")
        # written beside the target and moved into place file by file once complete
        parent, name = os.path.split(os.path.abspath(save_directory))
        staged = os.path.join(parent, f".{name}.posttrain-staging")
        shutil.rmtree(staged, ignore_errors=True)
        try:
            if self.config.use_lora:
                from diffusers import StableDiffusionPipeline
                from peft.utils import get_peft_model_state_dict

                StableDiffusionPipeline.save_lora_weights(staged, unet_lora_layers=get_peft_model_state_dict(unet))
            else:
                unet.save_pretrained(os.path.join(staged, "unet"))
        except OSError as err:
            error = write_error(err, save_directory, staged, "")
            shutil.rmtree(staged, ignore_errors=True)
            raise error from err
        publish_files(staged, save_directory)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(use_lora={self.config.use_lora}, device={self.accelerator.device})"
