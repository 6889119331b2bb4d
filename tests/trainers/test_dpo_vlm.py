"""DPO of vision-language models: the vision preference collator's rows, masks and image inputs, a tiny Llava
learning colour preferences it can only read off the image, the reference at learning rate 0, precomputed
reference log-probs with images, clear errors for bad inputs, the command line."""

import json
import math
import random

import pytest
import torch
from datasets import Dataset

from posttrain import DPOConfig, DPOTrainer
from posttrain.data import DatasetFormatError
from posttrain.kit import build_tiny_model, make_dataset, write_dataset
from posttrain.kit.images import COLORS, QUESTION, color_image
from posttrain.kit.models import build_tiny_processor, build_tiny_vlm
from posttrain.data.preference import DataCollatorForVisionPreference
from posttrain.trainers.logprobs import completion_logps
from tests.conftest import PRECISIONS, run_example_script, train_args, use_precision

IMAGE_ID = 1024
IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches


@pytest.fixture(scope="module")
def pairs():
    return make_dataset("colors", "preference", n=16, seed=0, conversational=True)


def _turn(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _row(chosen, rejected, *, image=True, images=None, seed=0):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": QUESTION}]
    return {"images": [color_image(chosen, random.Random(seed))] if images is None else images,
            "prompt": [{"role": "user", "content": content}], "chosen": _turn(chosen), "rejected": _turn(rejected)}


def _dpo(model, data, tmp_path, processor, **overrides):
    return DPOTrainer(model, args=train_args(DPOConfig, tmp_path, **{"max_steps": 1, **overrides}),
                      train_dataset=data, processing_class=processor)


# --------------------------------------------------------------------------- the collator


def test_collator_rows_masks_and_pixel_values(processor):
    """Two pairs, (red over purple) and (blue over green), worked out by hand: the prompt renders as
    '<|im_start|>user\\n' <image> 'What color is this?<|im_end|>\\n<|im_start|>assistant\\n' and the processor
    expands <image> into 16 image tokens; the batch is the two chosen rows, then the two rejected rows, right-padded.
    The completion mask covers each completion only (never an image token), and both halves carry the prompts'
    pixel_values, in row order, exactly as the processor computes them."""
    tok = processor.tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt = ids("<|im_start|>user\n") + [IMAGE_ID] * IMAGE_TOKENS + ids(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    rows = [_row("red", "purple", seed=0), _row("blue", "green", seed=1)]
    batch = DataCollatorForVisionPreference(processor)(rows)
    comps = [ids(f"{c}<|im_end|>\n") for c in ("red", "blue", "purple", "green")]
    width = len(prompt) + max(len(c) for c in comps)
    assert batch["input_ids"].shape == batch["completion_mask"].shape == (4, width)
    for i, comp in enumerate(comps):
        pad = width - len(prompt) - len(comp)
        assert batch["input_ids"][i].tolist() == prompt + comp + [tok.pad_token_id] * pad
        assert batch["attention_mask"][i].tolist() == [1] * (len(prompt) + len(comp)) + [0] * pad
        assert batch["completion_mask"][i].tolist() == [0] * len(prompt) + [1] * len(comp) + [0] * pad
    assert not batch["completion_mask"][batch["input_ids"] == IMAGE_ID].any()
    expected = processor(text=["<image>", "<image>"], images=[r["images"] for r in rows], return_tensors="pt")
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert torch.equal(batch["pixel_values"][:2], expected["pixel_values"])
    assert torch.equal(batch["pixel_values"][2:], expected["pixel_values"])

    # standard rows (the image token in a string prompt) and an 'image' column read the same way
    standard = {"image": rows[0]["images"][0], "prompt": f"<image>{QUESTION}\n", "chosen": "red", "rejected": "blue"}
    out = DataCollatorForVisionPreference(processor)([standard])
    assert (out["input_ids"][0] == IMAGE_ID).sum() == IMAGE_TOKENS and out["pixel_values"].shape == (2, 3, 32, 32)
    assert tok.decode(out["input_ids"][0][out["completion_mask"][0].bool()]) == "red" + tok.eos_token


def test_collator_truncates_text_never_images(processor):
    """The prompt is 3 text tokens ('<|im_start|>', 'user', '\\n'), 16 image tokens, then 12 text tokens: 15 text
    tokens. max_prompt_length counts text tokens and may cut only the 3 before the image; max_length with keep_end
    cuts the prompt's start, also only those 3; keep_start cuts the completions' ends. Cutting further is an error."""
    row = _row("purple", "red")
    full = DataCollatorForVisionPreference(processor)([row])
    ids = full["input_ids"][0].tolist()
    prompt_len = int(full["completion_mask"][0].nonzero()[0])
    longest = int(full["completion_mask"].sum(1).max())
    assert prompt_len == 3 + IMAGE_TOKENS + 12 and ids.index(IMAGE_ID) == 3

    def collate(**kw):
        return DataCollatorForVisionPreference(processor, **kw)([row])

    cut = collate(max_prompt_length=13)
    assert cut["input_ids"][0].tolist() == ids[2:] and int(cut["completion_mask"][0].nonzero()[0]) == prompt_len - 2
    assert collate(max_prompt_length=12)["input_ids"][0].tolist() == ids[3:]
    with pytest.raises(ValueError, match="max_prompt_length=11 would cut text after its first image"):
        collate(max_prompt_length=11)
    kept = collate(max_length=prompt_len - 3 + longest)
    assert kept["input_ids"][0].tolist() == ids[3:]
    with pytest.raises(ValueError, match=r"max_length=\d+ \(truncation_mode='keep_end'\) would cut its image"):
        collate(max_length=prompt_len - 4 + longest)
    short = collate(max_length=prompt_len + 1, truncation_mode="keep_start")
    assert short["input_ids"].shape[1] == prompt_len + 1 and short["completion_mask"].sum(1).tolist() == [1, 1]
    with pytest.raises(DatasetFormatError, match="Example 0 of the batch: the prompt is 31 tokens"):
        collate(max_length=prompt_len, truncation_mode="keep_start")


# --------------------------------------------------------------------------- learning


def _other_images(rows):
    """Each row with the image of the next row whose colour differs."""
    out = []
    for i, row in enumerate(rows):
        j = next(k % len(rows) for k in range(i + 1, i + len(rows)) if rows[k % len(rows)]["answer"] != row["answer"])
        out.append({**row, "images": rows[j]["images"]})
    return out


def _held_out(trainer, rows, first_tokens):
    """(pair accuracy, implicit-reward accuracy, colour choice) on ``rows``: the share of pairs where the policy
    gives the chosen colour more log-probability than the rejected one; where its implicit reward (policy minus
    reference log-prob) is higher for the chosen one; and where, among the six colours' first tokens, the policy's
    most likely one is the chosen colour's."""
    batch = trainer.data_collator(list(rows))
    rows_in = trainer.model_rows(batch)
    n = len(rows)
    model = trainer.model
    model.eval()
    with torch.no_grad():
        policy = completion_logps(model, rows_in).sum
        reference = completion_logps(trainer.ref_model, rows_in).sum
        logits = model(**{k: v for k, v in rows_in.items() if k != "completion_mask"}).logits[:n].float()
    start = rows_in["completion_mask"][:n].int().argmax(-1)  # each chosen row's first completion token
    at = logits[torch.arange(n), start - 1][:, first_tokens]
    choice = first_tokens[at.argmax(-1)] == rows_in["input_ids"][torch.arange(n), start]
    return ((policy[:n] > policy[n:]).float().mean().item(),
            ((policy[:n] - reference[:n]) > (policy[n:] - reference[n:])).float().mean().item(),
            choice.float().mean().item())


def test_dpo_learns_colour_preferences_from_the_image(processor, tmp_path):
    """DPO straight from the untrained tiny Llava, on conversational colors preference pairs (chosen: the image's
    colour, rejected: another). Every prompt is the same question, so preferring the right colour needs the image.
    Measured (300 training pairs, 80 steps of 8 at lr 1e-3, beta 0.1, fp32; 120 held-out pairs; about 6 s of
    training on one thread): the share of held-out pairs where the policy gives the chosen colour the higher
    log-probability goes from 0.57 to 0.97, the implicit-reward accuracy (0 before: all rewards are 0) to 0.97,
    and the colour choice among the six colours (greedy first answer token) from 0.22 to 0.67. Given another
    colour's image, the trained policy's pair accuracy is 0.44 (chance 0.5) and its colour choice 0.09 (chance 1/6):
    it reads the image. Seeds 1-3 (model and data): pair accuracy 0.43-0.52 -> 0.90-0.98, implicit 0.95-1.00,
    choice 0.17-0.33 -> 0.83-1.00; other images: pair 0.37-0.40, choice 0.00-0.03.
    Over training seeds 0/1/2 (`make test-seeds`): pair accuracy 0.97 / 0.96 / 1.00, implicit 0.97 / 0.96 / 0.97,
    choice 0.67 / 0.83 / 0.83; other images: pair 0.44 / 0.40 / 0.42, choice 0.09 / 0.01 / 0.04."""
    train = make_dataset("colors", "preference", n=300, seed=0, conversational=True)
    test = make_dataset("colors", "preference", n=120, seed=100, conversational=True)
    trainer = _dpo(build_tiny_vlm(seed=0), train, tmp_path, processor, max_steps=80, learning_rate=1e-3, beta=0.1,
                   lr_scheduler_type="constant", logging_steps=10)
    assert isinstance(trainer.data_collator, DataCollatorForVisionPreference)
    assert trainer.train_dataset is train  # raw rows: images are processed batch by batch
    first = torch.tensor([processor.tokenizer(name)["input_ids"][0] for name in sorted(COLORS)])
    rows = [test[i] for i in range(len(test))]
    before = _held_out(trainer, rows, first)
    trainer.train()
    after = _held_out(trainer, rows, first)
    other = _held_out(trainer, _other_images(rows), first)
    print(f"DPO VLM colors: pair {before[0]:.2f} -> {after[0]:.2f}, implicit {after[1]:.2f}, choice "
          f"{before[2]:.2f} -> {after[2]:.2f}; other images: pair {other[0]:.2f}, choice {other[2]:.2f}")
    assert before[0] <= 0.65 and before[1] == 0.0
    assert after[0] >= 0.85 and after[1] >= 0.85 and after[2] >= 0.5
    assert other[0] <= 0.6 and other[2] <= 0.25
    logged = trainer.state.log_history
    assert logged[-2]["rewards/accuracies"] >= 0.8 and logged[-2]["loss"] < 0.5 * math.log(2)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_learning_rate_zero_first_step_is_log_two(precision, vlm_dir, processor, pairs, tmp_path, monkeypatch):
    """At learning rate 0 the reference (a frozen copy of the policy, run in the same precision) equals the policy:
    the first loss is log 2 and every reward is 0, with the images in both forwards."""
    use_precision(monkeypatch, precision)
    trainer = _dpo(vlm_dir, pairs, tmp_path, processor, learning_rate=0.0, max_steps=2)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[name] == pytest.approx(0.0, abs=1e-6)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def test_images_change_the_log_probs(vlm_dir, processor, pairs, tmp_path):
    """completion_logps passes the image inputs to the model: other pixel values give other log-probs."""
    trainer = _dpo(vlm_dir, pairs, tmp_path, processor)
    batch = trainer.model_rows(trainer.data_collator([pairs[i] for i in range(4)]))
    with torch.no_grad():
        same = completion_logps(trainer.model, batch).sum
        other = completion_logps(trainer.model, {**batch, "pixel_values": batch["pixel_values"].flip(0)}).sum
    assert not torch.allclose(same, other)


def test_precomputed_reference_log_probs_with_images(vlm_dir, processor, pairs, tmp_path):
    """precompute_ref_log_probs=True: the columns are computed with the images before training (no reference model
    in memory) and equal the frozen copy's log-probs."""
    trainer = _dpo(vlm_dir, pairs, tmp_path, processor, precompute_ref_log_probs=True, max_steps=2,
                   per_device_train_batch_size=4)
    assert trainer.ref_model is None
    copy = _dpo(vlm_dir, pairs, tmp_path / "copy", processor)
    batch = copy.data_collator([pairs[i] for i in range(len(pairs))])
    expected = copy.reference_logps(copy.model_rows(batch)).sum
    trainer.train()
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    stored = torch.tensor(list(trainer.train_dataset["ref_chosen_logps"]) + list(trainer.train_dataset["ref_rejected_logps"]))
    assert torch.allclose(stored, expected, atol=1e-4)
    assert trainer.state.log_history[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("rows, match", [
    ([_row("red", "blue"), _row("blue", "red", images=[])], r"Row 1 \(0-based\): column 'prompt' has 1 image .* holds 0 image"),
    ([_row("red", "blue", image=False)], r"Row 0 \(0-based\): column 'prompt' has 0 image .* holds 1 image"),
    ([{**_row("red", "blue"), "chosen": [{"role": "assistant", "content": [{"type": "image"}]}]}],
     r"Row 0 \(0-based\), column 'chosen': images in the chosen are not supported"),
    ([{**_row("red", "blue"), "rejected": "<image>blue", "chosen": "red", "prompt": "<image>What?"}],
     r"Row 0 \(0-based\), column 'rejected': images in the rejected"),
])
def test_image_errors_name_the_row(rows, match, vlm_dir, processor, tmp_path):
    with pytest.raises(DatasetFormatError, match=match):
        _dpo(vlm_dir, Dataset.from_list(rows), tmp_path, processor)


def test_processor_without_a_chat_template(vlm_dir, pairs, tmp_path):
    bare = build_tiny_processor()
    bare.chat_template = None
    bare.tokenizer.chat_template = None
    with pytest.raises(DatasetFormatError, match="has no chat template"):
        _dpo(vlm_dir, pairs, tmp_path, bare)


def test_tokenizer_or_text_only_model_with_images(tiny_model_dir, tokenizer, vlm_dir, processor, pairs, tmp_path):
    with pytest.raises(DatasetFormatError, match="'images' column .* cannot process images"):
        _dpo(tiny_model_dir, pairs, tmp_path, tokenizer)
    with pytest.raises(DatasetFormatError, match="cannot process images"):
        _dpo(vlm_dir, pairs, tmp_path, processor.tokenizer)
    model = build_tiny_model("qwen2", tokenizer=processor.tokenizer)  # a text model with the VLM's processor
    with pytest.raises(ValueError, match="text-only model"):
        _dpo(model, pairs, tmp_path, processor)


def test_padding_free_is_refused_and_auto_is_padded(vlm_dir, processor, pairs, tmp_path):
    with pytest.raises(ValueError, match="padding_free=True is not supported with image data"):
        _dpo(vlm_dir, pairs, tmp_path, processor, padding_free=True)
    text = make_dataset("sort", "preference", n=4, seed=0)  # no images, but a VLM
    with pytest.raises(ValueError, match="padding_free=True is not supported with a vision-language model"):
        _dpo(build_tiny_vlm(), text, tmp_path, processor.tokenizer, padding_free=True)
    trainer = _dpo(vlm_dir, pairs, tmp_path, processor)
    assert not trainer.data_collator.padding_free and "attention_mask" in trainer.data_collator([pairs[0]])


# --------------------------------------------------------------------------- command line


def test_dpo_command_on_a_vlm_folder_and_parquet_file(vlm_dir, tmp_path):
    from posttrain.cli import main
    from posttrain.kit.cli import main as kit_main

    data = tmp_path / "pairs.parquet"
    assert kit_main(["make-data", "--task", "colors", "--format", "preference", "--conversational", "--n", "16",
                     "--output", str(data)]) == 0
    out = tmp_path / "run"
    assert main(["dpo", "--model_name_or_path", vlm_dir, "--dataset_name", str(data), "--output_dir", str(out),
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
                 "--save_strategy", "no", "--logging_steps", "1", "--learning_rate", "1e-3"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    assert (out / "processor_config.json").exists() and (out / "model.safetensors").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and "rewards/accuracies" in log[0]


def test_dpo_vlm_example_script(vlm_dir, pairs, tmp_path):
    data = write_dataset(pairs, tmp_path / "pairs.parquet")
    out = tmp_path / "example"
    proc = run_example_script("dpo_vlm.py", "--model_name_or_path", vlm_dir, "--dataset_name", data, "--output_dir", out,
                              "--max_steps", "2", "--report_to", "none", "--save_strategy", "no",
                              "--per_device_train_batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
