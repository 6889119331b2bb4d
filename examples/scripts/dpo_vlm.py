"""Direct Preference Optimization of a vision-language model with DPOTrainer — the same script as `posttrain dpo`.

A model whose config has a vision tower is loaded with AutoModelForImageTextToText and its AutoProcessor; a
preference dataset with an `images` (or `image`) column keeps its raw rows, and each batch's prompts are processed
with their images as it is built, once per row, the chosen and rejected rows sharing them (docs/dpo.md,
"Vision-language models"). Batches are padded: no `--padding_free`.

One device, as TRL's example (default dataset: HuggingFaceH4/rlaif-v_formatted, image preference pairs; an
Idefics2 or LLaVA model, LoRA on all linear layers):
    python examples/scripts/dpo_vlm.py --model_name_or_path HuggingFaceM4/idefics2-8b --dtype bfloat16 \
        --output_dir idefics2-8b-dpo --per_device_train_batch_size 2 --gradient_accumulation_steps 32 \
        --gradient_checkpointing --use_peft --lora_target_modules all-linear --num_train_epochs 1
    (or --model_name_or_path llava-hf/llava-1.5-7b-hf)

Rows whose prompt plus completion is longer than `max_length` (default 1024, image tokens included) cannot be cut
through an image; raise it (`--max_length 2048`) for models with many tokens per image.

Offline, on the tiny kit (a 0.17M-parameter Llava that learns to prefer the right colour name for 32x32 images):
    posttrain kit build-model --arch llava --output_dir /tmp/tiny-llava
    posttrain kit make-data --task colors --format preference --conversational --n 300 \
        --output /tmp/colors_pairs.parquet
    python examples/scripts/dpo_vlm.py --model_name_or_path /tmp/tiny-llava --dataset_name /tmp/colors_pairs.parquet \
        --output_dir /tmp/llava-colors-dpo --max_steps 80 --learning_rate 1e-3 --beta 0.1 \
        --per_device_train_batch_size 8 --lr_scheduler_type constant
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.dpo import main

DEFAULT_DATASET = "HuggingFaceH4/rlaif-v_formatted"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
