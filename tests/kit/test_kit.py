"""Tests of the offline kit: shipped tokenizer, tiny model builders, synthetic tasks and datasets, CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.kit import (
    FORMATS,
    SIZES,
    TASKS,
    build_tiny_model,
    get_task,
    load_tokenizer,
    make_dataset,
    read_dataset,
    tokenizer_path,
    write_dataset,
)
from posttrain.kit.tasks import question_text

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_files_and_special_tokens(tok):
    folder = Path(tokenizer_path())
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert len(tok) == 1024
    ids = tok.convert_tokens_to_ids(["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    assert ids == [0, 1, 2, 3]
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.bos_token is None
    assert tok.padding_side == "right"
    assert tok.model_max_length == 2048


@pytest.mark.parametrize(
    "text",
    [
        "What is 23+58?\n81",
        "Reverse: c a t\nt a c",
        "This movie was really wonderful, but the ending was boring!",
        "The city council voted on Monday.\nTL;DR: a new park.",
        "Unicode too: café, naïve, 日本語, 😀\ttabs  and  spaces\n\n",
    ],
)
def test_tokenizer_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.bos_token_id not in ids  # nothing added


def test_digits_are_single_tokens(tok):
    tokens = tok.convert_ids_to_tokens(tok("12345+67890=80235")["input_ids"])
    assert tokens == list("12345") + ["+"] + list("67890") + ["="] + list("80235")
    for digit in "0123456789":
        assert len(tok(f"x {digit}{digit}{digit}")["input_ids"]) == 5  # x, space, three digits


def test_chat_template_rendering(tok):
    assert tok.chat_template
    assert (
        tok.apply_chat_template(MESSAGES, tokenize=False)
        == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert tok.apply_chat_template(with_system, tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tok.eos_token_id) == 2


def test_assistant_masks(tok):
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "5<|im_end|>"
    # multi-turn: every assistant turn is selected, nothing else
    conversation = [*MESSAGES, {"role": "user", "content": "Reverse: c a t"}, {"role": "assistant", "content": "t a c"}]
    out = tok.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    assert len(mask) == len(out["input_ids"])
    masked = [i for i, m in zip(out["input_ids"], mask, strict=True) if m]
    assert tok.decode(masked) == "5<|im_end|>t a c<|im_end|>"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generation_prompt_is_prefix(tok, task):
    rows = make_dataset(task, "prompt_completion", n=50, seed=5, conversational=True, system_prompt="Be brief.")
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert full.startswith(prompt)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
    # the standard convention: prompt tokens are a prefix of prompt + completion tokens
    for row in make_dataset(task, "prompt_completion", n=50, seed=5):
        prompt_ids = tok(row["prompt"])["input_ids"]
        assert tok(row["prompt"] + row["completion"])["input_ids"][: len(prompt_ids)] == prompt_ids


def test_tokenizer_training_is_deterministic_and_matches_shipped(tmp_path):
    from posttrain.kit.train_tokenizer import main

    assert main(["--output_dir", str(tmp_path)]) == 0
    shipped = Path(tokenizer_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name


# --------------------------------------------------------------------------- models

_AUTO = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
}


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
@pytest.mark.parametrize("head", list(_AUTO))
def test_build_save_reload(tok, tmp_path, arch, head):
    import transformers

    path = build_tiny_model(arch, head, seed=1, output_dir=tmp_path / "model")
    assert isinstance(path, str)
    model = build_tiny_model(arch, head, seed=1, tokenizer=tok)
    reloaded = getattr(transformers, _AUTO[head]).from_pretrained(path)
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(path)
    assert reloaded_tok("What is 2+3?")["input_ids"] == tok("What is 2+3?")["input_ids"]
    config = reloaded.config
    assert config.vocab_size == len(tok)
    assert (config.pad_token_id, config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    if head != "causal-lm":
        assert config.num_labels == {"seq-cls": 1, "token-cls": 2}[head]
    batch = tok(["What is 2+3?\n5", "Copy: a b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, actual = model(**batch).logits, reloaded.eval()(**batch).logits
    assert torch.equal(expected, actual)
    num_labels = {"causal-lm": len(tok), "seq-cls": 1, "token-cls": 2}[head]
    if head == "seq-cls":
        assert expected.shape == (2, 1)
    else:
        assert expected.shape == (*batch["input_ids"].shape, num_labels)


def test_same_seed_same_weights(tok):
    a, b = build_tiny_model("qwen2", seed=3, tokenizer=tok), build_tiny_model("qwen2", seed=3, tokenizer=tok)
    c = build_tiny_model("qwen2", seed=4, tokenizer=tok)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_seed_leaves_global_rng_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("llama", seed=9, tokenizer=tok)
    assert torch.equal(torch.rand(3), expected)


def test_sizes_and_overrides(tok):
    assert set(SIZES) == {"tiny", "small", "bench", "real", "real-262k"}
    from posttrain.kit.models import build_tiny_config

    real = build_tiny_config("qwen2", size="real", tokenizer=tok)  # Qwen2.5-0.5B's widths and vocabulary
    assert (real.vocab_size, real.hidden_size, real.intermediate_size, real.num_attention_heads,
            real.num_key_value_heads) == (151_936, 896, 4864, 14, 2)
    assert build_tiny_config("qwen2", size="real-262k", tokenizer=tok).vocab_size == 262_144
    # a real-shape model is saved with the tokenizer extended by placeholders to its vocabulary (text keeps its ids), so
    # posttrain's check of a tokenizer much smaller than its model passes, as for a real checkpoint
    from posttrain.kit.models import extend_vocabulary
    from posttrain.models import check_tokenizer

    wide = extend_vocabulary(tok, 20_480)
    assert len(wide) == 20_480 and len(tok) == 1024
    assert wide("hello world")["input_ids"] == tok("hello world")["input_ids"]
    check_tokenizer(wide, "kit", build_tiny_model("qwen2", size="tiny", tokenizer=tok, vocab_size=20_480))
    model = build_tiny_model("qwen2", size="small", tokenizer=tok, num_hidden_layers=1)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (128, 1)
    gpt2 = build_tiny_model("gpt2", tokenizer=tok)
    assert (gpt2.config.n_embd, gpt2.config.n_layer, gpt2.config.n_head) == (64, 2, 4)
    with pytest.raises(ValueError, match="unknown arch"):
        build_tiny_model("mamba", tokenizer=tok)
    with pytest.raises(ValueError, match="unknown head"):
        build_tiny_model("qwen2", "mlm", tokenizer=tok)
    with pytest.raises(ValueError, match="unknown size"):
        build_tiny_model("qwen2", size="huge", tokenizer=tok)


def test_tiny_model_generates(tok):
    model = build_tiny_model("qwen2", tokenizer=tok)
    inputs = tok.apply_chat_template(MESSAGES[:1], add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 4


# --------------------------------------------------------------------------- vision-language model


def test_tiny_vlm_save_reload_offline(tmp_path):
    """The tiny Llava and its processor load back with the auto classes (no hub), with the same outputs; each image
    becomes (32 / 8)^2 = 16 image tokens, which the model's image token id matches."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    from posttrain.kit.models import IMAGE_TOKEN, build_tiny_processor, build_tiny_vlm

    path = build_tiny_vlm(seed=1, output_dir=tmp_path / "vlm")
    model, processor = build_tiny_vlm(seed=1), build_tiny_processor()
    assert isinstance(model, LlavaForConditionalGeneration)
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    reloaded_processor = AutoProcessor.from_pretrained(path)
    assert type(reloaded) is type(model) and type(reloaded_processor) is type(processor)
    tok = processor.tokenizer
    assert len(tok) == 1025 and tok.convert_tokens_to_ids(IMAGE_TOKEN) == 1024 == model.config.image_token_id
    assert model.config.text_config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert reloaded_processor.chat_template == processor.chat_template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is this?"}]}]
    text = reloaded_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image>What color is this?<|im_end|>\n<|im_start|>assistant\n"
    batch = reloaded_processor(text=[text], images=[[Image.new("RGB", (40, 30), (200, 0, 0))]], return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert (batch["input_ids"] == 1024).sum() == 16
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded.eval()(**batch).logits)
    other = build_tiny_vlm(seed=2)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)


def test_vision_chat_template_renders_strings_and_parts(tok):
    """The VLM template renders string content exactly as the kit template, image parts as the image token, and its
    generation markers select the assistant tokens."""
    from posttrain.kit.models import build_tiny_processor

    vtok = build_tiny_processor().tokenizer
    assert vtok.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES, tokenize=False)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image", "text": None}]},
             {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    out = vtok.apply_chat_template(parts, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert vtok.decode(out["input_ids"]) == (
        "<|im_start|>user\nLook: <image><|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n")
    assert vtok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]) == "red<|im_end|>"


@pytest.mark.parametrize("fmt", ["prompt_completion", "language_modeling", "prompt_only"])
@pytest.mark.parametrize("conversational", [True, False])
def test_colors_dataset(fmt, conversational):
    """Balanced colours, one noisy 32x32 image per row whose mean is the colour, the same question everywhere."""
    import numpy as np

    from posttrain.kit.images import COLORS

    ds = make_dataset("colors", fmt, n=60, seed=0, conversational=conversational)
    columns = {"prompt_completion": ["images", "prompt", "completion", "answer"],
               "prompt_only": ["images", "prompt", "answer"],
               "language_modeling": ["images", "messages" if conversational else "text"]}[fmt]
    assert ds.column_names == columns
    answers = []
    for row in ds:
        (image,) = row["images"]
        pixels = np.asarray(image, dtype=float)
        assert image.size == (32, 32) and pixels.std() > 5  # noisy: no two images alike
        mean = pixels.reshape(-1, 3).mean(0)
        answers.append(min(COLORS, key=lambda c: np.abs(mean - COLORS[c]).sum()))
        if fmt != "language_modeling":
            assert row["answer"] == answers[-1]
    assert sorted(answers) == sorted(sorted(COLORS) * 10)  # balanced
    if fmt != "language_modeling":
        image_first = [{"type": "image", "text": None}, {"type": "text", "text": "What color is this?"}]
        assert ds[0]["prompt"] == ([{"role": "user", "content": image_first}] if conversational
                                   else "<image>What color is this?\n")
    if fmt == "prompt_completion":
        completion = ds[0]["completion"]
        assert (completion[0]["content"][0]["text"] if conversational else completion) == ds[0]["answer"]
    assert make_dataset("colors", fmt, n=60, seed=1, conversational=conversational)[0]["images"][0].tobytes() != \
        ds[0]["images"][0].tobytes()
    with pytest.raises(ValueError, match="formats"):
        make_dataset("colors", "unpaired_preference", n=2)


@pytest.mark.parametrize("conversational", [True, False])
def test_colors_preference_pairs(conversational):
    """Preference pairs: chosen is the image's colour, rejected another colour (every other colour appears); the
    images are those of the prompt-completion rows of the same seed."""
    from posttrain.kit.images import COLORS

    pairs = make_dataset("colors", "preference", n=60, seed=0, conversational=conversational)
    same = make_dataset("colors", "prompt_completion", n=60, seed=0, conversational=conversational)
    assert pairs.column_names == ["images", "prompt", "chosen", "rejected", "answer"]

    def text(value):
        return value[0]["content"][0]["text"] if conversational else value

    wrong = set()
    for pair, row in zip(pairs, same):
        assert pair["images"][0].tobytes() == row["images"][0].tobytes() and pair["prompt"] == row["prompt"]
        assert text(pair["chosen"]) == pair["answer"] == row["answer"]
        assert text(pair["rejected"]) != pair["answer"] and text(pair["rejected"]) in COLORS
        wrong.add((pair["answer"], text(pair["rejected"])))
    assert len({w for _, w in wrong}) == len(COLORS)


def test_color_names_start_with_distinct_tokens():
    from posttrain.kit.images import COLORS
    from posttrain.kit.models import build_tiny_processor

    vtok = build_tiny_processor().tokenizer
    assert len({vtok(name)["input_ids"][0] for name in COLORS}) == len(COLORS)


def test_colors_parquet_round_trip(tmp_path):
    """Images survive .parquet and save_to_disk (read back as PIL images by load_any, what --dataset_name uses);
    formats that cannot hold images say so."""
    from PIL.Image import Image

    from posttrain.data import load_any

    ds = make_dataset("colors", "prompt_completion", n=6, seed=0, conversational=True)
    for target in (tmp_path / "colors.parquet", tmp_path / "colors"):
        path = write_dataset(ds, target)
        for loaded in (load_any(path), read_dataset(path)):
            assert isinstance(loaded[0]["images"][0], Image)
            assert loaded[0]["images"][0].tobytes() == ds[0]["images"][0].tobytes()
            assert loaded[0]["prompt"] == ds[0]["prompt"]
    with pytest.raises(ValueError, match="hold images"):
        write_dataset(ds, tmp_path / "colors.jsonl")


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_contract(name):
    task = get_task(name)
    rng = random.Random(0)
    for _ in range(200):
        question, answer = task.sample(rng)
        assert "\n" not in question
        assert task.answer(question) == answer
        assert task.is_correct(question + "\n", f"  {answer}\n")
        assert task.is_correct([{"role": "user", "content": question}], [{"role": "assistant", "content": answer}])
        wrong = task.wrong_answer(rng, question, answer)
        assert wrong != answer and not task.is_correct(question, wrong)
        steps = task.steps(question)
        assert steps[-1] == f"Answer: {answer}"
        at = rng.randrange(len(steps))
        bad, first_wrong = task.corrupted_steps(question, rng, at=at)
        assert first_wrong == at and bad[:at] == steps[:at] and bad[at] != steps[at]
        assert bad[-1] != steps[-1]


def test_task_examples():
    addition = get_task("addition")
    assert addition.is_correct("What is 23+58?", "81")
    assert not addition.is_correct("What is 23+58?", "82")
    assert addition.steps("What is 23+58?") == [
        "column 1: 3+8+0=11, write 1, carry 1",
        "column 2: 2+5+1=8, write 8, carry 0",
        "Answer: 81",
    ]
    assert get_task("reverse").answer("Reverse: c a t") == "t a c"
    assert get_task("sort").answer("Sort: 3 1 2") == "1 2 3"
    assert get_task("copy").answer("Copy: c a t") == "c a t"
    three = get_task("addition", digits=3)
    question, _ = three.sample(random.Random(0))
    a, b = question.removeprefix("What is ").removesuffix("?").split("+")
    assert len(a) == len(b) == 3
    lengths = {len(get_task("reverse", min_len=2, max_len=4).sample(random.Random(i))[1].split()) for i in range(50)}
    assert lengths == {2, 3, 4}
    with pytest.raises(ValueError, match="unknown task"):
        get_task("division")
    with pytest.raises(ValueError, match="not an addition prompt"):
        addition.answer("Reverse: a b")


# --------------------------------------------------------------------------- datasets

_COLUMNS = {
    "language_modeling": ["text"],
    "prompt_only": ["prompt", "answer"],
    "prompt_completion": ["prompt", "completion", "answer"],
    "preference": ["prompt", "chosen", "rejected", "answer"],
    "preference_implicit": ["chosen", "rejected", "answer"],
    "unpaired_preference": ["prompt", "completion", "label", "answer"],
    "stepwise": ["prompt", "completions", "labels", "answer"],
}


def _is_messages(value, roles):
    return (
        isinstance(value, list)
        and [m["role"] for m in value] == roles
        and all(isinstance(m["content"], str) and m["content"] for m in value)
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_standard_formats(fmt):
    ds = make_dataset("addition", fmt, n=40, seed=0)
    assert len(ds) == 40
    assert ds.column_names == _COLUMNS[fmt]
    task = get_task("addition")
    for row in ds:
        if fmt == "language_modeling":
            question, answer = row["text"].split("\n")
            assert task.answer(question) == answer
            continue
        assert isinstance(row["answer"], str)
        if "prompt" in row:
            assert isinstance(row["prompt"], str) and row["prompt"].endswith("\n")
            assert task.answer(row["prompt"]) == row["answer"]
        if fmt == "prompt_completion":
            assert row["completion"] == row["answer"]
        elif fmt == "preference":
            assert row["chosen"] == row["answer"] and row["rejected"] != row["answer"]
        elif fmt == "preference_implicit":
            prompt, chosen = row["chosen"].split("\n")
            assert row["rejected"].startswith(prompt + "\n") and chosen == row["answer"]
            assert row["rejected"] != row["chosen"]
        elif fmt == "unpaired_preference":
            assert isinstance(row["label"], bool)
            assert row["label"] == task.is_correct(row["prompt"], row["completion"])
        elif fmt == "stepwise":
            assert len(row["completions"]) == len(row["labels"]) > 0
            assert all(isinstance(s, str) for s in row["completions"])
            assert all(isinstance(label, bool) for label in row["labels"])
            first_wrong = row["labels"].index(False) if False in row["labels"] else len(row["labels"])
            assert not any(row["labels"][first_wrong:])
            assert (row["completions"][-1] == f"Answer: {row['answer']}") == all(row["labels"])


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "stepwise"])
def test_conversational_formats(fmt):
    ds = make_dataset("reverse", fmt, n=20, seed=0, conversational=True)
    assert ds.column_names == (["messages"] if fmt == "language_modeling" else _COLUMNS[fmt])
    task = get_task("reverse")
    for row in ds:
        if fmt == "language_modeling":
            assert _is_messages(row["messages"], ["user", "assistant"])
            assert task.is_correct(row["messages"], row["messages"][-1:])
            continue
        if "prompt" in row:
            assert _is_messages(row["prompt"], ["user"])
        if fmt == "prompt_completion":
            assert _is_messages(row["completion"], ["assistant"])
            assert row["completion"][0]["content"] == row["answer"]
        elif fmt == "preference":
            assert _is_messages(row["chosen"], ["assistant"]) and _is_messages(row["rejected"], ["assistant"])
            assert task.is_correct(row["prompt"], row["chosen"]) and not task.is_correct(row["prompt"], row["rejected"])
        elif fmt == "preference_implicit":
            assert _is_messages(row["chosen"], ["user", "assistant"])
            assert _is_messages(row["rejected"], ["user", "assistant"])
            assert row["chosen"][0] == row["rejected"][0]
        elif fmt == "unpaired_preference":
            assert _is_messages(row["completion"], ["assistant"])
            assert row["label"] == task.is_correct(row["prompt"], row["completion"])
    with_system = make_dataset("reverse", fmt, n=2, conversational=True, system_prompt="Be brief.")
    column = {"language_modeling": "messages", "preference_implicit": "chosen"}.get(fmt, "prompt")
    first = with_system[0][column]
    assert first[0] == {"role": "system", "content": "Be brief."}


def test_stepwise_is_standard_only_and_mixed():
    with pytest.raises(ValueError, match="stepwise"):
        make_dataset("addition", "stepwise", n=2, conversational=True)
    labels = make_dataset("sort", "stepwise", n=200, seed=0)["labels"]
    fully_correct = sum(all(row) for row in labels)
    assert 50 < fully_correct < 150


def test_unpaired_labels_are_balanced():
    labels = make_dataset("copy", "unpaired_preference", n=400, seed=0)["label"]
    assert 150 < sum(labels) < 250


def test_datasets_are_deterministic_and_seeds_differ():
    a = make_dataset("addition", "preference", n=100, seed=7)
    b = make_dataset("addition", "preference", n=100, seed=7)
    assert a.to_list() == b.to_list()
    other = make_dataset("addition", "preference", n=100, seed=8)
    assert len(set(a["prompt"]) & set(other["prompt"])) < 20
    # the same seed gives the same questions in every format
    prompts = make_dataset("addition", "prompt_only", n=100, seed=7)["prompt"]
    assert prompts == a["prompt"]
    assert len(set(prompts)) == 100  # unique by default


def test_exclusion():
    train = make_dataset("addition", "prompt_completion", n=1000, seed=0, digits=2)
    held_out = make_dataset("addition", "prompt_only", n=500, seed=1, digits=2, exclude=train)
    assert not set(map(question_text, train["prompt"])) & set(map(question_text, held_out["prompt"]))
    # any format or conversational dataset, or plain strings, can be excluded
    chat = make_dataset("addition", "language_modeling", n=300, seed=2, conversational=True)
    again = make_dataset("addition", "preference_implicit", n=300, seed=2, exclude=chat)
    assert not {question_text(m) for m in chat["messages"]} & {question_text(t) for t in again["chosen"]}
    both = make_dataset("addition", "prompt_only", n=200, seed=3, exclude=[train, held_out])
    seen = set(map(question_text, list(train["prompt"]) + list(held_out["prompt"])))
    assert not {question_text(p) for p in both["prompt"]} & seen
    kept = make_dataset("addition", "prompt_only", n=10, seed=0, exclude={"What is 63+43?"})
    assert "What is 63+43?\n" not in list(kept["prompt"])
    with pytest.raises(ValueError, match="unique"):
        make_dataset("addition", n=200, digits=1)  # only 100 distinct 1-digit questions
    assert len(make_dataset("addition", n=200, digits=1, unique=False)) == 200


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        make_dataset("addition", "pairs", n=1)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ""])
@pytest.mark.parametrize(
    "fmt,conversational", [("stepwise", False), ("preference", True), ("unpaired_preference", False)]
)
def test_write_read_round_trip(tmp_path, suffix, fmt, conversational):
    ds = make_dataset("sort", fmt, n=12, seed=0, conversational=conversational)
    path = write_dataset(ds, tmp_path / "sub" / f"data{suffix}")
    assert Path(path).exists()
    assert read_dataset(path).to_list() == ds.to_list()
    if suffix == ".jsonl":
        lines = Path(path).read_text().splitlines()
        assert len(lines) == 12 and json.loads(lines[0]) == ds[0]


def test_csv(tmp_path):
    flat = make_dataset("addition", "unpaired_preference", n=10, seed=0)
    path = write_dataset(flat, tmp_path / "flat.csv")
    assert read_dataset(path).to_list() == flat.to_list()
    with pytest.raises(ValueError, match="CSV can only hold flat columns"):
        write_dataset(make_dataset("addition", "stepwise", n=3), tmp_path / "nested.csv")
    with pytest.raises(ValueError, match="CSV can only hold flat columns"):
        write_dataset(make_dataset("addition", "prompt_completion", n=3, conversational=True), tmp_path / "chat.csv")
    with pytest.raises(ValueError, match="cannot tell the file type"):
        write_dataset(flat, tmp_path / "data.txt")


# --------------------------------------------------------------------------- CLI and imports


def test_cli_build_model_and_make_data(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from posttrain.kit.cli import main

    model_dir = tmp_path / "rm"
    assert main(["build-model", "--arch", "llama", "--head", "seq-cls", "--output_dir", str(model_dir)]) == 0
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 1

    train = tmp_path / "train.jsonl"
    assert main(["make-data", "--task", "reverse", "--format", "preference", "--conversational",
                 "--n", "30", "--seed", "0", "--output", str(train), "--task-arg", "max_len=4"]) == 0  # fmt: skip
    rows = read_dataset(train)
    assert len(rows) == 30 and rows.column_names == _COLUMNS["preference"]
    assert all(len(r["prompt"][0]["content"].split()) <= 5 for r in rows)  # "Reverse:" + up to 4 letters

    test = tmp_path / "test.parquet"
    assert main(["make-data", "--task", "reverse", "--format", "prompt_only", "--n", "30", "--seed", "1",
                 "--task-arg", "max_len=4", "--exclude", str(train), "--output", str(test)]) == 0  # fmt: skip
    held_out = {question_text(p) for p in read_dataset(test)["prompt"]}
    assert not held_out & {question_text(p) for p in rows["prompt"]}

    steps = tmp_path / "steps.jsonl"
    assert main(["make-data", "--task", "sort", "--format", "stepwise", "--step-errors", "independent", "--n", "20",
                 "--output", str(steps)]) == 0  # fmt: skip
    assert read_dataset(steps)[:] == make_dataset("sort", "stepwise", n=20, step_errors="independent")[:]
    assert main(["make-data", "--format", "stepwise", "--n", "3", "--output", str(tmp_path / "x.csv")]) == 1
    assert "CSV" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-data", "--task", "division", "--output", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit):
        main(["build-model", "--arch", "mamba", "--output_dir", str(tmp_path / "m")])


def test_cli_builds_vlm_and_writes_colors(tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from posttrain.kit.cli import main

    assert main(["build-model", "--arch", "llava", "--output_dir", str(tmp_path / "vlm"), "--set", "num_hidden_layers=1"]) == 0
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm").config.text_config.num_hidden_layers == 1
    assert AutoProcessor.from_pretrained(tmp_path / "vlm").image_token == "<image>"
    assert main(["build-model", "--arch", "llava", "--head", "seq-cls", "--output_dir", str(tmp_path / "x")]) == 1
    assert "does not apply" in capsys.readouterr().err
    out = tmp_path / "colors.parquet"
    assert main(["make-data", "--task", "colors", "--format", "prompt_completion", "--conversational", "--n", "12",
                 "--output", str(out)]) == 0  # fmt: skip
    written, expected = read_dataset(out), make_dataset("colors", "prompt_completion", n=12, conversational=True)
    assert written["answer"] == expected["answer"] and written["prompt"] == expected["prompt"]
    assert written[5]["images"][0].tobytes() == expected[5]["images"][0].tobytes()
    assert main(["make-data", "--task", "colors", "--n", "3", "--output", str(tmp_path / "colors.jsonl")]) == 1
    assert "hold images" in capsys.readouterr().err


def test_import_is_light():
    code = (
        "import sys, posttrain.kit, posttrain.kit.cli; posttrain.kit.tokenizer_path(); "
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_cli_choices_match_library():
    from posttrain.kit import cli, datasets, models

    assert cli._ARCHS == models.ARCHS
    assert cli._VLM_ARCHS == models.VLM_ARCHS
    from posttrain.kit import images

    assert images.IMAGE_TOKEN == models.IMAGE_TOKEN
    assert tuple(models.HEADS) == cli._HEADS
    assert tuple(models.SIZES) == cli._SIZES
    assert cli._FORMATS == datasets.FORMATS


@pytest.mark.parametrize("task", ["sort", "addition", "reverse"])
def test_stepwise_independent_step_errors(task):
    """step_errors="independent": each step is wrong on its own (given the correct steps before it), each label
    says whether that step is the correct one, and the labels are balanced."""
    ds = make_dataset(task, "stepwise", n=300, seed=0, step_errors="independent")
    task_obj = get_task(task)
    flat = []
    for row in ds:
        correct = task_obj.steps(row["prompt"])
        assert len(row["completions"]) == len(row["labels"]) == len(correct)
        for step, right, label in zip(row["completions"], correct, row["labels"]):
            assert (step == right) == label
        flat += row["labels"]
    assert 0.45 < sum(flat) / len(flat) < 0.55
    assert make_dataset(task, "stepwise", n=5, seed=0, step_errors="independent")[:] == ds.select(range(5))[:]
    # the same seed draws the same questions as the default ("first") labels
    first = make_dataset(task, "stepwise", n=300, seed=0)
    assert first["prompt"] == ds["prompt"]
    with pytest.raises(ValueError, match="unknown step_errors"):
        make_dataset(task, "stepwise", n=2, step_errors="last")
    with pytest.raises(ValueError, match="only applies to the stepwise format"):
        make_dataset(task, "preference", n=2, step_errors="independent")
