"""Process reward modeling with PRMTrainer — the same script as `posttrain prm`.

Full fine-tuning (default dataset: trl-lib/math_shepherd, stepwise rows with one label per step):
    accelerate launch examples/scripts/prm.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/math_shepherd \
        --output_dir Qwen2.5-0.5B-PRM --per_device_train_batch_size 8 --num_train_epochs 1 \
        --learning_rate 1e-5 --max_length 1024 --eval_strategy steps --eval_steps 100

LoRA: add `--use_peft --lora_r 32 --lora_alpha 16 --learning_rate 1e-4` (task type TOKEN_CLS).

Offline, on the tiny kit:
    posttrain kit build-model --arch qwen2 --head token-cls --size tiny --output_dir /tmp/tiny-prm
    posttrain kit make-data --task sort --format stepwise --n 4000 --seed 0 --output /tmp/sort_steps.jsonl
    python examples/scripts/prm.py --model_name_or_path /tmp/tiny-prm --dataset_name /tmp/sort_steps.jsonl \
        --output_dir /tmp/prm --learning_rate 2e-3 --num_train_epochs 3 --per_device_train_batch_size 32 \
        --lr_scheduler_type constant

The saved folder loads with `AutoModelForTokenClassification.from_pretrained`; the step scores are the class-1
probabilities at each step's separator token.
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.prm import main

DEFAULT_DATASET = "trl-lib/math_shepherd"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
