"""AlignProp: fine-tune a Stable Diffusion pipeline by backpropagating a differentiable image reward through the
sampler (AlignPropTrainer).

The seed's set-up (a Hub pipeline; any differentiable reward of the images):
    accelerate launch examples/scripts/alignprop.py --pretrained_model runwayml/stable-diffusion-v1-5 \
        --num_epochs 20 --train_gradient_accumulation_steps 4 --sample_num_steps 50 --train_batch_size 8 \
        --tracker_project_name stable_diffusion_training --output_dir alignprop-out

Offline, on the kit's tiny pipeline (built from configs; under a minute on a CPU):
    python examples/scripts/alignprop.py --pretrained_model kit:tiny --num_epochs 4 --sample_num_steps 10 \
        --train_batch_size 4 --truncated_rand_backprop_minmax 0 10 --output_dir /tmp/alignprop-out

The reward is the built-in colour reward (``--target_color``), differentiable as AlignProp needs.
"""

from posttrain.scripts.diffusion import main_alignprop

if __name__ == "__main__":
    raise SystemExit(main_alignprop())
