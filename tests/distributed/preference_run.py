"""Preference run used by the multi-process tests:
`torchrun --nproc_per_node N preference_run.py METHOD MODEL OUT BATCH [extra config as JSON]`.

Writes the log history (and, with precomputed reference log-probs, the reference columns) to OUT/log.json.
"""

import json
import sys

import torch

from posttrain import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from posttrain.kit import make_dataset

method, model_dir, out, per_device_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
torch.manual_seed(0)
train = make_dataset("sort", "preference", n=64, seed=0)
config_cls, trainer_cls = {"dpo": (DPOConfig, DPOTrainer), "kto": (KTOConfig, KTOTrainer)}[method]
args = config_cls(output_dir=out, max_steps=4, per_device_train_batch_size=per_device_batch, learning_rate=3e-3,
                  logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                  dataloader_num_workers=0, **extra)
trainer = trainer_cls(model_dir, args=args, train_dataset=train)
trainer.train()
if trainer.is_world_process_zero():
    result = {"log": trainer.state.log_history}
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        if col in trainer.train_dataset.column_names:
            result[col] = list(trainer.train_dataset[col])
    with open(f"{out}/log.json", "w") as f:
        json.dump(result, f)
