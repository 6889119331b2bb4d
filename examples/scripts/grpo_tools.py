"""GRPO with tool calling — `posttrain grpo --tools ...` with the kit's `multiply` tool and exact-answer reward as
defaults (docs/agents.md).

The policy sees the tools' schemas in its prompt, writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
gets the result as a `tool` message and answers; the reward checks the final answer:
    accelerate launch examples/scripts/grpo_tools.py \
        --model_name_or_path Qwen/Qwen3-0.6B --dataset_name path/to/prompts.jsonl \
        --tools my_tools.py:multiply --reward_funcs my_rewards.py:exact_answer \
        --output_dir Qwen3-0.6B-GRPO-tools --max_tool_calling_iterations 2 --max_completion_length 512 \
        --per_device_train_batch_size 8 --num_generations 8 --learning_rate 1e-6

Offline, on the tiny kit (SFT a small model on tool-use demonstrations, then GRPO with the real tool):
    posttrain kit build-model --arch qwen2 --size small --output_dir /tmp/small
    posttrain kit make-agent-data --kind tool_sft --n 3000 --wrong_fraction 0.4 --output /tmp/tools_sft.jsonl
    posttrain kit make-agent-data --kind tool_prompts --n 1024 --seed 5 --output /tmp/tool_prompts.jsonl
    posttrain sft --model_name_or_path /tmp/small --dataset_name /tmp/tools_sft.jsonl --output_dir /tmp/tools_sft \
        --assistant_only_loss --padding_free --max_steps 700 --per_device_train_batch_size 32 --learning_rate 2e-3 \
        --lr_scheduler_type cosine --warmup_steps 20
    python examples/scripts/grpo_tools.py --model_name_or_path /tmp/tools_sft \
        --dataset_name /tmp/tool_prompts.jsonl --output_dir /tmp/tools_grpo --max_steps 40 \
        --per_device_train_batch_size 32 --num_generations 8 --max_completion_length 96 \
        --max_tool_calling_iterations 2 --learning_rate 3e-4 --lr_scheduler_type constant_with_warmup --warmup_steps 5
"""

import sys

from posttrain.scripts.grpo import main

DEFAULT_TOOLS = ["posttrain.kit.agents:multiply"]
DEFAULT_REWARDS = ["posttrain.kit.agents:tool_answer_reward"]


def with_defaults(argv: list[str]) -> list[str]:
    """``argv`` with the kit's tool and reward unless tools / rewards are given."""
    argv = list(argv)
    if not any(a == "--tools" or a.startswith("--tools=") or a == "--config" for a in argv):
        argv += ["--tools", *DEFAULT_TOOLS]
    if not any(a.startswith(("--reward_funcs", "--reward_model", "--config")) for a in argv):
        argv += ["--reward_funcs", *DEFAULT_REWARDS]
    return argv


if __name__ == "__main__":
    raise SystemExit(main(with_defaults(sys.argv[1:])))
