"""PPO: write better TL;DR summaries — the same script as `posttrain ppo`, with the seed's TL;DR defaults.

    accelerate launch examples/scripts/ppo/ppo_tldr.py \
        --dataset_name trl-internal-testing/tldr-preference-sft-trl-style --dataset_test_split validation \
        --model_name_or_path EleutherAI/pythia-1b-deduped \
        --sft_model_path cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr \
        --reward_model_path cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr --output_dir pythia-1b-tldr-ppo \
        --learning_rate 3e-6 --per_device_train_batch_size 16 --gradient_accumulation_steps 4 \
        --total_episodes 30000 --missing_eos_penalty 1.0 --stop_token eos --response_length 53

The dataset needs a ``prompt`` column (the post, ending with "TL;DR:"). Offline: the recipe at the top of
examples/scripts/ppo/ppo.py with any local prompt file and a reward model trained with `posttrain reward` on
summary preference pairs.
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.ppo import main

DEFAULT_DATASET = "trl-internal-testing/tldr-preference-sft-trl-style"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
