"""Shared by the preference trainers' tests (CPO/SimPO, ORPO, KTO, BCO): small datasets, a trainer factory, and
held-out pair accuracy (the metric their learning tests move)."""

import time

import pytest
import torch

from conftest import train_args
from posttrain.data import detect_format
from posttrain.data.preference import DataCollatorForPreference, tokenize_preference_row
from posttrain.kit import make_dataset
from posttrain.trainers.logprobs import completion_logps

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected")



def pref_data(n=32, seed=0, task="sort", **kw):
    return make_dataset(task, "preference", n=n, seed=seed, **kw)


def make(trainer_cls, config_cls, model, tmp_path, train=None, **overrides):
    args = train_args(config_cls, tmp_path, **{"max_steps": 2, **overrides})
    return trainer_cls(model, args=args, train_dataset=train if train is not None else pref_data())


def pair_accuracy(trainer, dataset, average=False):
    """Fraction of held-out pairs where the policy gives the chosen completion more (mean) log-probability."""
    fmt = detect_format(dataset.column_names, dataset[0])
    lengths = dict(max_prompt_length=None, max_completion_length=None, max_length=None, truncation_mode="keep_end")
    rows = [tokenize_preference_row(dataset[i], i, tokenizer=trainer.processing_class, fmt=fmt,
                                    eos_token_id=trainer.tokenizer_.eos_token_id, columns=("chosen", "rejected"),
                                    lengths=lengths) for i in range(len(dataset))]
    batch = DataCollatorForPreference(trainer.tokenizer_.pad_token_id)(rows)
    model = trainer.model
    was = model.training
    model.eval()
    with torch.no_grad():
        lp = completion_logps(model, trainer.model_rows(batch))
    model.train(was)
    n = len(rows)
    scores = lp.mean if average else lp.sum
    return (scores[:n] > scores[n:]).float().mean().item()


def learn(trainer, test, average=False):
    before = pair_accuracy(trainer, test, average)
    start = time.time()
    trainer.train()
    after = pair_accuracy(trainer, test, average)
    return before, after, time.time() - start


@pytest.fixture(scope="module")
def sort_split():
    train = pref_data(2000, seed=0)
    return train, pref_data(200, seed=1, exclude=train)


LEARN = dict(max_steps=100, learning_rate=3e-3, per_device_train_batch_size=16, logging_steps=20,
             lr_scheduler_type="constant")
