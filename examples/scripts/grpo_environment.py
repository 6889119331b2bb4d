"""GRPO against a multi-turn environment — `posttrain grpo --environment_factory ...` with the kit's guessing game
as the default (docs/agents.md).

Each rollout gets its own environment: `reset(**row)` starts an episode, each assistant turn is an action of
`step(action) -> (observation, reward, done)`, the observation follows as a user message until the episode ends, and
the episode's reward trains the policy (no reward function needed):
    accelerate launch examples/scripts/grpo_environment.py \
        --model_name_or_path Qwen/Qwen3-0.6B --dataset_name path/to/prompts.jsonl \
        --environment_factory my_env.py:MyEnvironment --output_dir Qwen3-0.6B-GRPO-env \
        --max_tool_calling_iterations 5 --max_completion_length 1024 --num_generations 8 --learning_rate 1e-6

Offline, on the tiny kit (SFT a small model on games played at random, then GRPO on the game's reward):
    posttrain kit build-model --arch qwen2 --size small --output_dir /tmp/small
    posttrain kit make-agent-data --kind guess_sft --n 3000 --output /tmp/guess_sft.jsonl
    posttrain kit make-agent-data --kind guess_prompts --n 1024 --seed 5 --output /tmp/guess_prompts.jsonl
    posttrain sft --model_name_or_path /tmp/small --dataset_name /tmp/guess_sft.jsonl --output_dir /tmp/guess_sft \
        --assistant_only_loss --padding_free --max_steps 300 --per_device_train_batch_size 32 --learning_rate 2e-3
    python examples/scripts/grpo_environment.py --model_name_or_path /tmp/guess_sft \
        --dataset_name /tmp/guess_prompts.jsonl --output_dir /tmp/guess_grpo --max_steps 40 \
        --per_device_train_batch_size 32 --num_generations 8 --max_completion_length 48 \
        --max_tool_calling_iterations 3 --learning_rate 3e-4
"""

import sys

from posttrain.scripts.grpo import main

DEFAULT_ENVIRONMENT = "posttrain.kit.agents:GuessNumberEnv"


def with_defaults(argv: list[str]) -> list[str]:
    """``argv`` with the kit's guessing game unless an environment is given."""
    argv = list(argv)
    if not any(a.startswith("--environment_factory") or a == "--config" for a in argv):
        argv += ["--environment_factory", DEFAULT_ENVIRONMENT]
    return argv


if __name__ == "__main__":
    raise SystemExit(main(with_defaults(sys.argv[1:])))
