"""Dataset format detection, validation errors and conversions."""

import datasets
import pytest

from posttrain.data import DatasetFormatError, detect_format, extract_prompt, unpair_preference, validate_dataset
from posttrain.data.formats import validate_example

CONV = [{"role": "user", "content": "hi"}]
ANS = [{"role": "assistant", "content": "yo"}]


@pytest.mark.parametrize(
    "row, kind, conv",
    [
        ({"text": "a"}, "language_modeling", False),
        ({"messages": CONV + ANS}, "language_modeling", True),
        ({"prompt": "a"}, "prompt_only", False),
        ({"prompt": CONV}, "prompt_only", True),
        ({"prompt": "a", "completion": "b"}, "prompt_completion", False),
        ({"prompt": CONV, "completion": ANS}, "prompt_completion", True),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference", False),
        ({"chosen": CONV + ANS, "rejected": CONV + ANS}, "preference_implicit", True),
        ({"prompt": "a", "completion": "b", "label": True}, "unpaired_preference", False),
        ({"prompt": "a", "completions": ["s1", "s2"], "labels": [True, False]}, "stepwise", False),
    ],
)
def test_detect_every_format(row, kind, conv):
    fmt = detect_format(row.keys(), row)
    assert (fmt.kind, fmt.conversational) == (kind, conv)
    validate_example(row, fmt, 0)


def test_unknown_format_lists_expected_columns():
    with pytest.raises(DatasetFormatError, match="(?s)Cannot tell the dataset format.*'question'.*prompt"):
        detect_format(["question", "answer"])


def test_custom_text_field():
    fmt = detect_format(["content"], {"content": "x"}, text_field="content")
    assert fmt.kind == "language_modeling"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": ""}], r"Row 1 \(0-based\), column 'completion'.*empty"),
        ([{"prompt": 3, "completion": "b"}], r"Row 0 \(0-based\), column 'prompt': expected a string, got int"),
        ([{"prompt": CONV, "completion": "b"}], r"Row 0 \(0-based\), column 'completion': expected a non-empty list of messages"),
        ([{"prompt": "a", "completion": "b", "label": "yes"}], r"Row 0 \(0-based\), column 'label': expected a bool"),
        ([{"prompt": "a", "completions": ["x", "y"], "labels": [True]}], r"Row 0 \(0-based\): 'completions' has 2 steps but 'labels' has 1"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], r"unknown role 'robot'"),
        ([{"messages": [{"content": "x"}]}], r"Row 0 \(0-based\), column 'messages', message 0: expected a dict with 'role' and 'content'"),
    ],
)
def test_bad_rows_name_row_and_column(rows, message):
    ds = datasets.Dataset.from_list(rows)
    with pytest.raises(DatasetFormatError, match=message):
        validate_dataset(ds)


def test_empty_dataset():
    with pytest.raises(DatasetFormatError, match="empty"):
        validate_dataset(datasets.Dataset.from_dict({"text": []}))


def test_extract_prompt_standard_and_conversational():
    row = {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}
    assert extract_prompt(row) == {"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"}
    row = {"chosen": CONV + [{"role": "assistant", "content": "4"}], "rejected": CONV + [{"role": "assistant", "content": "5"}]}
    out = extract_prompt(row)
    assert out["prompt"] == CONV and out["chosen"][0]["content"] == "4" and out["rejected"][0]["content"] == "5"
    with pytest.raises(DatasetFormatError, match="prefix of the other"):
        extract_prompt({"chosen": "abc", "rejected": "abc"})


def test_unpair_preference():
    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "good", "rejected": "bad", "id": 7}])
    out = unpair_preference(ds)
    assert out.to_list() == [
        {"prompt": "p", "completion": "good", "label": True, "id": 7},
        {"prompt": "p", "completion": "bad", "label": False, "id": 7},
    ]
