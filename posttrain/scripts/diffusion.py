"""DDPO and AlignProp from the command line (the diffusion trainers; needs ``diffusers``).

    posttrain ddpo --pretrained_model PIPELINE --output_dir OUT [--target_color 1,0.5,0] [DDPOConfig options]
    posttrain alignprop --pretrained_model PIPELINE --output_dir OUT [AlignPropConfig options]

``PIPELINE`` is a hub id, a local ``StableDiffusionPipeline`` folder, or ``kit:tiny`` (the kit's tiny pipeline,
built from configs, offline). Prompts cycle through ``--prompts``; the reward is the built-in colour reward
(:func:`posttrain.rollout.diffusion.color_reward`): write a script around the trainers for another reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PROMPTS = ("a cat", "a dog", "a horse", "a rabbit", "a fox", "a bird", "a cow", "a duck")


@dataclass
class DiffusionScriptArguments:
    """The pipeline, prompts and reward of the diffusion scripts (``pretrained_model``/``pretrained_revision`` are TRL's
    script names)."""

    pretrained_model: str = field(default="runwayml/stable-diffusion-v1-5",
                                  metadata={"help": "Hub id, local pipeline folder, or 'kit:tiny'."})
    pretrained_revision: str = field(default="main", metadata={"help": "Hub revision of the pipeline."})
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS),
                               metadata={"help": "Prompts to cycle through."})
    target_color: str = field(default="1,0.5,0", metadata={"help": "Colour reward target 'r,g,b' in [0, 1]."})


def load_pipeline_arg(name: str, revision: str = "main"):
    """The ``StableDiffusionPipeline`` a ``--pretrained_model`` value names."""
    if name == "kit:tiny":
        from ..kit.diffusion import build_tiny_diffusion

        return build_tiny_diffusion(seed=0)
    try:
        from diffusers import StableDiffusionPipeline
    except ImportError as e:
        raise SystemExit('error: the diffusion trainers need diffusers: pip install "posttrain[diffusers]"') from e
    return StableDiffusionPipeline.from_pretrained(name, revision=revision)


def cycle_prompts(prompts):
    """A ``prompt_function`` returning ``prompts`` in turn, each with empty metadata."""
    if not prompts:
        raise SystemExit("error: --prompts needs at least one prompt.")
    state = {"next": 0}

    def prompt_fn():
        prompt = prompts[state["next"] % len(prompts)]
        state["next"] += 1
        return prompt, {}

    return prompt_fn


def _run(config_class, trainer_class, prog: str, argv):
    from ..rollout.diffusion import color_reward
    from .args import PosttrainParser

    script_args, config = PosttrainParser((DiffusionScriptArguments, config_class), prog=prog).parse_args_and_config(argv)
    try:
        rgb = [float(x) for x in script_args.target_color.split(",")]
        reward_fn = color_reward(rgb)
    except ValueError as e:
        raise SystemExit(f"error: --target_color must be three numbers in [0, 1] like 1,0.5,0 ({e})") from e
    pipeline = load_pipeline_arg(script_args.pretrained_model, script_args.pretrained_revision)
    trainer = trainer_class(config, reward_fn, cycle_prompts(script_args.prompts), pipeline)
    trainer.train()
    return 0


def main_ddpo(argv: list[str] | None = None) -> int:
    from ..trainers.ddpo import DDPOConfig, DDPOTrainer

    return _run(DDPOConfig, DDPOTrainer, "posttrain ddpo", argv)


def main_alignprop(argv: list[str] | None = None) -> int:
    from ..trainers.alignprop import AlignPropConfig, AlignPropTrainer

    return _run(AlignPropConfig, AlignPropTrainer, "posttrain alignprop", argv)
