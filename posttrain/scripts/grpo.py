"""Group Relative Policy Optimization from the command line.

    posttrain grpo --model_name_or_path MODEL --dataset_name PROMPTS --reward_funcs accuracy --output_dir OUT
    posttrain grpo ... --reward_funcs accuracy format --reward_weights 1.0 0.2
    posttrain grpo ... --reward_funcs my_rewards.py:exact_match         # your own function
    posttrain grpo ... --reward_model_name_or_path RM                   # a sequence-classification reward model
    posttrain grpo ... --tools my_tools.py:multiply --max_tool_calling_iterations 2     # tool calling
    posttrain grpo ... --environment_factory my_env.py:GuessNumberEnv               # a multi-turn environment
    python -m posttrain.scripts.grpo ...          # the same

MODEL is a hub id or a local folder; PROMPTS a hub id, a local json/jsonl/parquet/csv file or a saved dataset
folder with a ``prompt`` column (text or messages); every other column (e.g. ``answer``) reaches the reward
functions. ``--reward_funcs`` takes built-in names (accuracy, format, think_format, length, soft_overlong;
TRL's ``accuracy_reward`` / ``think_format_reward`` / ``get_soft_overlong_punishment`` spellings work too) or
``module:function`` / ``file.py:function`` paths. Reward models and functions can be combined. ``--tools`` and
``--environment_factory`` take such paths too (GRPO and RLOO; docs/agents.md); an environment that gives the reward
makes ``--reward_funcs`` optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rollout.rewards import get_reward_func, load_callable
from ..trainers.grpo import GRPOConfig, GRPOTrainer
from .args import ScriptArguments
from .common import parse, train


@dataclass
class RewardOptions:
    """Reward functions and models (TRL's names): the online scripts' and ``posttrain eval``'s."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: built-in names (accuracy, format, think_format, length, soft_overlong) "
                  "or module:function / file.py:function paths."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model (hub id or local folder)."})
    soft_punish_cache: int | None = field(
        default=None, metadata={"help": "soft_overlong reward: length of the soft punishment interval (default: max/4)."})


@dataclass
class RewardScriptArguments(ScriptArguments, RewardOptions):
    """Data and reward-function options shared by the online scripts (TRL's names)."""


@dataclass
class OnlineScriptArguments(RewardScriptArguments):
    """Options of the GRPO / RLOO / PPO scripts: the shared reward options plus the older reward-model name."""

    reward_model_path: str | None = field(
        default=None, metadata={"help": "Older TRL name of --reward_model_name_or_path (RLOO/PPO scripts)."})


@dataclass
class GRPOScriptArguments(OnlineScriptArguments):
    """Options of the GRPO and RLOO scripts: the online scripts' and tools and environments."""

    tools: list[str] | None = field(default=None, metadata={
        "help": "GRPO/RLOO: tool functions the policy may call, as module:function / file.py:function paths "
                "(docs/agents.md)."})
    environment_factory: str | None = field(default=None, metadata={
        "help": "GRPO/RLOO: a module:Name / file.py:Name path to a callable returning a new environment (e.g. its "
                "class); one instance per rollout (docs/agents.md)."})


def reward_functions(script_args: RewardOptions, max_completion_length: int, required: bool = True) -> list:
    """The reward models (paths first) and functions named by the script arguments; with ``required``, at least
    one must be given."""
    models = (script_args.reward_model_name_or_path, getattr(script_args, "reward_model_path", None))
    funcs: list = list(dict.fromkeys(filter(None, models)))
    for name in script_args.reward_funcs or []:
        funcs.append(get_reward_func(name, max_completion_length=max_completion_length,
                                     soft_punish_cache=script_args.soft_punish_cache))
    if not funcs and required:
        raise SystemExit("error: give --reward_funcs (e.g. accuracy) and/or --reward_model_name_or_path.")
    return funcs


def run(trainer_class, config_class, argv: list[str] | None, prog: str) -> int:
    """Parse, build the reward functions, train and save: the body of the GRPO and RLOO scripts."""
    script_args, training_args, model_args = parse(config_class, argv, prog, GRPOScriptArguments)
    agent = {}
    if script_args.tools:
        agent["tools"] = [load_callable(name, "tool") for name in script_args.tools]
    if script_args.environment_factory:
        agent["environment_factory"] = load_callable(script_args.environment_factory, "environment_factory")
    funcs = reward_functions(script_args, training_args.max_completion_length,
                             required="environment_factory" not in agent)
    train(trainer_class, script_args, training_args, model_args, reward_funcs=funcs or None, **agent)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(GRPOTrainer, GRPOConfig, argv, "posttrain grpo")


if __name__ == "__main__":
    raise SystemExit(main())
