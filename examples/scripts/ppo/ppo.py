"""PPO: make continuations more positive (or more descriptive) — the same script as `posttrain ppo`.

The seed's set-up (a reward model scores sentiment/descriptiveness; its checkpoint also initialises the critic):
    accelerate launch examples/scripts/ppo/ppo.py \
        --dataset_name trl-internal-testing/descriptiveness-sentiment-trl-style --dataset_train_split descriptiveness \
        --model_name_or_path EleutherAI/pythia-1b-deduped --sft_model_path EleutherAI/pythia-1b-deduped \
        --reward_model_path EleutherAI/pythia-1b-deduped --output_dir pythia-1b-ppo --learning_rate 3e-6 \
        --per_device_train_batch_size 64 --total_episodes 10000 --missing_eos_penalty 1.0

Offline, on the tiny kit (the reward model is trained with `posttrain reward` on synthetic preference pairs):
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/policy
    posttrain kit build-model --arch qwen2 --size tiny --head seq-cls --output_dir /tmp/rm_init
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    posttrain kit make-data --task sort --format prompt_only --n 512 --seed 1 --output /tmp/sort_prompts.jsonl
    posttrain reward --model_name_or_path /tmp/rm_init --dataset_name /tmp/sort_pairs.jsonl --output_dir /tmp/rm \
        --max_steps 200 --learning_rate 1e-3 --per_device_train_batch_size 32
    python examples/scripts/ppo/ppo.py --model_name_or_path /tmp/policy --dataset_name /tmp/sort_prompts.jsonl \
        --reward_model_path /tmp/rm --output_dir /tmp/ppo --per_device_train_batch_size 32 \
        --max_completion_length 16 --learning_rate 3e-4 --total_episodes 3200 --temperature 1.0
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.ppo import main

DEFAULT_DATASET = "trl-internal-testing/descriptiveness-sentiment-trl-style"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
