"""Supervised fine-tuning of Gemma 3 on images with SFTTrainer — the same script as `posttrain sft`.

Gemma 3 (4B and larger) is a vision-language model: a SigLIP vision tower whose patch features are average-pooled to
256 tokens per image, and the Gemma 3 language model. Its processor (Gemma3Processor) writes each image as a blank
line, `<start_of_image>`, the image's 256 tokens, `<end_of_image>` and a blank line; posttrain's collator takes those
tokens as the processor writes them and never trains on them, nor on padding; the loss masks (completion-only,
assistant-only) apply to the text around them, and `--max_length` cuts text only, never an image
(docs/sft.md, "Vision-language models"). The processor's `token_type_ids` (1 on image tokens: Gemma 3's image tokens
attend to each other both ways) go to the model with each batch. Batches are padded: no `--packing`, no
`--padding_free`. Gemma 3 checkpoints are stored in bf16: `--dtype bfloat16` loads them as such.

One device (default dataset: HuggingFaceH4/llava-instruct-mix-vsft, conversations with images):
    python examples/scripts/sft_vlm_gemma3.py --model_name_or_path google/gemma-3-4b-it --dtype bfloat16 \
        --output_dir gemma-3-4b-it-vision-sft --learning_rate 2e-5 --per_device_train_batch_size 1 \
        --gradient_accumulation_steps 16 --gradient_checkpointing --num_train_epochs 1

LoRA: add `--use_peft --lora_r 16 --lora_alpha 32 --lora_target_modules q_proj k_proj v_proj o_proj`.

Offline, on the tiny kit (a 0.17M-parameter Gemma 3, 4 image tokens per 32x32 image, that learns to name the colour
of an image):
    posttrain kit build-model --arch gemma3-vlm --output_dir /tmp/tiny-gemma3-vlm
    posttrain kit make-data --task colors --format prompt_completion --conversational --n 300 \
        --output /tmp/colors.parquet
    python examples/scripts/sft_vlm_gemma3.py --model_name_or_path /tmp/tiny-gemma3-vlm \
        --dataset_name /tmp/colors.parquet --output_dir /tmp/gemma3-vlm-colors --max_steps 80 --learning_rate 3e-3 \
        --per_device_train_batch_size 16 --lr_scheduler_type cosine --warmup_steps 10
"""

from posttrain.scripts.common import run_example
from posttrain.scripts.sft import main

DEFAULT_DATASET = "HuggingFaceH4/llava-instruct-mix-vsft"

if __name__ == "__main__":
    raise SystemExit(run_example(main, DEFAULT_DATASET))
