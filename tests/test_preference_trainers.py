"""CPO/SimPO, ORPO, KTO and BCO trainers: metrics, options, bad input, reference strategies and learning."""

import os
import time

import pytest
import torch
from datasets import Dataset

from conftest import train_args
from posttrain.data import DatasetFormatError, detect_format
from posttrain.kit import make_dataset
from posttrain.trainers.cpo import CPOConfig, CPOTrainer
from posttrain.trainers.orpo import ORPOConfig, ORPOTrainer
from posttrain.trainers.preference_base import (
    DataCollatorForPreference,
    completion_logps,
    tokenize_preference_row,
)

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for the 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


# ---------------------------------------------------------------------------------------------
# CPO / SimPO / AlphaPO
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo", "alphapo"])
def test_cpo_loss_types_train_and_log(tiny_model_dir, tmp_path, loss_type):
    extra = {"alpha": 0.5} if loss_type == "alphapo" else {}
    trainer = make(CPOTrainer, CPOConfig, tiny_model_dir, tmp_path, pref_data(16), loss_type=loss_type, **extra)
    assert not hasattr(trainer, "ref_model") or trainer.ref_model is None
    trainer.train()
    logs = trainer.state.log_history[-2]
    for name in PAIR_METRICS + ("nll_loss",):
        assert name in logs and logs[name] == logs[name]


def test_cpo_loss_is_preference_term_plus_weighted_nll(tiny_model_dir, tmp_path):
    from posttrain.losses.preference import cpo_loss

    trainer = make(CPOTrainer, CPOConfig, tiny_model_dir, tmp_path, pref_data(8), loss_type="simpo", cpo_alpha=0.5,
                   beta=2.0, simpo_gamma=0.3)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch)
        lp = completion_logps(trainer.model, trainer.model_rows(batch))
    pref = cpo_loss(lp.mean[:8], lp.mean[8:], beta=2.0, loss_type="simpo", simpo_gamma=0.3).losses.mean()
    nll = -lp.sum[:8].sum() / lp.count[:8].sum()
    torch.testing.assert_close(loss, pref + 0.5 * nll, rtol=1e-5, atol=1e-5)


def test_cpo_config_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown loss_type"):
        CPOConfig(output_dir=str(tmp_path), loss_type="kto")
    with pytest.raises(ValueError, match="alphapo"):
        CPOConfig(output_dir=str(tmp_path), loss_type="alphapo")


def test_reference_free_trainers_reject_a_ref_model(tiny_model_dir, tmp_path):
    with pytest.raises(TypeError):
        CPOTrainer(tiny_model_dir, ref_model=tiny_model_dir, args=train_args(CPOConfig, tmp_path))


def test_cpo_learns_preferences(tiny_model_dir, tmp_path, sort_split):
    """CPO (sigmoid + NLL): held-out preference accuracy (sum logp) rises by >= 0.3."""
    train, test = sort_split
    trainer = make(CPOTrainer, CPOConfig, tiny_model_dir, tmp_path, train, **LEARN)
    before, after, secs = learn(trainer, test)
    print(f"CPO held-out accuracy {before:.3f} -> {after:.3f} in {secs:.1f}s")
    assert after - before >= 0.3


def test_simpo_learns_preferences_without_nll(tiny_model_dir, tmp_path, sort_split):
    """Pure SimPO (cpo_alpha=0): held-out length-normalised preference accuracy rises by >= 0.2."""
    train, test = sort_split
    trainer = make(CPOTrainer, CPOConfig, tiny_model_dir, tmp_path, train, loss_type="simpo", cpo_alpha=0.0,
                   beta=2.0, **LEARN)
    before, after, secs = learn(trainer, test, average=True)
    print(f"SimPO held-out accuracy (mean logp) {before:.3f} -> {after:.3f} in {secs:.1f}s")
    assert after - before >= 0.2


# ---------------------------------------------------------------------------------------------
# ORPO
# ---------------------------------------------------------------------------------------------


def test_orpo_logs_odds_ratio_metrics(tiny_model_dir, tmp_path):
    trainer = make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, pref_data(16), padding_free=True)
    trainer.train()
    logs = trainer.state.log_history[-2]
    for name in PAIR_METRICS + ("nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert name in logs and logs[name] == logs[name]
    assert logs["log_odds_ratio"] < 0  # log sigmoid


def test_orpo_loss_is_nll_plus_odds_ratio_term(tiny_model_dir, tmp_path):
    from posttrain.losses.preference import orpo_loss

    trainer = make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, pref_data(8), beta=0.25)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch)
        lp = completion_logps(trainer.model, trainer.model_rows(batch))
    expected = -lp.sum[:8].sum() / lp.count[:8].sum() + orpo_loss(lp.mean[:8], lp.mean[8:], beta=0.25).losses.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_orpo_learns_preferences(tiny_model_dir, tmp_path, sort_split):
    """ORPO: held-out length-normalised preference accuracy rises by >= 0.3."""
    train, test = sort_split
    trainer = make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, train, beta=1.0, **LEARN)
    before, after, secs = learn(trainer, test, average=True)
    print(f"ORPO held-out accuracy (mean logp) {before:.3f} -> {after:.3f} in {secs:.1f}s")
    assert after - before >= 0.3


def test_paired_trainers_reject_unpaired_data(tiny_model_dir, tmp_path):
    data = make_dataset("sort", "unpaired_preference", n=4, seed=0)
    for trainer_cls, config_cls in ((CPOTrainer, CPOConfig), (ORPOTrainer, ORPOConfig)):
        with pytest.raises(DatasetFormatError, match="unpaired"):
            make(trainer_cls, config_cls, tiny_model_dir, tmp_path, data)
    rows = pref_data(3).to_list()
    del rows[1]["chosen"]
    rows = [{k: v for k, v in r.items() if k != "chosen"} for r in rows]
    with pytest.raises(DatasetFormatError, match="no 'chosen' column"):
        make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, Dataset.from_list(rows))
