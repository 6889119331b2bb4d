"""DPOTrainer and the shared preference core: data preparation, log-probs, reference strategies, learning."""

import gc
import os
import time

import math

import pytest
import torch
from datasets import Dataset

from conftest import train_args
from posttrain.data import DatasetFormatError
from posttrain.kit import make_dataset
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.data.preference import DataCollatorForPreference, fit_lengths
from posttrain.trainers.logprobs import completion_logps, sequence_sums
from posttrain.trainers.preference_base import REFERENCE_CACHE_PREFIX
from posttrain.trainers.reference import SyncRefModelCallback



def pref_data(n=32, seed=0, task="sort", **kw):
    return make_dataset(task, "preference", n=n, seed=seed, **kw)


def dpo(tiny_model_dir, tmp_path, train=None, ref_model=None, peft_config=None, **overrides):
    args = train_args(DPOConfig, tmp_path, **{"max_steps": 2, **overrides})
    return DPOTrainer(tiny_model_dir, ref_model=ref_model, args=args, train_dataset=train if train is not None else pref_data(),
                      peft_config=peft_config)


def pair_accuracy(trainer, dataset, average=False):
    """Fraction of held-out pairs where the policy gives the chosen completion more log-probability."""
    ds = trainer.prepare_dataset(dataset, trainer.processing_class, trainer.args, "test")
    batch = DataCollatorForPreference(trainer.tokenizer_.pad_token_id)([ds[i] for i in range(len(ds))])
    model = trainer.model
    was = model.training
    model.eval()
    with torch.no_grad():
        lp = completion_logps(model, {k: v.to(model.device) for k, v in trainer.model_rows(batch).items()})
    model.train(was)
    n = len(ds)
    scores = lp.mean if average else lp.sum
    return (scores[:n] > scores[n:]).float().mean().item()


# ---------------------------------------------------------------------------------------------
# data preparation
# ---------------------------------------------------------------------------------------------


def test_prepare_standard_implicit_and_conversational(tiny_model_dir, tmp_path, tokenizer):
    explicit = dpo(tiny_model_dir, tmp_path, pref_data(8)).train_dataset
    implicit = dpo(tiny_model_dir, tmp_path, make_dataset("addition", "preference_implicit", n=8, seed=0)).train_dataset
    assert explicit.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    # the implicit prompt is extracted: same questions, completions end with EOS
    row = explicit[0]
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row["prompt_ids"]).startswith("Sort:")
    assert tokenizer.decode(implicit[0]["prompt_ids"]).startswith("What is")
    conv = dpo(tiny_model_dir, tmp_path, make_dataset("sort", "preference", n=8, seed=0, conversational=True)).train_dataset
    text = tokenizer.decode(conv[0]["prompt_ids"])
    assert "<|im_start|>user" in text and text.rstrip().endswith("assistant")
    assert "<|im_end|>" in tokenizer.decode(conv[0]["chosen_ids"])


def test_missing_rejected_column_is_named(tiny_model_dir, tmp_path):
    data = pref_data(4).remove_columns("rejected")
    with pytest.raises(DatasetFormatError, match="'chosen' column but no 'rejected'"):
        dpo(tiny_model_dir, tmp_path, data)


def test_unpaired_data_to_dpo_is_an_error(tiny_model_dir, tmp_path):
    data = make_dataset("sort", "unpaired_preference", n=4, seed=0)
    with pytest.raises(DatasetFormatError, match="KTOTrainer"):
        dpo(tiny_model_dir, tmp_path, data)


def test_empty_or_missing_completion_names_row(tiny_model_dir, tmp_path):
    rows = pref_data(4).to_list()
    rows[2]["rejected"] = ""
    with pytest.raises(DatasetFormatError, match=r"Row 2 \(0-based\), column 'rejected'"):
        dpo(tiny_model_dir, tmp_path, Dataset.from_list(rows))
    rows[2]["rejected"] = None
    with pytest.raises(DatasetFormatError, match=r"Row 2 \(0-based\), column 'rejected'"):
        dpo(tiny_model_dir, tmp_path, Dataset.from_list(rows))


def test_prompt_longer_than_max_length(tiny_model_dir, tmp_path, tokenizer, caplog):
    rows = pref_data(3).to_list()
    rows[1]["prompt"] = "Sort: " + " ".join(["3"] * 80) + "\n"
    data = Dataset.from_list(rows)
    # keep_start leaves row 1 no completion token: dropped with a count (as TRL 1.9); a split left with none: an error
    with caplog.at_level("WARNING", logger="posttrain"):
        kept = dpo(tiny_model_dir, tmp_path, data, max_length=32, max_prompt_length=None,
                   truncation_mode="keep_start").train_dataset
    assert "dropped 1 of 3 rows with no completion token left (row 1 first)" in caplog.text
    assert kept["prompt_ids"] == [tokenizer(rows[i]["prompt"])["input_ids"] for i in (0, 2)]
    with pytest.raises(DatasetFormatError, match="No row of the train dataset has a completion token left: "
                                                 "max_length=32 with truncation_mode='keep_start'"):
        dpo(tiny_model_dir, tmp_path, Dataset.from_list(rows[1:2]), max_length=32, max_prompt_length=None,
            truncation_mode="keep_start")
    # keep_end (the default) cuts the start of the prompt and keeps the whole completions
    ds = dpo(tiny_model_dir, tmp_path, data, max_length=32, max_prompt_length=None).train_dataset
    row = ds[1]
    assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) == 32
    full_prompt = tokenizer(rows[1]["prompt"])["input_ids"]
    assert row["prompt_ids"] == full_prompt[-len(row["prompt_ids"]):]
    assert tokenizer.decode(row["chosen_ids"]).startswith(rows[1]["chosen"])


def test_fit_lengths_rules():
    p, (c, r) = fit_lengths(list(range(10)), [[1] * 5, [2] * 3], max_prompt_length=6, max_completion_length=4,
                            max_length=None, truncation_mode="keep_end")
    assert p == list(range(4, 10)) and c == [1] * 4 and r == [2] * 3
    p, (c, r) = fit_lengths(list(range(10)), [[1] * 5, [2] * 3], max_prompt_length=None, max_completion_length=None,
                            max_length=8, truncation_mode="keep_end")
    assert p == [7, 8, 9] and c == [1] * 5 and r == [2] * 3
    p, (c, r) = fit_lengths(list(range(4)), [[1] * 5, [2] * 3], max_prompt_length=None, max_completion_length=None,
                            max_length=6, truncation_mode="keep_start")
    assert p == list(range(4)) and c == [1, 1] and r == [2, 2]
    # a completion longer than max_length keeps one prompt token under keep_end
    p, (c,) = fit_lengths(list(range(4)), [[1] * 9], max_prompt_length=None, max_completion_length=None,
                          max_length=5, truncation_mode="keep_end")
    assert p == [3] and c == [1] * 4


# ---------------------------------------------------------------------------------------------
# log-probs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flatten", [True, False])
def test_completion_logps_match_full_log_softmax_and_padding_free(tiny_model_dir, tmp_path, flatten):
    """Padded rows, one flattened row (flash attention) and bin-packed rows (sdpa/eager) give the same per-sequence
    log-probs, per-token log-probs in sequence order, and WPO's log sum of squared probabilities."""
    words = [2, 14, 3, 9, 1, 6]  # spread lengths, so that bin-packing puts sequences together out of their order
    data = Dataset.from_list([{"prompt": "Sort: " + "b a " * w, "chosen": " a" * (w + 1), "rejected": " b" * (7 - w % 7)}
                              for w in words])
    trainer = dpo(tiny_model_dir, tmp_path, data)
    examples = [trainer.train_dataset[i] for i in range(6)]
    padded = DataCollatorForPreference(trainer.tokenizer_.pad_token_id)(examples)
    free = DataCollatorForPreference(trainer.tokenizer_.pad_token_id, padding_free=True, flatten=flatten)(examples)
    assert "attention_mask" not in free
    if flatten:
        assert free["input_ids"].shape[0] == 1
    else:  # fewer rows than sequences, none longer than the longest sequence, sequences out of their order
        assert 1 < free["input_ids"].shape[0] < 12 and free["input_ids"].shape[1] == padded["input_ids"].shape[1]
        row_major = [i for r in free["sequence_index"].tolist() for i in dict.fromkeys(r) if i != -1]
        assert sorted(row_major) == list(range(12)) and row_major != list(range(12))  # each once, reordered
    model = trainer.model.eval()
    with torch.no_grad():
        a = completion_logps(model, trainer.model_rows(padded), with_log_sum_sq_probs=True)
        b = completion_logps(model, trainer.model_rows(free), with_log_sum_sq_probs=True)
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, padded["input_ids"][:, 1:, None]).squeeze(-1)
    expected = (logp * padded["completion_mask"][:, 1:]).sum(-1)
    torch.testing.assert_close(a.sum, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(b.sum, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a.count, padded["completion_mask"].sum(-1).float())
    torch.testing.assert_close(b.count, a.count)
    torch.testing.assert_close(b.mean_logits, a.mean_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(b.token_seq, a.token_seq)
    torch.testing.assert_close(b.token_logps, a.token_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.log_sum_sq_probs, a.log_sum_sq_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.per_token()[0], a.per_token()[0], rtol=1e-5, atol=1e-5)
    assert a.sum.shape == (12,)


# ---------------------------------------------------------------------------------------------
# reference strategies
# ---------------------------------------------------------------------------------------------


def _count_params_shaped(shape):
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Parameter) and tuple(o.shape) == shape)


def test_sequence_sums_are_accumulated_in_float64():
    """A thousand log-probs near -1 summed token by token in float32 drift by ~1e-4..1e-3 (index_add is sequential);
    KTO's KL and DPO's rewards are differences of two such sums. The sum must be the float64 sum, rounded once."""
    g = torch.Generator().manual_seed(0)
    values = -(torch.rand(3000, generator=g) * 2 + 0.1)  # float32 log-probs
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor([1100, 1300, 600]))
    exact = torch.zeros(3, dtype=torch.float64).index_add(0, seq, values.double())
    got = sequence_sums(values, seq, 3)
    assert got.dtype == torch.float32
    assert torch.equal(got, exact.float())  # one rounding, at the end
    sequential = torch.zeros(3).index_add(0, seq, values)  # what the float32 accumulation gave
    assert (sequential.double() - exact).abs().max() > 1e-4  # so this test tells the two apart
    values.requires_grad_(True)
    sequence_sums(values, seq, 3)[1].backward()
    assert torch.equal(values.grad, (seq == 1).float())


def test_reference_model_runs_in_the_training_precision(tiny_model_dir, tmp_path):
    """Under bf16 a separate reference (here: the same weights) runs in the policy's autocast region, so at an
    unchanged policy its log-probs equal the policy's and the implicit rewards are exactly 0 (in float32 they were
    not: the bf16 policy against a float32 reference)."""
    from posttrain.trainers.base import bf16_supported

    if not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    trainer = dpo(tiny_model_dir, tmp_path, ref_model=tiny_model_dir, bf16=True, learning_rate=0.0, max_steps=1)
    assert trainer.ref_model is not None
    trainer.train()
    log = next(h for h in trainer.state.log_history if "rewards/margins" in h)
    assert log["rewards/chosen"] == log["rewards/rejected"] == log["rewards/margins"] == 0.0


def test_bf16_reference_stores_its_linear_layers_in_bf16(tiny_model_dir, tmp_path):
    """Under bf16 the frozen reference keeps its linear layers in bf16 (autocast casts them to bf16 at every forward
    anyway): the policy, the embedding and the norms stay float32, and the reference's log-probs are exactly those
    of a float32 reference under the same autocast. With TR-DPO syncing (the policy mixed into it) it stays float32;
    so does a reference the user passed as an object (they may still call it outside the region)."""
    from posttrain.trainers.base import bf16_supported
    from posttrain.trainers.logprobs import completion_logps

    if not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    trainer = dpo(tiny_model_dir, tmp_path, bf16=True, max_steps=1)
    ref = trainer.ref_model
    head = ref.get_output_embeddings()
    linears = [m for m in ref.modules() if type(m) is torch.nn.Linear and m is not head]
    assert linears and {m.weight.dtype for m in linears} == {torch.bfloat16}
    tied = head.weight is ref.get_input_embeddings().weight  # the tiny model ties them: the head stays float32
    assert head.weight.dtype == (torch.float32 if tied else torch.bfloat16)
    assert {p.dtype for n, p in ref.named_parameters() if "norm" in n or "embed" in n} == {torch.float32}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    rows = trainer.model_rows(batch)
    with torch.no_grad(), trainer.autocast_region():
        want = completion_logps(trainer.model.eval(), rows).sum  # the float32 policy = the reference's weights
    assert torch.equal(trainer.reference_logps(rows).sum, want)
    synced = dpo(tiny_model_dir, tmp_path / "sync", bf16=True, max_steps=1, sync_ref_model=True)
    assert {p.dtype for p in synced.ref_model.parameters()} == {torch.float32}
    from transformers import AutoModelForCausalLM

    given = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_given = dpo(tiny_model_dir, tmp_path / "given", ref_model=given, bf16=True, max_steps=1)
    assert with_given.ref_model is given and {p.dtype for p in given.parameters()} == {torch.float32}
    assert torch.equal(with_given.reference_logps(rows).sum, want)


def test_store_linears_in_keeps_tied_heads_and_outputs():
    """`store_linears_in` casts plain linear layers only: a head tied to the embedding keeps float32, and under
    autocast the outputs are bitwise those of the float32 layers."""
    from posttrain.models.loading import store_linears_in

    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)
    tied = torch.nn.Linear(16, 50, bias=False)
    tied.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "proj": torch.nn.Linear(16, 16), "head": tied})

    def run(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m["head"](m["proj"](m["emb"](torch.arange(10))))

    want = run(model)
    assert store_linears_in(model, torch.bfloat16) == 1
    assert model["proj"].weight.dtype == model["proj"].bias.dtype == torch.bfloat16
    assert model["head"].weight.dtype == model["emb"].weight.dtype == torch.float32
    assert torch.equal(run(model), want)


def test_reference_default_is_frozen_copy(tiny_model_dir, tmp_path):
    from posttrain.models import load_pretrained

    model = load_pretrained(tiny_model_dir)
    emb = tuple(model.get_input_embeddings().weight.shape)
    before = _count_params_shaped(emb)
    trainer = dpo(model, tmp_path, pref_data(16), max_steps=3)
    assert _count_params_shaped(emb) - before == 1  # the copy (the policy was already counted)
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    seen = []
    ref.register_forward_pre_hook(lambda m, a: seen.append((torch.is_grad_enabled(), m.training)))
    trainer.train()
    assert seen and all(g is False and t is False for g, t in seen)  # no grad, eval mode
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(v, ref_before[k])
    assert any(not torch.equal(p, ref_before[k]) for k, p in trainer.model.state_dict().items())


def test_reference_given_as_path(tiny_model_dir, tmp_path):
    trainer = dpo(tiny_model_dir, tmp_path, ref_model=tiny_model_dir)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    trainer.train()
    assert trainer.state.global_step == 2


def test_model_and_ref_model_init_kwargs(tiny_model_dir, tmp_path):
    trainer = dpo(tiny_model_dir, tmp_path, ref_model=tiny_model_dir, model_init_kwargs={"dtype": "float32"},
                  ref_model_init_kwargs={"dtype": "bfloat16"})
    assert trainer.model.dtype == torch.float32 and trainer.ref_model.dtype == torch.bfloat16
    trainer.train()
    assert trainer.state.log_history[0]["rewards/margins"] == trainer.state.log_history[0]["rewards/margins"]
    with pytest.raises(ValueError, match="ref_model_init_kwargs only applies"):
        from posttrain.models import load_pretrained

        dpo(tiny_model_dir, tmp_path, ref_model=load_pretrained(tiny_model_dir), ref_model_init_kwargs={"dtype": "bfloat16"})


def test_reference_peft_adapter_disabled_no_copy(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    from posttrain.models import load_pretrained

    model = load_pretrained(tiny_model_dir)
    emb = tuple(model.get_input_embeddings().weight.shape)
    base_params = sum(p.numel() for p in model.parameters())
    before = _count_params_shaped(emb)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = dpo(model, tmp_path, pref_data(16), peft_config=lora, max_steps=3, learning_rate=1e-2)
    assert trainer.ref_model is None
    assert _count_params_shaped(emb) == before  # no second copy of the weights anywhere
    total = sum(p.numel() for p in trainer.model.parameters())
    assert total - base_params < 0.1 * base_params  # only the LoRA weights were added
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as identity: policy == reference
    # the reference (adapter disabled) is the untouched base model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    rows = trainer.model_rows(batch)
    fresh = load_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = completion_logps(fresh, rows).sum
    torch.testing.assert_close(trainer.reference_logps(rows).sum, expected, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        policy = completion_logps(trainer.model.eval(), rows).sum
    assert not torch.allclose(policy, expected, atol=1e-4)


def test_precompute_ref_log_probs_cached_and_reused_on_resume(tiny_model_dir, tmp_path, monkeypatch):
    data = pref_data(16)
    common = dict(precompute_ref_log_probs=True, save_strategy="steps", save_steps=2, precompute_ref_batch_size=5)
    first = dpo(tiny_model_dir, tmp_path, data, max_steps=2, **common)
    assert first.ref_model is None
    first.train()
    ds = first.train_dataset
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(ds.column_names)
    # the columns are the initial policy's log-probs
    from posttrain.models import load_pretrained

    init = load_pretrained(tiny_model_dir).eval()
    batch = DataCollatorForPreference(first.tokenizer_.pad_token_id)([ds[i] for i in range(16)])
    with torch.no_grad():
        lp = completion_logps(init, first.model_rows(batch)).sum
    torch.testing.assert_close(torch.tensor(ds["ref_chosen_logps"]), lp[:16], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(ds["ref_rejected_logps"]), lp[16:], rtol=1e-5, atol=1e-4)
    out = tmp_path / "out"
    cached = [f for f in os.listdir(out) if f.startswith(REFERENCE_CACHE_PREFIX)]
    assert len(cached) == 1
    assert cached[0] in os.listdir(out / "checkpoint-2")
    os.remove(out / cached[0])  # the copy in the checkpoint must be enough

    calls = []
    monkeypatch.setattr(DPOTrainer, "_compute_reference_table", lambda self, d: calls.append(d) or {})
    monkeypatch.setattr(DPOTrainer, "reference_logps", lambda self, rows: calls.append(rows))
    resumed = dpo(tiny_model_dir, tmp_path, data, max_steps=4, **common)
    resumed.train(resume_from_checkpoint=True)
    assert calls == []  # no reference forward pass on resume
    assert resumed.state.global_step == 4
    assert list(resumed.train_dataset["ref_chosen_logps"]) == list(ds["ref_chosen_logps"])


def test_sync_ref_model_tr_dpo(tiny_model_dir, tmp_path):
    trainer = dpo(tiny_model_dir, tmp_path, pref_data(16), max_steps=4, sync_ref_model=True,
                  ref_model_sync_steps=2, ref_model_mixup_alpha=0.5)
    assert any(isinstance(cb, SyncRefModelCallback) for cb in trainer.callback_handler.callbacks)
    init = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    trainer.train()
    assert trainer.ref_syncs == 2
    ref, pol = trainer.ref_model.state_dict(), trainer.model.state_dict()
    changed = [k for k in ref if not torch.equal(ref[k], init[k])]
    assert changed and any(not torch.equal(ref[k], pol[k]) for k in changed)
    # alpha = 1 and one sync at the last step: the reference becomes the policy
    t2 = dpo(tiny_model_dir, tmp_path, pref_data(16), max_steps=2, sync_ref_model=True, ref_model_sync_steps=2,
             ref_model_mixup_alpha=1.0)
    t2.train()
    for k, v in t2.model.state_dict().items():
        torch.testing.assert_close(t2.ref_model.state_dict()[k], v)


def test_sync_ref_model_weights_are_checkpointed(tiny_model_dir, tmp_path):
    common = dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5, save_strategy="steps",
                  save_steps=2)
    first = dpo(tiny_model_dir, tmp_path, pref_data(16), max_steps=2, **common)
    first.train()
    assert (tmp_path / "out" / "checkpoint-2" / "ref_model.safetensors").is_file()
    synced = {k: v.clone() for k, v in first.ref_model.state_dict().items()}
    resumed = dpo(tiny_model_dir, tmp_path, pref_data(16), max_steps=2, **common)
    resumed._load_extra_state(str(tmp_path / "out" / "checkpoint-2"))
    for k, v in resumed.ref_model.state_dict().items():
        torch.testing.assert_close(v, synced[k])


def test_sync_mix_formula():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.3 * a.weight.detach() + 0.7 * b.weight.detach()
    SyncRefModelCallback.mix(a, b, 0.3)
    torch.testing.assert_close(b.weight.detach(), expected)


def test_sync_ref_model_needs_a_reference_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="sync_ref_model"):
        dpo(tiny_model_dir, tmp_path, peft_config=lora, sync_ref_model=True)
    with pytest.raises(ValueError, match="sync_ref_model"):
        DPOConfig(output_dir=str(tmp_path), sync_ref_model=True, precompute_ref_log_probs=True)


def test_reference_free(tiny_model_dir, tmp_path, monkeypatch):
    trainer = dpo(tiny_model_dir, tmp_path, reference_free=True)
    assert trainer.ref_model is None
    monkeypatch.setattr(DPOTrainer, "reference_logps", lambda self, rows: pytest.fail("reference used"))
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(0.1 * first["logps/chosen"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# losses and options
# ---------------------------------------------------------------------------------------------


def test_loss_type_list_with_weights(tiny_model_dir, tmp_path):
    from posttrain.losses.preference import dpo_loss

    trainer = dpo(tiny_model_dir, tmp_path, pref_data(8), loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert trainer.args.loss_type == ["sigmoid", "sft"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        rows = trainer.model_rows(batch)
        policy = completion_logps(trainer.model, rows)
        pol, count = policy.sum, policy.count
        ref = completion_logps(trainer.ref_model, rows).sum
    sig = dpo_loss(pol[:8], pol[8:], ref[:8], ref[8:], loss_type="sigmoid").losses
    # "sft": the chosen completions' token-mean NLL (TRL's definition), not the per-sequence sum
    torch.testing.assert_close(loss, sig.mean() - 0.5 * pol[:8].sum() / count[:8].sum(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one weight per loss type"):
        DPOConfig(output_dir=str(tmp_path), loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    assert DPOConfig(output_dir=str(tmp_path), loss_type="ipo").loss_type == ["ipo"]
    with pytest.raises(ValueError, match="Unknown loss_type"):
        DPOConfig(output_dir=str(tmp_path), loss_type="nope")


@pytest.mark.parametrize("precompute", [False, True])
def test_ld_dpo_desensitizes_the_reference_too(tiny_model_dir, tmp_path, precompute):
    """LD-DPO weighs the tokens past the shorter answer by ld_alpha in the policy's and the reference's log-probs
    alike, so at the first step (policy = its frozen copy) every implicit reward is 0 and the loss is log 2."""
    trainer = dpo(tiny_model_dir, tmp_path, pref_data(8), ld_alpha=0.3, max_steps=1, learning_rate=0.0,
                  precompute_ref_log_probs=precompute)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_ipo_logs_summed_log_ratios(tiny_model_dir, tmp_path):
    """IPO's loss takes per-token log-ratios; the logged rewards and log-probs stay the summed ones (as TRL logs)."""
    trainer = dpo(tiny_model_dir, tmp_path, pref_data(8), loss_type="ipo", beta=0.1, max_steps=1, learning_rate=0.0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()  # (metrics go to the eval store)
    with torch.no_grad():
        policy = completion_logps(trainer.model, trainer.model_rows(batch))
        loss = trainer.compute_loss(trainer.model, batch)
    logged = {k: sum(v) / len(v) for k, v in trainer._metrics["eval"].items()}
    assert policy.count[:8].min() > 1  # summed and averaged log-probs differ
    assert logged["logps/chosen"] == pytest.approx(policy.sum[:8].mean().item(), rel=1e-5)
    assert logged["logps/rejected"] == pytest.approx(policy.sum[8:].mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)  # reference = policy: (0 - 1/(2 beta))^2


@pytest.mark.parametrize("options", [
    dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),  # MPO
    dict(loss_type="ipo"),
    dict(rpo_alpha=1.0),
    dict(ld_alpha=0.5),
    dict(use_weighting=True),
    dict(f_divergence_type="js_divergence"),
    dict(loss_type="hinge", padding_free=True),
    dict(gradient_accumulation_steps=2, per_device_train_batch_size=4),
])
def test_dpo_options_train(tiny_model_dir, tmp_path, options):
    trainer = dpo(tiny_model_dir, tmp_path, pref_data(16), **options)
    trainer.train()
    logs = trainer.state.log_history[-2]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected", "logits/chosen", "logits/rejected"):
        assert name in logs and logs[name] == logs[name]  # present and not NaN
    if options.get("rpo_alpha"):
        assert logs["nll_loss"] > 0
    if "bco_pair" in str(options.get("loss_type")):
        assert trainer.running is not None and trainer.running.count == 2


@pytest.mark.parametrize("flatten", [True, False])
def test_padding_free_gives_same_loss_and_gradient(tiny_model_dir, tmp_path, flatten):
    words = [2, 14, 3, 9, 1, 6, 11, 4]
    data = Dataset.from_list([{"prompt": "Sort: " + "b a " * w, "chosen": " a" * (w + 1), "rejected": " b" * (7 - w % 7)}
                              for w in words])
    t = dpo(tiny_model_dir, tmp_path, data)
    # the default on sdpa: one row with attention per sequence where it pays, else bin-packed rows (both below)
    assert t.data_collator.padding_free and t.data_collator.flatten and t.speed.per_sequence
    examples = [t.train_dataset[i] for i in range(8)]
    t.model.eval()
    out = []
    for collator in (DataCollatorForPreference(t.tokenizer_.pad_token_id),
                     DataCollatorForPreference(t.tokenizer_.pad_token_id, padding_free=True, flatten=flatten)):
        t.model.zero_grad()
        batch = collator(examples)
        with t.sequence_rows(batch):  # per-sequence attention on the one row
            loss = t.compute_loss(t.model, batch)
            loss.backward()
        out.append((loss.detach(), torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


def test_eval_logs_metrics(tiny_model_dir, tmp_path):
    trainer = DPOTrainer(tiny_model_dir, args=train_args(DPOConfig, tmp_path, max_steps=1, eval_strategy="steps",
                                                         eval_steps=1, per_device_eval_batch_size=4),
                         train_dataset=pref_data(8), eval_dataset=pref_data(8, seed=1))
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_rewards/accuracies" in metrics


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------


def test_dpo_learns_preferences_on_held_out_pairs(tiny_model_dir, tmp_path):
    """DPO on sort-task pairs: held-out preference accuracy (sum logp) rises by >= 0.15, margins grow.
    Margins over training seeds 0/1/2 (`make test-seeds`): +0.27 / +0.31 / +0.33."""
    train = pref_data(2000, seed=0)
    test = pref_data(200, seed=1, exclude=train)
    trainer = dpo(tiny_model_dir, tmp_path, train, max_steps=100, learning_rate=3e-3, beta=0.5,
                  per_device_train_batch_size=16, logging_steps=20, lr_scheduler_type="constant")
    before = pair_accuracy(trainer, test)
    start = time.time()
    trainer.train()
    after = pair_accuracy(trainer, test)
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    print(f"DPO held-out accuracy {before:.3f} -> {after:.3f}; margins {margins}; {time.time() - start:.1f}s")
    assert after - before >= 0.15
    assert margins[-1] > margins[0] and margins[-1] > 0.5


def test_dpo_logs_entropy_and_chosen_token_accuracy(tiny_model_dir, tmp_path):
    """TRL DPO's `entropy` (token mean over every completion token) and `mean_token_accuracy` (share of chosen
    completion tokens that are the argmax), worked out here from the full logits of padded rows."""
    t = dpo(tiny_model_dir, tmp_path, pref_data(6))
    examples = [t.train_dataset[i] for i in range(6)]
    padded = DataCollatorForPreference(t.tokenizer_.pad_token_id)(examples)
    t.model.eval()
    with torch.no_grad():
        t.compute_loss(t.model, t.data_collator(examples))  # padding-free rows (the default here)
        logits = t.model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[:, :-1].float()
    mask = padded["completion_mask"][:, 1:].bool()
    probs = torch.softmax(logits, -1)
    entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)[mask].mean()
    top1 = (logits.argmax(-1) == padded["input_ids"][:, 1:])[:6][mask[:6]].float().mean()
    stored = t._metrics["eval"]  # the model is in eval mode
    t._pool(stored)
    assert abs(stored["entropy"][0] - entropy.item()) < 1e-5
    assert abs(stored["mean_token_accuracy"][0] - top1.item()) < 1e-6


def test_per_sequence_attention_covers_the_reference(tiny_model_dir, tmp_path, monkeypatch):
    """per_sequence_attention: a reference loaded on its own runs the same one-row batches sequence by sequence (not
    through a dense mask over the row), inside the training step and when precomputing; the loss is the padded
    batch's."""
    import posttrain.models.attention as attention

    t = dpo(tiny_model_dir, tmp_path, pref_data(8), ref_model=tiny_model_dir, per_sequence_attention=True)
    assert t.data_collator.flatten and t.data_collator.length_buckets
    assert t.ref_model.config._attn_implementation == attention.PER_SEQUENCE_SDPA
    with torch.no_grad():  # policy != reference
        for p in t.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    seen = []
    segments = attention._segments
    monkeypatch.setattr(attention, "_segments", lambda positions: seen.append(1) or segments(positions))
    examples = [t.train_dataset[i] for i in range(8)]
    t.data_collator.per_sequence_cost = None  # one row whatever it saves
    t.model.eval()
    with torch.no_grad():
        padded = t.compute_loss(t.model, DataCollatorForPreference(t.tokenizer_.pad_token_id)(examples))
        assert not seen
        batch = t.data_collator(examples)
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        ref_calls = []
        forward = t.ref_model.forward
        monkeypatch.setattr(t.ref_model, "forward",  # whether the per-sequence context was on at each call
                            lambda *a, **k: ref_calls.append(getattr(attention._state, "active", False)) or forward(*a, **k))
        with t.sequence_rows(batch):
            loss = t.compute_loss(t.model, batch)
        t.reference_logps(t.model_rows(batch))  # as when precomputing: outside the training step
    assert ref_calls == [True, True] and seen  # the reference's forwards went through the per-sequence path
    torch.testing.assert_close(loss, padded, rtol=1e-5, atol=1e-5)
