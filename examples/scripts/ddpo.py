"""DDPO: fine-tune a Stable Diffusion pipeline with reinforcement learning against an image reward (DDPOTrainer).

The seed's set-up (a Hub pipeline; any reward function of the images):
    accelerate launch examples/scripts/ddpo.py --pretrained_model runwayml/stable-diffusion-v1-5 \
        --num_epochs 200 --train_gradient_accumulation_steps 1 --sample_num_steps 50 --sample_batch_size 6 \
        --train_batch_size 3 --sample_num_batches_per_epoch 4 --per_prompt_stat_tracking True \
        --per_prompt_stat_tracking_buffer_size 32 --output_dir ddpo-out

Offline, on the kit's tiny pipeline (built from configs; ~1 minute on a CPU):
    python examples/scripts/ddpo.py --pretrained_model kit:tiny --num_epochs 4 --sample_num_steps 10 \
        --sample_batch_size 4 --sample_num_batches_per_epoch 2 --train_batch_size 4 --use_lora False \
        --train_learning_rate 1e-3 --output_dir /tmp/ddpo-out

The reward is the built-in colour reward (``--target_color``: how close the image's pixels are to a colour; replace
``reward_function`` below with an aesthetic or preference model for real use). Prompts cycle through ``--prompts``.
"""

from posttrain.scripts.diffusion import main_ddpo

if __name__ == "__main__":
    raise SystemExit(main_ddpo())
