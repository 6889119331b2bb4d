"""RLOO: make continuations more positive (or more descriptive) — the same script as `posttrain rloo`.

The seed's set-up scores continuations with a sentiment / descriptiveness reward model:
    accelerate launch examples/scripts/rloo/rloo.py \
        --model_name_or_path EleutherAI/pythia-1b-deduped \
        --dataset_name trl-internal-testing/descriptiveness-sentiment-trl-style --dataset_train_split descriptiveness \
        --reward_model_path EleutherAI/pythia-1b-deduped --output_dir pythia-1b-rloo \
        --num_generations 2 --learning_rate 3e-6 --per_device_train_batch_size 16 --max_completion_length 53

(the dataset must have a ``prompt`` column; the reward model is any sequence-classification model with one
output, e.g. one trained with `posttrain reward`).

Offline, on the tiny kit (a reward model trained with `posttrain reward` on synthetic preference pairs, then RLOO
against it):
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/policy
    posttrain kit build-model --arch qwen2 --size tiny --head seq-cls --output_dir /tmp/rm_init
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    posttrain kit make-data --task sort --format prompt_only --n 512 --seed 1 --output /tmp/sort_prompts.jsonl
    posttrain reward --model_name_or_path /tmp/rm_init --dataset_name /tmp/sort_pairs.jsonl --output_dir /tmp/rm \
        --max_steps 200 --learning_rate 1e-3 --per_device_train_batch_size 32
    python examples/scripts/rloo/rloo.py --model_name_or_path /tmp/policy --dataset_name /tmp/sort_prompts.jsonl \
        --reward_model_path /tmp/rm --output_dir /tmp/rloo --num_generations 4 --per_device_train_batch_size 32 \
        --max_completion_length 16 --learning_rate 3e-4 --max_steps 100
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.rloo import main

DEFAULT_DATASET = "trl-internal-testing/descriptiveness-sentiment-trl-style"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
