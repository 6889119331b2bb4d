"""Best-fit-decreasing packing and the padding-free equivalence guarantee."""

import random

import datasets
import pytest
import torch

from posttrain.data import DataCollatorForLanguageModeling, best_fit_decreasing, pack_columns, pack_dataset
from posttrain.data.collators import IGNORE_INDEX


def test_bfd_places_every_item_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(300)]
    bins = best_fit_decreasing(lengths, 64)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # Best-fit decreasing is within 11/9 OPT + 1; the volume bound gives OPT >= ceil(sum/64).
    lower = -(-sum(lengths) // 64)
    assert len(bins) <= 11 / 9 * lower + 1


def test_bfd_chooses_tightest_bin():
    # Sorted: 6 (bin A, free 4), 5 (bin B, free 5), 4 -> tightest fit is bin A (free 4, not B's 5).
    bins = best_fit_decreasing([5, 6, 4], 10)
    assert sorted(map(sorted, bins)) == [[0], [1, 2]]


def test_pack_strategies_truncate_split_wrap():
    cols = {"input_ids": [[1] * 7, [2] * 3, [3] * 2]}
    bfd = pack_columns(cols, 5, "bfd")
    assert sorted(map(sorted, bfd["seq_lengths"])) == [[2, 3], [5]]  # the 7-token sequence is truncated
    split = pack_columns(cols, 5, "bfd_split")
    assert sum(map(sum, split["seq_lengths"])) == 12  # nothing lost
    assert all(sum(s) <= 5 for s in split["seq_lengths"])
    wrapped = pack_columns(cols, 5, "wrapped")
    assert wrapped["input_ids"] == [[1] * 5, [1, 1, 2, 2, 2], [3, 3]]
    assert wrapped["seq_lengths"] == [[5], [2, 3], [2]]
    with pytest.raises(ValueError, match="Unknown packing_strategy"):
        pack_columns(cols, 5, "greedy")


def test_padding_free_positions_and_labels():
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([
        {"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]},
        {"input_ids": [8, 9], "completion_mask": [0, 1]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert "attention_mask" not in batch


def test_padding_free_rows_for_sdpa():
    """flatten=False keeps one row per example/packed row; the row-end padding is its own ignored sequence."""
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, flatten=False)
    batch = collator([
        {"input_ids": [5, 6, 7, 8, 9], "seq_lengths": [3, 2]},
        {"input_ids": [4, 3]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9], [IGNORE_INDEX, 3] + [IGNORE_INDEX] * 3]


def test_length_buckets_bound_the_row_widths():
    """row_width's buckets: a multiple of 1/8 of the largest power of two not above the length, at least 64; an
    explicit multiple wins. Collators with length_buckets pad the flat row's end as one ignored sequence."""
    from posttrain.data.collators import row_width
    from posttrain.data.preference import DataCollatorForPreference

    assert [row_width(n, buckets=True) for n in (1, 64, 65, 150, 1000, 1024, 2600, 4097)] == \
        [64, 64, 128, 192, 1024, 1024, 2816, 4608]
    assert row_width(2600) == 2600 and row_width(100, 8, buckets=True) == 104
    assert len({row_width(n, buckets=True) for n in range(2049, 4097)}) == 8  # 8 widths per doubling
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, length_buckets=True)
    batch = collator([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9] + [0] * 59]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1] + list(range(59))]
    assert batch["labels"].tolist()[0][5:] == [IGNORE_INDEX] * 59
    pref = DataCollatorForPreference(pad_token_id=0, padding_free=True, length_buckets=True)
    rows = pref([{"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4, 5]}])
    assert rows["input_ids"].shape == (1, 64) and rows["sequence_index"][0, 7:].eq(-1).all()  # 3 + 4 tokens


def test_per_sequence_cost_chooses_one_row_only_where_it_pays():
    """With per-sequence attention a batch is one row where the positions it saves over bin-packed rows exceed the
    sequences' call cost, else bin-packed rows (and the trainer's context stays off for them)."""
    from posttrain.data.collators import padding_free_rows

    spread = [500, 250, 250, 480, 20]  # bin-packed: 3 full rows of 500 = 1500 positions; one row: 1536 -> no
    assert padding_free_rows(spread, True, per_sequence_cost=1.0)[1] is False
    long_short = [500, 300, 300, 300]  # bin-packed: 4 rows of 500 = 2000 positions; one row: 1408 -> saves 592 > 4
    assert padding_free_rows(long_short, True, per_sequence_cost=1.0) == ([[0, 1, 2, 3]], True)
    assert padding_free_rows(long_short, True, per_sequence_cost=200.0)[1] is False  # 592 < 4 x 200
    assert padding_free_rows(long_short, True) == ([[0, 1, 2, 3]], True)  # flash attention: always one row
    assert padding_free_rows(long_short, False, per_sequence_cost=1.0)[1] is False
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, length_buckets=True,
                                               per_sequence_cost=1.0)
    assert collator([{"input_ids": list(range(1, 501))}] + [{"input_ids": list(range(1, 301))}] * 3)["input_ids"].shape \
        == (1, 1408)  # 1400 tokens, in row_width's bucket
    assert collator([{"input_ids": [5] * n} for n in spread])["input_ids"].shape == (3, 500)  # no bucket padding


def test_padding_free_rows_are_bin_packed_up_to_the_longest_example():
    """flatten=False: examples share a row when they fit in the batch's longest example (best fit decreasing);
    each keeps its positions from 0 and its first label ignored."""
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, flatten=False)
    batch = collator([{"input_ids": [5, 6, 7, 8, 9]}, {"input_ids": [4, 3]}, {"input_ids": [1, 2, 3]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 1, 2, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, 8, 9], [IGNORE_INDEX, 3, IGNORE_INDEX, 2, 3]]


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_padding_free_rows_give_the_padded_loss_and_gradient(request, arch_fixture, tokenizer, tmp_path):
    """SFT with padding_free=True on sdpa without per-sequence attention (rows bin-packed within the batch)
    computes the padded batch's loss and gradient on fewer rows."""
    from transformers import AutoModelForCausalLM

    from posttrain import SFTConfig, SFTTrainer
    from tests.conftest import train_args

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(arch_fixture), dtype=torch.float32).eval()
    rng = random.Random(3)  # lengths spread 6x, as chat data's are
    ds = datasets.Dataset.from_list([{"prompt": "Copy: a\n", "completion": " ".join("xyz"[rng.randint(0, 2)] for _ in
                                                                                     range(rng.choice([2, 3, 5, 30])))}
                                     for _ in range(16)])
    results = {}
    for padding_free in (False, True):
        args = train_args(SFTConfig, tmp_path, padding_free=padding_free, max_length=48, per_sequence_attention=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        assert trainer.data_collator.flatten is False  # sdpa/eager without per-sequence attention
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[padding_free] = (loss.item(), grad.clone(), batch["input_ids"].shape)
    (padded_loss, padded_grad, padded_shape), (free_loss, free_grad, free_shape) = results[False], results[True]
    assert free_shape[1] == padded_shape[1] and free_shape[0] <= padded_shape[0] * 3 // 4, (free_shape, padded_shape)
    assert abs(free_loss - padded_loss) < 1e-5
    assert torch.allclose(free_grad, padded_grad, atol=1e-5, rtol=1e-4)


def _examples(tokenizer, n=24, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(1, 12)
        prompt = "Copy: " + " ".join(rng.choice("abcdefgh") for _ in range(k)) + "\n"
        rows.append({"prompt": prompt, "completion": " ".join(rng.choice("xyz") for _ in range(rng.randint(1, 9)))})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
@pytest.mark.parametrize("loss_type", ["chunked_nll", "nll"])
@pytest.mark.parametrize("flatten", [False, True])
def test_packed_padding_free_loss_equals_padded_loss(request, arch_fixture, loss_type, flatten, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from posttrain import SFTConfig, SFTTrainer
    from tests.conftest import train_args

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(arch_fixture), dtype=torch.float32).eval()
    ds = _examples(tokenizer)
    losses = {}
    for packing in (False, True):
        args = train_args(SFTConfig, tmp_path, packing=packing, max_length=48, loss_type=loss_type)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        trainer.data_collator.flatten = flatten
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        if packing:
            assert len(rows) < len(ds)  # sequences were really packed together
            assert max(len(r["seq_lengths"]) for r in rows) > 1
        batch = trainer.data_collator(rows)
        model.eval()
        with torch.no_grad():
            losses[packing] = trainer.compute_loss(model, dict(batch)).item()
    assert abs(losses[True] - losses[False]) < 1e-5, losses


def test_packing_changes_loss_if_boundaries_are_ignored(tiny_model_dir, tokenizer):
    """Sanity check that the equivalence test can fail: drop the position reset and the loss differs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    ids = [tokenizer("Copy: a b c\n")["input_ids"], tokenizer("Copy: d e\n")["input_ids"]]
    batch = collator([{"input_ids": i} for i in ids])
    with torch.no_grad():
        good = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        bad = model(input_ids=batch["input_ids"]).logits  # one long causal sequence
    second = slice(len(ids[0]), None)
    assert not torch.allclose(good[0, second], bad[0, second], atol=1e-4)


def test_pack_dataset_keeps_masks_aligned():
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "completion_mask": [[0, 1, 1], [0, 1]]})
    packed = pack_dataset(ds, 8)
    row = packed[0]
    assert len(row["input_ids"]) == len(row["completion_mask"]) == 5
    assert row["seq_lengths"] == [3, 2]


def test_padding_free_is_the_default_where_the_model_supports_it(tiny_model_dir, tokenizer, tmp_path):
    """padding_free=None (default): on for transformers models that build their mask from position_ids; num_tokens
    then counts real tokens, not the row-end padding."""
    from transformers import AutoModelForCausalLM

    from posttrain import SFTConfig, SFTTrainer
    from posttrain.models import packed_sequences_supported
    from tests.conftest import train_args

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert packed_sequences_supported(model)
    trainer = SFTTrainer(model=model, args=train_args(SFTConfig, tmp_path), train_dataset=_examples(tokenizer, n=8),
                         processing_class=tokenizer)
    assert trainer.data_collator.padding_free
    rows = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(rows)
    assert int(batch["num_real_tokens"]) == sum(len(r["input_ids"]) for r in rows) < batch["input_ids"].numel()
    model.train()
    trainer.compute_loss(model, dict(batch), num_items_in_batch=int((batch["labels"] != IGNORE_INDEX).sum()))
    assert trainer._local_tokens == sum(len(r["input_ids"]) for r in rows)

    off = SFTTrainer(model=model, args=train_args(SFTConfig, tmp_path, padding_free=False),
                     train_dataset=_examples(tokenizer, n=8), processing_class=tokenizer)
    assert not off.data_collator.padding_free and "attention_mask" in off.data_collator(rows)


def test_packed_sequences_supported_is_false_for_unknown_models():
    from posttrain.models import packed_sequences_supported

    class RemoteCodeModel(torch.nn.Module):
        config = type("Config", (), {"_attn_implementation": "sdpa"})()

    assert not packed_sequences_supported(RemoteCodeModel())


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_per_sequence_attention_gives_the_padded_loss_and_gradient(request, arch_fixture, tokenizer, tmp_path,
                                                                   monkeypatch):
    """per_sequence_attention=True on an sdpa model: padding-free batches become one row with no padding, attention
    runs sequence by sequence inside the training step (gradient checkpointing's recomputation included), and the
    step's loss and gradient equal the padded batch's. The saved config.json does not name the implementation."""
    import json

    from transformers import AutoModelForCausalLM

    import posttrain.models.attention as attention
    from posttrain import SFTConfig, SFTTrainer
    from tests.conftest import train_args

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(arch_fixture), dtype=torch.float32)
    calls, lengths = [], []
    segments = attention._segments
    monkeypatch.setattr(attention, "_segments", lambda positions: calls.append(1) or segments(positions))
    sdpa = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: lengths.append(q.shape[2]) or sdpa(q, *a, **k))
    ds = _examples(tokenizer, n=12, seed=4)
    results = {}
    for per_sequence in (False, True):
        lengths.clear()  # (the patch records transformers' sdpa calls too)
        args = train_args(SFTConfig, tmp_path, padding_free=per_sequence, per_sequence_attention=per_sequence,
                          max_length=48, gradient_checkpointing=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        if per_sequence:  # one row whatever it saves (the tiny model's calls would otherwise pick bin-packed rows)
            assert trainer.data_collator.per_sequence_cost > 1
            trainer.data_collator.per_sequence_cost = None
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)  # as train()
        trainer.current_gradient_accumulation_steps = 1  # (set by train())
        model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(batch))
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[per_sequence] = (loss.item(), grad.clone(), tuple(batch["input_ids"].shape))
    (padded_loss, padded_grad, padded_shape), (loss, grad, shape) = results[False], results[True]
    assert model.config._attn_implementation == attention.PER_SEQUENCE_SDPA
    assert shape[0] == 1
    assert shape[1] < padded_shape[0] * padded_shape[1]  # padding only to the row width's bucket
    assert shape[1] % 64 == 0
    assert calls  # the per-sequence path ran (forward and recomputation)
    # every sequence (all shorter than 48 tokens) ran at its bucket length, 64, running into the next sequence's
    # positions or, at the row end, zeros: the causal mask keeps both from its own outputs
    assert lengths and set(lengths) == {64}
    assert [attention.bucket_length(n) for n in (1, 64, 65, 1000, 1500, 2100)] == [64, 64, 128, 1024, 1536, 2304]
    assert abs(loss - padded_loss) < 1e-5
    assert torch.allclose(grad, padded_grad, atol=1e-5, rtol=1e-4)
    trainer.save_model(str(tmp_path / "saved"))
    assert attention.PER_SEQUENCE_SDPA not in json.dumps(json.loads((tmp_path / "saved" / "config.json").read_text()))
    # outside a training step the same model is plain sdpa with transformers' mask: generation still works
    out = model.generate(**tokenizer(["Copy: a b\n"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 3


def test_per_sequence_attention_applies_sliding_windows(tmp_path, tokenizer):
    """Gemma 3's local layers attend within a sliding window: the per-sequence path gives each sequence longer than
    the window its causal band (transformers' definition), so a padding-free one-row step of a gemma3 model with a
    window of 8 (sequences up to 48 tokens) has the padded batch's loss and gradient; with the band dropped it would
    not (checked: the same step with a window of 4096 differs)."""
    import posttrain.models.attention as attention
    from posttrain import SFTConfig, SFTTrainer
    from posttrain.kit import build_tiny_model
    from tests.conftest import train_args

    ds = _examples(tokenizer, n=12, seed=4)

    def step(window, per_sequence):
        model = build_tiny_model("gemma3", size="tiny", seed=0, sliding_window=window).float()
        args = train_args(SFTConfig, tmp_path, padding_free=per_sequence, per_sequence_attention=per_sequence,
                          max_length=48, gradient_checkpointing=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        if per_sequence:
            assert model.config._attn_implementation == attention.PER_SEQUENCE_SDPA
            trainer.data_collator.per_sequence_cost = None  # one row whatever it saves
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        trainer.current_gradient_accumulation_steps = 1
        model.train()
        model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(batch))
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    padded_loss, padded_grad = step(8, False)
    loss, grad = step(8, True)
    assert abs(loss - padded_loss) < 1e-5
    assert torch.allclose(grad, padded_grad, atol=1e-5, rtol=1e-4)
    wide_loss, _ = step(4096, True)
    assert abs(wide_loss - padded_loss) > 1e-3  # the window matters on these sequences
