"""Contrastive Preference Optimization (and SimPO / AlphaPO) with CPOTrainer — the same script as `posttrain cpo`.

CPO (default dataset: trl-lib/ultrafeedback_binarized):
    accelerate launch examples/scripts/cpo.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
        --output_dir Qwen2-0.5B-CPO --learning_rate 8e-6 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 4 --num_train_epochs 1 --max_length 1024

SimPO: add `--loss_type simpo --cpo_alpha 0 --beta 2.0 --simpo_gamma 0.5`; AlphaPO: `--loss_type alphapo --alpha 0.25`.

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/cpo.py --model_name_or_path /tmp/tiny --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/cpo --max_steps 100 --learning_rate 3e-3 --per_device_train_batch_size 16 \
        --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.cpo import main

DEFAULT_DATASET = "trl-lib/ultrafeedback_binarized"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
