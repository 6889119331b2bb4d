"""Supervised fine-tuning on videos with SFTTrainer: the same script as `posttrain sft`.

A video dataset is an SFT dataset (prompt-completion or language modeling, usually conversational) with a `videos`
column (a list of videos per row, each video a list of frames: images or HxWx3 uint8 arrays) or a `video` column (one
video per row); a `{"type": "video"}` content part marks where each video goes (docs/sft.md, "Video"). A model
whose processor has a video processor and whose forward takes `pixel_values_videos` (Qwen2-VL, Qwen2.5-VL,
LLaVA-NeXT-Video, ...) gets the videos through that video processor; any other vision-language model reads each video
as its frames, one image per frame, in order. Batches are padded: no `--packing`, no `--padding_free`.

TRL's set-up for this script (Qwen2-VL-7B-Instruct on mfarre/simplevideoshorts, DeepSpeed ZeRO-2). That dataset
holds video files and captions; decode each video into frames first (e.g. 8-16 evenly spaced frames with PyAV or
decord) and store them in a `videos` column with conversational `prompt`/`completion` columns, then:
    accelerate launch --config_file deepspeed_zero2.yaml examples/scripts/sft_video_llm.py \
        --model_name_or_path Qwen/Qwen2-VL-7B-Instruct --dataset_name ./simplevideoshorts-frames \
        --output_dir video-llm-output --dtype bfloat16 --per_device_train_batch_size 1 \
        --gradient_accumulation_steps 4 --num_train_epochs 4 --learning_rate 8e-5 --max_grad_norm 0.3 \
        --warmup_ratio 0.1 --lr_scheduler_type cosine --gradient_checkpointing --max_length 16384 \
        --use_peft --lora_r 16 --lora_alpha 16 --lora_target_modules q_proj k_proj v_proj o_proj

(Native video processors need torchvision installed.)

Offline, on the tiny kit (a 0.17M-parameter Llava that learns which way a square moves in 4-frame clips; it has no
video processor, so each clip is read as 4 images):
    posttrain kit build-model --arch llava --output_dir /tmp/tiny-llava
    posttrain kit make-data --task motion --format prompt_completion --conversational --n 400 \
        --output /tmp/motion.parquet
    python examples/scripts/sft_video_llm.py --model_name_or_path /tmp/tiny-llava \
        --dataset_name /tmp/motion.parquet --output_dir /tmp/llava-motion --max_steps 150 --learning_rate 3e-3 \
        --per_device_train_batch_size 16 --lr_scheduler_type cosine --warmup_steps 10
"""

import sys

from posttrain.scripts.sft import main

if __name__ == "__main__":
    if not any(a == "--config" or a.startswith(("--dataset_name", "--config=")) for a in sys.argv[1:]):
        sys.exit("Pass --dataset_name: a dataset with a 'videos' column of decoded frames (see this script's "
                 "docstring; `posttrain kit make-data --task motion` writes one offline).")
    raise SystemExit(main(sys.argv[1:]))
