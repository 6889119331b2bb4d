"""posttrain.data_utils: TRL's data utilities under their names (issue 22). TRL's own tests of them run with
tools/trl_tests.py; these are posttrain's, on its kit tokenizer."""

import pytest
from datasets import Dataset, DatasetDict

import posttrain
from posttrain.data_utils import (apply_chat_template, extract_prompt, is_conversational,
                                  is_conversational_from_value, maybe_apply_chat_template, maybe_convert_to_chatml,
                                  maybe_extract_prompt, maybe_unpair_preference_dataset, pack_dataset,
                                  prepare_multimodal_messages, prepare_multimodal_messages_vllm,
                                  unpair_preference_dataset)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from posttrain.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_the_names_are_exported_at_the_top_level_as_trl_does():
    assert posttrain.pack_dataset is pack_dataset and posttrain.apply_chat_template is apply_chat_template


def test_conversational_checks_and_sharegpt_conversion():
    assert is_conversational({"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("c")]})
    assert not is_conversational({"prompt": "The sky is", "completion": " blue."})
    assert not is_conversational({"text": "plain"})
    row = {"conversations": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}], "id": 3}
    assert is_conversational_from_value(row) and not is_conversational(row)
    assert maybe_convert_to_chatml(row) == {"messages": [user("2+2?"), assistant("4")], "id": 3}
    assert not is_conversational_from_value(row)
    assert maybe_convert_to_chatml({"text": "x"}) == {"text": "x"}


def test_prompt_extraction_keeps_words_whole_and_explicit_prompts_alone():
    assert extract_prompt({"chosen": "Paris is big", "rejected": "Paris is beautiful"}) == {
        "prompt": "Paris is", "chosen": " big", "rejected": " beautiful"}
    conv = {"chosen": [user("hi"), assistant("yes")], "rejected": [user("hi"), assistant("no")]}
    assert maybe_extract_prompt(conv) == {"prompt": [user("hi")], "chosen": [assistant("yes")],
                                          "rejected": [assistant("no")]}
    explicit = {"prompt": [user("hi")], "chosen": [assistant("yes")], "rejected": [assistant("no")]}
    assert maybe_extract_prompt(explicit) is explicit
    # a text prompt beside conversational answers that repeat it: the prompt is extracted from the answers
    assert maybe_extract_prompt({"prompt": "hi", **conv})["prompt"] == [user("hi")]


def test_unpairing_datasets_iterables_and_dicts():
    paired = Dataset.from_dict({"prompt": ["a", "b"], "chosen": ["+a", "+b"], "rejected": ["-a", "-b"], "w": [1, 2]})
    expected = {"prompt": ["a", "b", "a", "b"], "completion": ["+a", "+b", "-a", "-b"],
                "label": [True, True, False, False], "w": [1, 2, 1, 2]}
    assert unpair_preference_dataset(paired).to_dict() == expected
    rows = list(unpair_preference_dataset(paired.to_iterable_dataset()))
    assert rows == [dict(zip(expected, values)) for values in zip(*expected.values())]
    assert maybe_unpair_preference_dataset(DatasetDict({"train": paired}))["train"].to_dict() == expected
    unpaired = Dataset.from_dict(expected)
    assert maybe_unpair_preference_dataset(unpaired) is unpaired


def test_packing_every_list_column_in_placement_order_keeping_the_format():
    ds = Dataset.from_dict({"ids": [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10], [11, 12]],
                            "mask": [[1, 1, 1, 0, 0, 0], [1], [0, 1, 1], [1, 0]]}).with_format("numpy")
    packed = pack_dataset(ds, 4, strategy="bfd_split")
    # pieces [1-4], [5, 6], [7], [8-10], [11, 12]: longest first, each into the tightest row that fits it
    assert packed.with_format(None).to_dict() == {
        "ids": [[1, 2, 3, 4], [8, 9, 10, 7], [5, 6, 11, 12]],
        "mask": [[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]],
        "seq_lengths": [[4], [3, 1], [2, 2]]}
    assert packed.format["type"] == "numpy"
    truncated = pack_dataset(ds, 4).with_format(None).to_dict()  # bfd: the overflow [5, 6] is dropped
    assert truncated["ids"] == [[1, 2, 3, 4], [8, 9, 10, 7], [11, 12]]
    wrapped = pack_dataset(ds.to_iterable_dataset(), 5, strategy="wrapped")
    assert list(wrapped.with_format(None))[0] == {"ids": [1, 2, 3, 4, 5], "mask": [1, 1, 1, 0, 0]}
    with pytest.raises(ValueError, match="not aligned"):
        pack_dataset(Dataset.from_dict({"a": [[1, 2]], "b": [[1]]}), 4)
    with pytest.raises(ValueError, match="Invalid packing strategy"):
        pack_dataset(ds, 4, strategy="first_fit")


def test_multimodal_messages_get_image_parts_then_the_images():
    messages = [{"role": "system", "content": "Be brief."}, user("What is this?"), assistant("A cat."), user("Sure?")]
    out = prepare_multimodal_messages(messages, images=["IMG0", "IMG1"])
    assert out[1]["content"] == [{"type": "image", "image": "IMG0"}, {"type": "image", "image": "IMG1"},
                                 {"type": "text", "text": "What is this?"}]
    assert out[3]["content"] == [{"type": "text", "text": "Sure?"}]  # only the first user message gets images
    assert messages[1]["content"] == "What is this?"  # the input is not changed
    with pytest.raises(ValueError, match="does not match"):
        prepare_multimodal_messages([{"role": "user", "content": [{"type": "image"}]}], images=[])
    vllm = prepare_multimodal_messages_vllm(out)
    assert vllm[1]["content"][0] == {"type": "image_pil", "image_pil": "IMG0"} and out[1]["content"][0]["image"] == "IMG0"


def test_chat_template_rows_of_every_kind(tokenizer):
    prompt = [user("2+2?")]
    lm = apply_chat_template({"messages": prompt + [assistant("4")]}, tokenizer)
    assert set(lm) == {"text"} and lm["text"].endswith("4<|im_end|>\n")
    pc = apply_chat_template({"prompt": prompt, "completion": [assistant("4")]}, tokenizer)
    assert pc["prompt"] + pc["completion"] == lm["text"] and pc["prompt"].endswith("assistant\n")
    unpaired = apply_chat_template({"prompt": prompt, "completion": [assistant("4")], "label": False}, tokenizer)
    assert unpaired["label"] is False
    implicit = apply_chat_template({"chosen": prompt + [assistant("4")], "rejected": prompt + [assistant("5")]},
                                   tokenizer)
    assert implicit["chosen"] == lm["text"] and set(implicit) == {"chosen", "rejected"}
    continued = apply_chat_template({"prompt": prompt + [assistant("It is")]}, tokenizer)
    assert continued["prompt"].endswith("It is")  # a final assistant message is continued, not closed
    assert maybe_apply_chat_template({"prompt": "2+2?", "completion": " 4"}, tokenizer) == {
        "prompt": "2+2?", "completion": " 4"}
    with pytest.raises(ValueError, match="not a dataset kind"):
        apply_chat_template({"prompt": prompt, "chosen": [assistant("4")]}, tokenizer)


def test_the_prompt_is_cut_back_where_the_template_renders_it_differently(tokenizer):
    """A generation prompt that opens a block the rendered answers do not have (DeepSeek-R1-like templates): the
    prompt is what every rendering shares and each side is exactly its rendered conversation."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: <think>' }}{% endif %}")
    row = {"prompt": [user("2+2?")], "chosen": [assistant("<think>sum</think>4")], "rejected": [assistant("5")]}
    out = apply_chat_template(row, tok)
    assert out["prompt"] == "user: 2+2?\nassistant: "
    assert out["prompt"] + out["chosen"] == tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert out["rejected"] == "5\n"


def test_tools_and_per_row_template_arguments_reach_the_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% if tools %}TOOLS:{% for t in tools %}{{ t['function']['name'] }};{% endfor %}\n{% endif %}"
                         "{% if shout %}LOUD\n{% endif %}"
                         "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")

    def get_weather(city: str):
        """Weather in a city.

        Args:
            city: The city.
        """
        return "sunny"

    out = apply_chat_template({"prompt": [user("Rome?")], "chat_template_kwargs": {"shout": True}}, tok,
                              tools=[get_weather])
    assert out["prompt"] == "TOOLS:get_weather;LOUD\nuser: Rome?\nassistant: "  # (templates trim the newline after a tag)
    assert "TOOLS" not in apply_chat_template({"prompt": [user("Rome?")]}, tok, tools=[])["prompt"]
