"""Group Relative Policy Optimization with GRPOTrainer — the same script as `posttrain grpo`.

Math reasoning with a rule-based reward (default dataset: trl-lib/DeepMath-103K-style prompt data with an
``answer`` column read by the ``accuracy`` reward):
    accelerate launch examples/scripts/grpo.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
        --reward_funcs accuracy think_format --output_dir Qwen2-0.5B-GRPO --learning_rate 1e-6 \
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 512 --logging_steps 10

With a reward model instead of (or besides) rule-based rewards:
    ... --reward_model_name_or_path path/to/reward_model

Offline, on the tiny kit (SFT a small model on a task, then GRPO with the exact-answer reward):
    posttrain kit build-model --arch qwen2 --size small --output_dir /tmp/small
    posttrain kit make-data --task reverse --format prompt_completion --n 4000 --seed 0 --output /tmp/rev_sft.jsonl
    posttrain kit make-data --task reverse --format prompt_only --n 1024 --seed 5 --output /tmp/rev_prompts.jsonl
    posttrain sft --model_name_or_path /tmp/small --dataset_name /tmp/rev_sft.jsonl --output_dir /tmp/rev_sft \
        --max_steps 140 --per_device_train_batch_size 32 --learning_rate 2e-3 --lr_scheduler_type cosine \
        --warmup_steps 20 --padding_free
    python examples/scripts/grpo.py --model_name_or_path /tmp/rev_sft --dataset_name /tmp/rev_prompts.jsonl \
        --reward_funcs accuracy --output_dir /tmp/rev_grpo --max_steps 150 --per_device_train_batch_size 64 \
        --num_generations 8 --max_completion_length 12 --temperature 0.7 --learning_rate 3e-4 \
        --lr_scheduler_type constant_with_warmup --warmup_steps 10
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.grpo import main

DEFAULT_DATASET = "trl-lib/DeepMath-103K"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
