"""TRL's ``trl.trainer.sft_trainer``: posttrain's SFTTrainer (:mod:`posttrain.trainers.sft`), its collators, and
``dft_loss`` in the ``compute_loss_func`` form TRL gives it."""

from ..data import IGNORE_INDEX, DataCollatorForLanguageModeling, DataCollatorForVisionLanguageModeling
from ..losses.sft import sft_loss_from_logps
from ..losses.tokens import selective_log_softmax
from ..trainers.sft import SFTConfig, SFTTrainer


def dft_loss(outputs, labels, num_items_in_batch=None):
    """DFT's loss (Wu et al. 2025, Eq. 8; :func:`posttrain.losses.sft.sft_loss_from_logps`) as a Trainer
    ``compute_loss_func``: the model ``outputs``' logits against ``labels`` shifted by one, summed over the label
    tokens and divided by ``num_items_in_batch`` (default: their number). ``SFTConfig(loss_type="dft")`` trains with
    it without full-vocabulary logits."""
    import torch

    targets = torch.cat([labels[..., 1:], labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)], dim=-1)
    mask = targets != IGNORE_INDEX
    per_token = sft_loss_from_logps(selective_log_softmax(outputs.logits[mask], targets[mask]), "dft")
    return per_token.sum() / (num_items_in_batch if num_items_in_batch is not None else mask.sum())


__all__ = ["SFTConfig", "SFTTrainer", "DataCollatorForLanguageModeling", "DataCollatorForVisionLanguageModeling",
           "dft_loss"]
