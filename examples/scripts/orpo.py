"""Odds Ratio Preference Optimization with ORPOTrainer — the same script as `posttrain orpo`.

ORPO from a base model, no SFT stage (default dataset: trl-lib/ultrafeedback_binarized):
    accelerate launch examples/scripts/orpo.py \
        --model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/ultrafeedback_binarized \
        --output_dir Qwen2-0.5B-ORPO --learning_rate 8e-6 --beta 0.1 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 4 --num_train_epochs 1 --max_length 1024

LoRA: add `--use_peft --lora_r 16 --lora_alpha 32`.

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/orpo.py --model_name_or_path /tmp/tiny --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/orpo --max_steps 100 --learning_rate 3e-3 --beta 1.0 --per_device_train_batch_size 16 \
        --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.orpo import main

DEFAULT_DATASET = "trl-lib/ultrafeedback_binarized"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
