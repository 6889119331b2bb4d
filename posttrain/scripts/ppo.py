"""Proximal Policy Optimization from the command line.

    posttrain ppo --model_name_or_path POLICY --dataset_name PROMPTS --reward_model_path RM --output_dir OUT
    posttrain ppo ... --sft_model_path SFT --value_model_path VALUE --kl_coef 0.05 --num_ppo_epochs 4
    posttrain ppo ... --reward_funcs accuracy --value_model_path VALUE       # a rule-based reward instead
    python -m posttrain.scripts.ppo ...          # the same

The policy (and the reference) is ``--sft_model_path`` when given, else ``--model_name_or_path``; the value model
is ``--value_model_path`` when given, else the reward model's checkpoint (TRL's convention: a fresh copy of the
reward model becomes the critic). PROMPTS need a ``prompt`` column (text or messages). The trained policy is
saved to OUT as an ordinary model folder, the value model to OUT/value_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.ppo import PPOConfig, PPOTrainer
from .common import parse, train
from .grpo import OnlineScriptArguments, reward_functions


@dataclass
class PPOScriptArguments(OnlineScriptArguments):
    """Data, reward and model-path options of the PPO scripts (TRL's names)."""

    sft_model_path: str | None = field(default=None, metadata={"help": "The policy to start from (default: --model_name_or_path)."})
    value_model_path: str | None = field(default=None, metadata={"help": "The value model (default: the reward model's checkpoint)."})


def main(argv: list[str] | None = None) -> int:
    script_args, training_args, model_args = parse(PPOConfig, argv, "posttrain ppo", PPOScriptArguments)
    if script_args.sft_model_path:
        model_args.model_name_or_path = script_args.sft_model_path
    funcs = reward_functions(script_args, training_args.max_completion_length)
    reward_model = funcs[0] if isinstance(funcs[0], str) else None
    value_model = script_args.value_model_path or reward_model
    if value_model is None:
        raise SystemExit("error: PPO needs a value model: give --value_model_path (or --reward_model_path, whose "
                         "checkpoint then initialises the value model).")
    train(PPOTrainer, script_args, training_args, model_args, reward_model=reward_model,
          reward_funcs=[f for f in funcs if f is not reward_model] or None, value_model=value_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
