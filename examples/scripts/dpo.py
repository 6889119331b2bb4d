"""Direct Preference Optimization with DPOTrainer — the same script as `posttrain dpo`.

Full fine-tuning (default dataset: trl-lib/ultrafeedback_binarized, implicit-prompt conversational pairs):
    accelerate launch examples/scripts/dpo.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
        --output_dir Qwen2-0.5B-DPO --learning_rate 5e-7 --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 8 --num_train_epochs 1 --logging_steps 25

LoRA (the reference is the model with its adapter disabled, so no second copy is held):
    accelerate launch examples/scripts/dpo.py ... --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 5e-6

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/dpo.py --model_name_or_path /tmp/tiny --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/dpo --max_steps 100 --learning_rate 3e-3 --beta 0.5 --per_device_train_batch_size 16 \
        --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.dpo import main

DEFAULT_DATASET = "trl-lib/ultrafeedback_binarized"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
