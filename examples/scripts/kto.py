"""Kahneman-Tversky Optimization with KTOTrainer — the same script as `posttrain kto`.

Unpaired data (default dataset: trl-lib/kto-mix-14k, prompt/completion/label):
    accelerate launch examples/scripts/kto.py \
        --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/kto-mix-14k \
        --output_dir Qwen2-0.5B-KTO --learning_rate 5e-7 --per_device_train_batch_size 8 \
        --gradient_accumulation_steps 2 --num_train_epochs 1 --beta 0.1

Paired data is unpaired automatically (`--dataset_name trl-lib/ultrafeedback_binarized`). LoRA: add
`--use_peft --lora_r 16 --lora_alpha 32` (the reference is the model with its adapter disabled).

Offline, on the tiny kit (pairs or `--format unpaired_preference`):
    posttrain kit build-model --arch qwen2 --size tiny --output_dir /tmp/tiny
    posttrain kit make-data --task sort --format preference --n 2000 --seed 0 --output /tmp/sort_pairs.jsonl
    python examples/scripts/kto.py --model_name_or_path /tmp/tiny --dataset_name /tmp/sort_pairs.jsonl \
        --output_dir /tmp/kto --max_steps 300 --learning_rate 1e-3 --per_device_train_batch_size 16 \
        --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.kto import main

DEFAULT_DATASET = "trl-lib/kto-mix-14k"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
