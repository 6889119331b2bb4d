"""SFT of vision-language models: the collator's labels."""

import random

import pytest

from posttrain.data import DataCollatorForVisionLanguageModeling
from posttrain.kit.images import QUESTION, color_image
from posttrain.kit.models import build_tiny_processor

IGNORE = -100
IMAGE_ID = 1024
IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def _row(answer, *, image=True, images=None):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": QUESTION}]
    return {"images": [color_image(answer, random.Random(0))] if images is None else images,
            "prompt": [{"role": "user", "content": content}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


# --------------------------------------------------------------------------- the collator


def test_collator_labels_on_a_hand_built_row(processor):
    """Two rows, 'red' and 'purple' (the longer answer). Worked out by hand: the prompt renders as
    '<|im_start|>user\\n' <image> 'What color is this?<|im_end|>\\n<|im_start|>assistant\\n', the processor expands
    <image> into 16 image tokens, and the completion is 'red<|im_end|>\\n'. Labels: -100 on every prompt token (the
    image tokens among them) and on padding, the completion's own ids on the completion."""
    tok = processor.tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt = ids("<|im_start|>user\n") + [IMAGE_ID] * IMAGE_TOKENS + ids(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    red, purple = ids("red<|im_end|>\n"), ids("purple<|im_end|>\n")
    padding = len(purple) - len(red)
    assert padding > 0

    batch = DataCollatorForVisionLanguageModeling(processor)([_row("red"), _row("purple")])
    assert batch["input_ids"][0].tolist() == prompt + red + [tok.pad_token_id] * padding
    assert batch["input_ids"][1].tolist() == prompt + purple
    assert batch["attention_mask"][0].tolist() == [1] * (len(prompt) + len(red)) + [0] * padding
    assert batch["labels"][0].tolist() == [IGNORE] * len(prompt) + red + [IGNORE] * padding
    assert batch["labels"][1].tolist() == [IGNORE] * len(prompt) + purple
    assert batch["pixel_values"].shape == (2, 3, 32, 32)

    # loss on the prompt too: still never on image tokens, padding, or the first token
    full = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=False)([_row("red"), _row("purple")])
    expected = [t if t != IMAGE_ID else IGNORE for t in prompt + red]
    expected[0] = IGNORE
    assert full["labels"][0].tolist() == expected + [IGNORE] * padding


def test_collator_assistant_only_loss_on_conversations(processor):
    """A two-turn conversation with the image in the second user turn: only the assistant turns are labelled
    (their text and <|im_end|>, not the newline the template puts after it)."""
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]
    row = {"messages": messages, "images": [color_image("blue", random.Random(1))]}
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)([row])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert (ids == IMAGE_ID).sum() == IMAGE_TOKENS
    assert tok.decode(labels[labels != IGNORE]) == "hello<|im_end|>blue<|im_end|>"
    everything = DataCollatorForVisionLanguageModeling(processor)([row])["labels"][0]
    assert (everything != IGNORE).sum() == len(ids) - IMAGE_TOKENS - 1  # all but the image tokens and the first


def test_collator_truncates_text_never_images(processor):
    """max_length cuts text only. The row is '<|im_start|>', 'user', '\n', 16 image tokens, the question, the
    answer: keep_start may cut the answer's end, keep_end the three tokens before the image; cutting further into
    either side of the image is an error that suggests max_length=None."""
    row = _row("purple")
    full = DataCollatorForVisionLanguageModeling(processor)([row])["input_ids"][0].tolist()
    assert full.index(IMAGE_ID) == 3

    def collate(max_length, mode="keep_start"):
        return DataCollatorForVisionLanguageModeling(processor, max_length=max_length, truncation_mode=mode)([row])

    assert collate(len(full) - 2)["input_ids"][0].tolist() == full[:-2]
    assert collate(len(full) - 3, "keep_end")["input_ids"][0].tolist() == full[3:]
    with pytest.raises(ValueError, match="would cut its image tokens.*max_length=None"):
        collate(3 + IMAGE_TOKENS - 1)
    with pytest.raises(ValueError, match=r"max_length=\d+ \(keep_end\) would cut its image tokens"):
        collate(len(full) - 4, "keep_end")
