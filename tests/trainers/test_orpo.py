"""ORPO trainer: metrics, loss composition, bad input and learning."""


import pytest
import torch
from datasets import Dataset

from posttrain.data import DatasetFormatError
from posttrain.kit import make_dataset
from posttrain.trainers.cpo import CPOConfig, CPOTrainer
from posttrain.trainers.orpo import ORPOConfig, ORPOTrainer
from posttrain.trainers.logprobs import completion_logps
from preference_helpers import LEARN, PAIR_METRICS, learn, make, pref_data, sort_split  # noqa: F401


def test_orpo_logs_odds_ratio_metrics(tiny_model_dir, tmp_path):
    trainer = make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, pref_data(16), padding_free=True)
    trainer.train()
    logs = trainer.state.log_history[-2]
    for name in PAIR_METRICS + ("nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert name in logs and logs[name] == logs[name]
    assert logs["log_odds_ratio"] < 0  # log sigmoid


def test_orpo_loss_is_nll_plus_odds_ratio_term(tiny_model_dir, tmp_path):
    from posttrain.losses.cpo import orpo_loss

    trainer = make(ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, pref_data(8), beta=0.25)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        lp = completion_logps(trainer.model, trainer.model_rows(batch))
    expected = -lp.sum[:8].sum() / lp.count[:8].sum() + orpo_loss(lp.mean[:8], lp.mean[8:], beta=0.25).losses.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_orpo_learns_preferences(tiny_model_dir, tmp_path, sort_split):
    """ORPO: held-out length-normalised preference accuracy rises by >= 0.3.
    Margins over training seeds 0/1/2 (`make test-seeds`): +0.47 / +0.50 / +0.465."""
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
