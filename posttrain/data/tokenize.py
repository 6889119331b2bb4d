"""Tokenization with truncation and loss masks.

Every row is turned into ``input_ids`` plus, where the loss must skip tokens, a 0/1 mask:
``completion_mask`` (prompt-completion data: 1 on completion tokens) or ``assistant_masks``
(conversations: 1 on assistant tokens, found through the chat template's ``{% generation %}`` markers).

Prompt and completion are tokenized separately and concatenated, so the token boundary is exactly
the one the model sees at generation time (prompt tokens, then generated tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .formats import (
    LANGUAGE_MODELING,
    PROMPT_COMPLETION,
    DatasetFormat,
    DatasetFormatError,
    validate_example,
)
from .collators import IGNORE_INDEX, label_ids
from .templates import require_chat_template
from .tools import TOOL_ROLE, check_tool_messages, row_tools

TRUNCATION_MODES = ("keep_start", "keep_end")


def check_truncation_mode(mode: str) -> None:
    """Refuse a ``truncation_mode`` that is not one of :data:`TRUNCATION_MODES`."""
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"Unknown truncation_mode {mode!r}; valid values: {', '.join(TRUNCATION_MODES)}.")


def truncation_window(length: int, max_length: int | None, mode: str = "keep_start") -> slice:
    """The part of a ``length``-item sequence that truncation to ``max_length`` keeps: the first (``keep_start``)
    or the last (``keep_end``) ``max_length`` items. Every truncation of the data layer is this one."""
    check_truncation_mode(mode)
    if max_length is None or length <= max_length:
        return slice(0, length)
    return slice(0, max_length) if mode == "keep_start" else slice(length - max_length, length)


def truncate(seq: Sequence, max_length: int | None, mode: str = "keep_start") -> list:
    """Keep the first (``keep_start``) or last (``keep_end``) ``max_length`` items (:func:`truncation_window`)."""
    seq = list(seq)
    return seq[truncation_window(len(seq), max_length, mode)]


def row_template_kwargs(example: Mapping[str, Any], configured: Mapping[str, Any] | None = None,
                        row: int | None = None) -> dict[str, Any]:
    """The keyword arguments a row's chat template is rendered with: the config's ``chat_template_kwargs``, then the
    row's own ``chat_template_kwargs`` column (TRL's per-row column) over them, and the row's ``tools`` column (a list
    of JSON schemas, or its JSON string: :func:`~posttrain.data.tools.row_tools`) as ``tools``. A None in the row is
    no value: an Arrow column of dicts gives every row every key, None where the row had none."""
    own = example.get("chat_template_kwargs")
    if own is not None and not isinstance(own, Mapping):
        raise DatasetFormatError(f"Column 'chat_template_kwargs': expected a dict of template arguments, got "
                                 f"{type(own).__name__}.")
    out = {**dict(configured or {}), **{k: v for k, v in (own or {}).items() if v is not None}}
    tools = row_tools(example.get("tools"), row)  # TRL's per-row tools column
    if tools:
        out["tools"] = tools
    return out


def chat_template_ids(tokenizer, messages: list, add_generation_prompt: bool = False, assistant_mask: bool = False, **kwargs):
    """Token ids (and optionally the assistant mask) of a rendered conversation."""
    enc = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=assistant_mask,
        **kwargs,
    )
    ids = list(enc["input_ids"])
    if assistant_mask:
        return ids, list(enc["assistant_masks"])
    return ids


def tokenize_prompt_completion(tokenizer, prompt: Any, completion: Any, conversational: bool, eos_token_id: int | None, row: int | None = None, **template_kwargs) -> tuple[list[int], list[int]]:
    """Return ``(prompt_ids, completion_ids)``.

    Standard rows: ``tokenizer(prompt)`` and ``tokenizer(completion, add_special_tokens=False)``, with the
    EOS token appended to the completion. Conversational rows: the chat template renders the prompt with
    the generation prompt, and the completion is what rendering ``prompt + completion`` adds to it.
    """
    if conversational:
        prompt_ids = chat_template_ids(tokenizer, prompt, add_generation_prompt=True, **template_kwargs)
        full_ids = chat_template_ids(tokenizer, list(prompt) + list(completion), **template_kwargs)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            where = f"Row {row} (0-based): " if row is not None else ""
            raise DatasetFormatError(
                f"{where}the chat template tokenizes the prompt differently when the completion follows it, so "
                "the completion tokens cannot be located. Use a chat template whose generation-prompt rendering "
                "is a prefix of the full conversation."
            )
        return prompt_ids, full_ids[len(prompt_ids):]
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos_token_id is not None and (not completion_ids or completion_ids[-1] != eos_token_id):
        completion_ids = completion_ids + [eos_token_id]
    return prompt_ids, completion_ids


def tool_free_mask(tokenizer, prompt: list, completion: list, prompt_len: int, row: int | None = None,
                   **template_kwargs) -> list[int]:
    """The completion mask of a conversational prompt-completion row whose completion holds tool results: 1 on the
    assistant turns' tokens only (the template's ``{% generation %}`` markers), so tool results are never trained
    on."""
    ids, amask = chat_template_ids(tokenizer, list(prompt) + list(completion), assistant_mask=True, **template_kwargs)
    mask = [0] * prompt_len + list(amask[prompt_len:])
    if not any(mask):
        raise DatasetFormatError(
            f"Row {row} (0-based): the completion holds 'tool' messages, which must not be trained on, but the chat "
            "template does not mark assistant tokens ({% generation %} ... {% endgeneration %}), so they cannot be "
            "told apart. Use a template with the markers, or drop the tool messages from completions.")
    return mask


def tokenize_sft_example(
    example: Mapping[str, Any],
    row: int,
    *,
    tokenizer,
    fmt: DatasetFormat,
    text_field: str = "text",
    eos_token_id: int | None = None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    assistant_only_loss: bool = False,
    completion_only_loss: bool = True,
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Validate and tokenize one SFT row (language modeling or prompt-completion, standard or conversational)."""
    validate_example(example, fmt, row, text_field=text_field)
    if fmt.conversational:
        for column in ("messages", "prompt", "completion"):
            if isinstance(example.get(column), list):
                check_tool_messages(example[column], row, column)
    template_kwargs = row_template_kwargs(example, template_kwargs, row)
    out: dict[str, list[int]] = {}
    if fmt.conversational and not template_kwargs.get("chat_template"):
        require_chat_template(tokenizer)
    if fmt.kind == LANGUAGE_MODELING:
        if fmt.conversational:
            if assistant_only_loss:
                ids, amask = chat_template_ids(tokenizer, example["messages"], assistant_mask=True, **template_kwargs)
                out["assistant_masks"] = amask
            else:
                ids = chat_template_ids(tokenizer, example["messages"], **template_kwargs)
        else:
            ids = tokenizer(example[text_field])["input_ids"]
            if eos_token_id is not None and (not ids or ids[-1] != eos_token_id):
                ids = ids + [eos_token_id]
        out["input_ids"] = ids
    elif fmt.kind == PROMPT_COMPLETION:
        prompt_ids, completion_ids = tokenize_prompt_completion(
            tokenizer, example["prompt"], example["completion"], fmt.conversational, eos_token_id, row, **template_kwargs
        )
        out["input_ids"] = prompt_ids + completion_ids
        out["completion_mask"] = [0] * len(prompt_ids) + [1] * len(completion_ids)
        if fmt.conversational and any(m.get("role") == TOOL_ROLE for m in example["completion"]):
            out["completion_mask"] = tool_free_mask(tokenizer, example["prompt"], example["completion"], len(prompt_ids),
                                                    row, **template_kwargs)
        if assistant_only_loss:
            out["assistant_masks"] = list(out["completion_mask"])
    else:
        raise DatasetFormatError(
            f"SFT trains on language-modeling or prompt-completion data, got a {fmt} dataset."
        )

    full_len = len(out["input_ids"])
    for key in list(out):
        out[key] = truncate(out[key], max_length, truncation_mode)
    if assistant_only_loss and "assistant_masks" in out and sum(out["assistant_masks"]) == 0 \
            and full_len <= (max_length or full_len):  # nothing was cut: the template does not mark assistant tokens
        raise DatasetFormatError(
            f"Row {row} (0-based): assistant_only_loss=True but no assistant token was found. Either the row has no "
            "assistant message, or the chat template lacks the {% generation %} ... {% endgeneration %} "
            "markers that locate assistant tokens."
        )
    return out


MASK_COLUMNS = ("completion_mask", "assistant_masks")


def labelled_row(example: Mapping[str, Any], *, completion_only_loss: bool, max_length: int | None = None,
                 truncation_mode: str = "keep_start") -> dict[str, list[int]]:
    """A tokenized SFT row as the SFT trainer keeps it (TRL 1.9's layout): ``input_ids`` and ``labels`` cut to
    ``max_length``; the labels as given, else the ids with ``-100`` where the masks leave a token out
    (:func:`~posttrain.data.collators.label_ids`). The mask columns are then no longer needed."""
    cut = {k: truncate(list(example[k]), max_length, truncation_mode)
           for k in ("input_ids", "labels", *MASK_COLUMNS) if example.get(k) is not None}
    return {"input_ids": cut["input_ids"], "labels": label_ids(cut, completion_only_loss)}


def has_trainable_label(example: Mapping[str, Any]) -> bool:
    """Whether a labelled row leaves the loss anything to learn from (a label after its first token, which a causal
    LM's shifted loss never predicts)."""
    return any(t != IGNORE_INDEX for t in list(example["labels"])[1:])
