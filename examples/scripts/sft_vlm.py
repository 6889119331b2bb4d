"""Supervised fine-tuning of a vision-language model with SFTTrainer — the same script as `posttrain sft`.

A model whose config has a vision tower is loaded with AutoModelForImageTextToText and its AutoProcessor; a dataset
with an `images` (or `image`) column keeps its raw rows, and each batch's images are processed as it is built
(docs/sft.md, "Vision-language models"). Batches are padded: no `--packing`, no `--padding_free`.

One device (default dataset: HuggingFaceH4/llava-instruct-mix-vsft, conversations with images):
    python examples/scripts/sft_vlm.py --model_name_or_path llava-hf/llava-1.5-7b-hf --dtype bfloat16 \
        --output_dir llava-1.5-7b-SFT --learning_rate 2e-5 --per_device_train_batch_size 8 \
        --gradient_accumulation_steps 8 --num_train_epochs 1

Offline, on the tiny kit (a 0.17M-parameter Llava that learns to name the colour of 32x32 images):
    posttrain kit build-model --arch llava --output_dir /tmp/tiny-llava
    posttrain kit make-data --task colors --format prompt_completion --conversational --n 300 \
        --output /tmp/colors.parquet
    python examples/scripts/sft_vlm.py --model_name_or_path /tmp/tiny-llava --dataset_name /tmp/colors.parquet \
        --output_dir /tmp/llava-colors --max_steps 120 --learning_rate 3e-3 --per_device_train_batch_size 16

LoRA: add `--use_peft --lora_r 16 --lora_alpha 32 --lora_target_modules q_proj v_proj`.
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.sft import main

DEFAULT_DATASET = "HuggingFaceH4/llava-instruct-mix-vsft"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
