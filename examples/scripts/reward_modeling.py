"""Outcome reward modeling with RewardTrainer — the same script as `posttrain reward`.

Full fine-tuning (default dataset: trl-lib/ultrafeedback_binarized, implicit-prompt conversational pairs):
    accelerate launch examples/scripts/reward_modeling.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
        --output_dir Qwen2.5-0.5B-Reward --per_device_train_batch_size 8 --num_train_epochs 1 \
        --learning_rate 1e-5 --max_length 2048 --eval_strategy steps --eval_steps 50

LoRA (the score head is trained and saved in full):
    accelerate launch examples/scripts/reward_modeling.py ... --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1e-4

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --head seq-cls --size tiny --output_dir /tmp/tiny-rm
    posttrain kit make-data --task sort --format preference --n 1000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/reward_modeling.py --model_name_or_path /tmp/tiny-rm --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/rm --learning_rate 1e-3 --num_train_epochs 6 --per_device_train_batch_size 32 \
        --lr_scheduler_type constant

The saved folder loads with `AutoModelForSequenceClassification.from_pretrained` (one score per sequence).
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.reward import main

DEFAULT_DATASET = "trl-lib/ultrafeedback_binarized"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
