"""KTO trainer: unpairing, KL rows, loss, padding-free rows, loss types, reference strategies and learning."""

import dataclasses

import pytest
import torch
from datasets import Dataset

from conftest import train_args
from posttrain.data import DatasetFormatError
from posttrain.kit import make_dataset
from posttrain.trainers.kto import KTOConfig, KTOTrainer
from posttrain.trainers.logprobs import completion_logps
from preference_helpers import LEARN, learn, make, pref_data, sort_split  # noqa: F401


UNPAIRED_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                    "logits/chosen", "logits/rejected")


def kto(model, tmp_path, train=None, **overrides):
    return make(KTOTrainer, KTOConfig, model, tmp_path, train, **overrides)


def test_kto_unpairs_paired_data(tiny_model_dir, tmp_path, tokenizer):
    for data in (pref_data(6), make_dataset("addition", "preference_implicit", n=6, seed=0)):
        ds = kto(tiny_model_dir, tmp_path, data).train_dataset
        assert len(ds) == 12 and sum(ds["label"]) == 6
        assert set(ds.column_names) == {"prompt_ids", "completion_ids", "label"}
    unpaired = make_dataset("sort", "unpaired_preference", n=6, seed=0)
    ds = kto(tiny_model_dir, tmp_path, unpaired).train_dataset
    assert list(ds["label"]) == list(unpaired["label"])
    assert tokenizer.decode(ds[0]["completion_ids"]).startswith(unpaired[0]["completion"])


def test_kto_non_bool_labels_are_an_error(tiny_model_dir, tmp_path):
    rows = make_dataset("sort", "unpaired_preference", n=4, seed=0).to_list()
    for r in rows:
        r["label"] = int(r["label"])
    with pytest.raises(DatasetFormatError, match=r"Row 0 \(0-based\), column 'label': expected a bool"):
        kto(tiny_model_dir, tmp_path, Dataset.from_list(rows))
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    with pytest.raises(DatasetFormatError, match="no 'label' column"):
        kto(tiny_model_dir, tmp_path, Dataset.from_list(rows))


def test_kto_bad_pair_names_the_row(tiny_model_dir, tmp_path):
    rows = pref_data(4).to_list()
    rows[3]["rejected"] = ""
    with pytest.raises(DatasetFormatError, match=r"Row 3 \(0-based\), column 'rejected'"):
        kto(tiny_model_dir, tmp_path, Dataset.from_list(rows))


def test_kto_kl_rows_are_shifted_completions(tiny_model_dir, tmp_path):
    trainer = kto(tiny_model_dir, tmp_path, pref_data(4))
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = dataclasses.replace(trainer.data_collator, padding_free=False)(examples)  # padded: one row per sequence
    assert batch["label"].dtype == torch.bool
    for i in range(4):
        j = (i + 1) % 4
        expected = examples[i]["prompt_ids"] + examples[j]["completion_ids"]
        n = int(batch["kl_attention_mask"][i].sum())
        assert batch["kl_input_ids"][i, :n].tolist() == expected
        assert batch["kl_completion_mask"][i, :n].sum() == len(examples[j]["completion_ids"])
    # loss types without the KL term skip the mismatched rows
    apo = kto(tiny_model_dir, tmp_path, pref_data(4), loss_type="apo_zero_unpaired")
    assert "kl_input_ids" not in apo.data_collator(examples)
    assert "kl_input_ids" in trainer.data_collator(examples)  # padding-free (the default here) too


def test_kto_loss_matches_loss_function(tiny_model_dir, tmp_path):
    from posttrain.losses.kto import kto_kl_estimate, kto_loss
    from posttrain.data.preference import kl_rows

    trainer = kto(tiny_model_dir, tmp_path, pref_data(8), desirable_weight=1.2)
    with torch.no_grad():  # make policy and reference differ
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(0, 16, 2)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        rows = trainer.model_rows(batch)
        pol, ref = completion_logps(trainer.model, rows).sum, completion_logps(trainer.ref_model, rows).sum
        kl = kto_kl_estimate(completion_logps(trainer.model, kl_rows(batch)).sum,
                             completion_logps(trainer.ref_model, kl_rows(batch)).sum)
    expected = kto_loss(pol, ref, batch["label"], kl, desirable_weight=1.2).losses.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flatten", [True, False])
def test_kto_padding_free_rows_give_the_padded_loss(tiny_model_dir, tmp_path, flatten):
    """KTO's policy rows, KL rows and the reference's single forward over both (concat_rows): padded, one flattened
    row and bin-packed rows give the same loss."""
    trainer = kto(tiny_model_dir, tmp_path, pref_data(8))
    with torch.no_grad():  # make policy and reference differ
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    examples = [trainer.train_dataset[i] for i in range(0, 16, 2)]
    trainer.model.eval()
    losses = []
    for collator in (dataclasses.replace(trainer.data_collator, padding_free=False),
                     dataclasses.replace(trainer.data_collator, padding_free=True, flatten=flatten)):
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, collator(examples)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(loss_type="apo_zero_unpaired"), dict(loss_type="bco"),
                                     dict(padding_free=True)])
def test_kto_loss_types_train_and_log(tiny_model_dir, tmp_path, options):
    trainer = kto(tiny_model_dir, tmp_path, pref_data(16), **options)
    trainer.train()
    logs = trainer.state.log_history[-2]
    for name in UNPAIRED_METRICS:
        assert name in logs and logs[name] == logs[name]
    assert logs["rewards/margins"] == pytest.approx(logs["rewards/chosen"] - logs["rewards/rejected"])
    loss_type = options.get("loss_type", "kto")
    assert ("kl" in logs) == (loss_type == "kto")
    assert ("delta" in logs) == (loss_type == "bco")


def test_kto_reference_peft_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = KTOTrainer(tiny_model_dir, args=train_args(KTOConfig, tmp_path, max_steps=2),
                         train_dataset=pref_data(16), peft_config=lora)
    assert trainer.ref_model is None
    trainer.train()
    assert trainer.state.log_history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity


def test_kto_precompute_reference_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    data = pref_data(8)
    common = dict(precompute_ref_log_probs=True, save_strategy="steps", save_steps=2)
    first = kto(tiny_model_dir, tmp_path, data, **common)
    assert first.ref_model is None and "kl_completion_input_ids" in first.train_dataset.column_names
    first.train()
    assert {"reference_logps", "reference_KL_logps"} <= set(first.train_dataset.column_names)
    calls = []
    monkeypatch.setattr(KTOTrainer, "reference_logps", lambda self, rows: calls.append(rows))
    resumed = kto(tiny_model_dir, tmp_path, data, max_steps=4, **common)
    resumed.train(resume_from_checkpoint=True)
    assert calls == [] and resumed.state.global_step == 4
    assert list(resumed.train_dataset["reference_KL_logps"]) == list(first.train_dataset["reference_KL_logps"])


def test_kto_learns_preferences(tiny_model_dir, tmp_path, sort_split):
    """KTO on automatically unpaired sort pairs: held-out pair accuracy (sum logp) rises by >= 0.15.
    Margins over training seeds 0/1/2 (`make test-seeds`): +0.305 / +0.200 / +0.265; the old threshold, 0.2, failed
    seed 1 by rounding."""
    train, test = sort_split
    trainer = kto(tiny_model_dir, tmp_path, train, **{**LEARN, "max_steps": 300, "learning_rate": 1e-3})
    before, after, secs = learn(trainer, test)
    print(f"KTO held-out accuracy {before:.3f} -> {after:.3f} in {secs:.1f}s")
    assert after - before >= 0.15
