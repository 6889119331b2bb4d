"""BCO trainer: config, running reward mean across checkpoints, UDM weights and learning."""

import dataclasses

import pytest
import torch

from conftest import train_args
from posttrain.kit import make_dataset
from posttrain.trainers.bco import BCOConfig, BCOTrainer, PromptClassifier, model_embedding_func
from preference_helpers import LEARN, learn, pref_data, sort_split  # noqa: F401


def bco(model, tmp_path, train=None, embedding_func=None, **overrides):
    args = train_args(BCOConfig, tmp_path, **{"max_steps": 2, **overrides})
    return BCOTrainer(model, args=args, train_dataset=train if train is not None else pref_data(),
                      embedding_func=embedding_func)


def test_bco_config(tmp_path):
    assert BCOConfig(output_dir=str(tmp_path)).loss_type == "bco"
    with pytest.raises(ValueError, match="must be 'bco'"):
        BCOConfig(output_dir=str(tmp_path), loss_type="kto")
    with pytest.raises(ValueError, match="min_density_ratio"):
        BCOConfig(output_dir=str(tmp_path), min_density_ratio=3.0, max_density_ratio=2.0)


def test_bco_running_mean_is_saved_and_restored(tiny_model_dir, tmp_path):
    common = dict(save_strategy="steps", save_steps=2)
    first = bco(tiny_model_dir, tmp_path, pref_data(16), **common)
    first.train()
    assert first.running.count == 2
    state_file = tmp_path / "out" / "checkpoint-2" / "preference_state.json"
    assert state_file.is_file()
    resumed = bco(tiny_model_dir, tmp_path, pref_data(16), max_steps=3, **common)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.running.count == 3  # two restored steps + one new
    logs = [h for h in resumed.state.log_history if "delta" in h]
    assert logs and logs[-1]["delta"] == pytest.approx(resumed.running.mean)


def test_prompt_classifier_separates_two_clusters():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 8, generator=gen) + 2.0, torch.randn(100, 8, generator=gen) - 2.0])
    y = torch.cat([torch.ones(100), torch.zeros(100)])
    clf = PromptClassifier().fit(x, y)
    p = clf.predict_proba(x)
    assert ((p > 0.5).float() == y).float().mean() > 0.95
    assert p.shape == (200,) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_bco_udm_weights(tiny_model_dir, tmp_path):
    from posttrain.models import load_pretrained

    embed = model_embedding_func(load_pretrained(tiny_model_dir))
    # desirable prompts are sort tasks, undesirable ones copy tasks: a prompt classifier can tell them apart
    good = make_dataset("sort", "unpaired_preference", n=40, seed=0).map(lambda r: {"label": True})
    bad = make_dataset("copy", "unpaired_preference", n=40, seed=0).map(lambda r: {"label": False})
    from datasets import concatenate_datasets

    data = concatenate_datasets([good, bad]).shuffle(seed=0)
    trainer = bco(tiny_model_dir, tmp_path, data, embedding_func=embed, prompt_sample_size=30,
                  min_density_ratio=0.2, max_density_ratio=5.0)
    assert trainer.udm_classifier is not None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(16)])
    weights = trainer._udm_weights(batch, batch["label"])
    labels = batch["label"]
    assert "sequence_index" in batch  # the default on sdpa: bin-packed padding-free rows; padded rows agree
    padded = dataclasses.replace(trainer.data_collator, padding_free=False)([trainer.train_dataset[i] for i in range(16)])
    torch.testing.assert_close(trainer._udm_weights(padded, padded["label"]), weights)
    assert torch.all(weights[labels] == 1.0)
    assert torch.all((weights[~labels] >= 0.2) & (weights[~labels] <= 5.0))
    assert weights[~labels].mean() < 0.5  # copy prompts look undesirable: small density ratio
    trainer.train()
    assert "udm_weight" in trainer.state.log_history[0]


def test_bco_learns_preferences(tiny_model_dir, tmp_path, sort_split):
    """BCO on automatically unpaired sort pairs: held-out pair accuracy (sum logp) rises by >= 0.2.
    Margins over training seeds 0/1/2 (`make test-seeds`): +0.25 / +0.35 / +0.35."""
    train, test = sort_split
    trainer = bco(tiny_model_dir, tmp_path, train, beta=0.5, **{**LEARN, "max_steps": 300, "learning_rate": 1e-3})
    before, after, secs = learn(trainer, test)
    print(f"BCO held-out accuracy {before:.3f} -> {after:.3f} in {secs:.1f}s")
    assert after - before >= 0.2
