"""SFT run used by the multi-process tests: `torchrun --nproc_per_node N sft_run.py MODEL OUT BATCH [extra config]`.

Writes the log history to OUT/log.json (main process).
"""

import json
import sys

import torch

from posttrain import SFTConfig, SFTTrainer
from posttrain.kit import make_dataset

model_dir, out, per_device_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
torch.manual_seed(0)
train = make_dataset("reverse", "prompt_completion", n=256, seed=0)
args = SFTConfig(output_dir=out, max_steps=6, per_device_train_batch_size=per_device_batch, learning_rate=3e-3,
                 logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                 dataloader_num_workers=0, **extra)
trainer = SFTTrainer(model_dir, args=args, train_dataset=train)
trainer.train()
if trainer.is_world_process_zero():
    with open(f"{out}/log.json", "w") as f:
        json.dump(trainer.state.log_history, f)
