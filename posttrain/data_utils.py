"""TRL's data utilities under their TRL names and signatures (``trl.data_utils``), so code that imports them ports by
changing the import. Each is a front on posttrain's own data layer (``posttrain.data``): the format checks of
``data/formats.py``, the chat-template rendering and prompt extraction of ``data/templates.py`` and the bins of
``data/packing.py``; nothing here is a second implementation of those.

Deliberate differences (docs/differences.md): :func:`extract_prompt` on standard text keeps words whole (the prompt
ends at the last whitespace before the answers differ) and refuses rows with nothing left to answer, where TRL cuts
mid-word or returns an empty completion.

    >>> from posttrain.data_utils import maybe_apply_chat_template, pack_dataset, unpair_preference_dataset
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .data.formats import is_conversational_value
from .data.packing import PACKING_STRATEGIES, pack_columns
from .data.templates import apply_chat_template as _render_row
from .data.streaming import column_names
from .data.templates import extract_prompt as _extract_prompt
from .data.templates import unpair_rows

_MESSAGE_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")


def is_conversational(example: Mapping[str, Any]) -> bool:
    """True when the example's ``prompt``, ``chosen``, ``rejected``, ``completion`` or ``messages`` is a list of
    ``{"role", "content"}`` messages."""
    return any(is_conversational_value(example[key]) for key in _MESSAGE_KEYS if key in example)


def is_conversational_from_value(example: Mapping[str, Any]) -> bool:
    """True for ShareGPT rows: ``conversations`` is a list of ``{"from", "value"}`` messages (convert them with
    :func:`maybe_convert_to_chatml`)."""
    value = example.get("conversations")
    return (isinstance(value, list) and len(value) > 0 and isinstance(value[0], Mapping)
            and "from" in value[0] and "value" in value[0])


def maybe_convert_to_chatml(example: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT messages (``from``/``value``) become ChatML ones (``role``/``content``) in every message column, and
    ``conversations`` becomes ``messages``; other rows are returned as they are. Changes ``example`` in place (as TRL)
    and returns it."""
    for key in (*_MESSAGE_KEYS, "conversations"):
        if isinstance(example.get(key), list):
            for message in example[key]:
                if isinstance(message, dict):
                    if "from" in message:
                        message["role"] = message.pop("from")
                    if "value" in message:
                        message["content"] = message.pop("value")
    if "conversations" in example:
        example["messages"] = example.pop("conversations")
    return example


def apply_chat_template(example: Mapping[str, Any], processing_class, tools: list[dict | Callable] | None = None,
                        **template_kwargs) -> dict[str, Any]:
    """A conversational row rendered to text with the tokenizer's chat template (``data/templates.py``):
    ``messages`` becomes ``text``; ``prompt`` ends with the generation prompt (or continues a final assistant
    message); each of ``completion``/``chosen``/``rejected`` is the rest of the rendered conversation after the
    prompt; implicit-prompt ``chosen``/``rejected`` are rendered whole; ``label`` is kept. ``tools`` (JSON schemas
    or functions) and the row's own ``chat_template_kwargs`` reach the template."""
    return _render_row(example, processing_class, tools=tools, **template_kwargs)


def maybe_apply_chat_template(example: Mapping[str, Any], processing_class, tools: list[dict | Callable] | None = None,
                              **template_kwargs) -> dict[str, Any]:
    """:func:`apply_chat_template` for a conversational row; a standard row is returned as it is."""
    if is_conversational(example):
        return apply_chat_template(example, processing_class, tools=tools, **template_kwargs)
    return example


def extract_prompt(example: Mapping[str, Sequence]) -> dict[str, Sequence]:
    """An implicit-prompt preference row (``chosen``/``rejected`` that both start with the prompt) split into
    ``prompt``, ``chosen`` and ``rejected``: the shared leading messages, or the shared leading words of text."""
    return _extract_prompt(example)


def maybe_extract_prompt(example: Mapping[str, Any]) -> Mapping[str, Any]:
    """:func:`extract_prompt` where the prompt is implicit; rows that are not preference rows, or whose ``prompt``
    is already of the same kind (text or messages) as ``chosen``, are returned as they are."""
    if "chosen" not in example or "rejected" not in example:
        return example
    if "prompt" in example and (is_conversational_value(example["prompt"])
                                == is_conversational_value(example["chosen"])):
        return example
    return extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})


def get_dataset_column_names(dataset) -> list[str]:
    """The column names of a ``Dataset``, ``IterableDataset`` (read from its first row when its features are not
    known) or a dataset dict (its first split's)."""
    return column_names(dataset)


def unpair_preference_dataset(dataset, **map_kwargs):
    """Paired preference rows (``chosen``, ``rejected``, optional ``prompt``) as unpaired ones: ``prompt``,
    ``completion``, ``label`` (the chosen rows then the rejected ones of each batch), extra columns repeated. Takes a
    ``Dataset``, ``IterableDataset`` or dataset dict; ``map_kwargs`` go to ``map``."""
    return dataset.map(unpair_rows, batched=True, remove_columns=get_dataset_column_names(dataset), **map_kwargs)


def maybe_unpair_preference_dataset(dataset, num_proc: int | None = None, desc: str | None = None):
    """:func:`unpair_preference_dataset` when the dataset has ``chosen`` and ``rejected``; else the dataset."""
    names = get_dataset_column_names(dataset)
    if "chosen" in names and "rejected" in names:
        return unpair_preference_dataset(dataset, num_proc=num_proc, desc=desc)
    return dataset


_ROLES = ("system", "user", "assistant", "tool")


def _parts(content: Any) -> Any:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def prepare_multimodal_messages(messages: list[dict[str, Any]], images: list | None = None) -> list[dict[str, Any]]:
    """Messages in the structured form vision processors take: every string ``content`` becomes a list of parts
    (``{"type": "text", "text": ...}``); the first user message whose content was a string gets one
    ``{"type": "image"}`` part per image in front of its text; then every image part without an ``image`` is filled
    from ``images``, in order (tool messages excepted). Image parts that already carry their image are kept. The
    placeholders must match the images in number. Returns new message dicts; ``messages`` is not changed."""
    images = list(images or [])
    out, placed = [], False
    for message in messages:
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"Invalid role in message: {role!r}; expected one of {', '.join(_ROLES)}.")
        content = message.get("content")
        if role == "user" and isinstance(content, str) and not placed:
            content, placed = [*({"type": "image"} for _ in images), {"type": "text", "text": content}], True
        elif isinstance(content, str):
            content = _parts(content)
        out.append({**message, "content": content} if "content" in message else dict(message))
    slots = [(i, j) for i, m in enumerate(out) if m.get("content") and m["role"] != "tool"
             for j, part in enumerate(m["content"]) if part.get("type") == "image" and "image" not in part]
    if len(slots) != len(images):
        raise ValueError(f"Number of images provided ({len(images)}) does not match number of image placeholders "
                         f"({len(slots)}).")
    for (i, j), image in zip(slots, images):
        content = list(out[i]["content"])
        content[j] = {**content[j], "image": image}
        out[i] = {**out[i], "content": content}
    return out


def prepare_multimodal_messages_vllm(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Structured messages as vLLM's chat API takes them: image parts become ``{"type": "image_pil", "image_pil":
    image}``. A deep copy; ``messages`` is not changed."""
    import copy

    out = copy.deepcopy(messages)
    for message in out:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "image":
                    part["type"] = "image_pil"
                    part["image_pil"] = part.pop("image", None)
    return out


def _format_of(dataset) -> dict[str, Any] | None:
    """The output format to put back after packing (a ``Dataset``'s ``format``; an ``IterableDataset``'s type)."""
    if hasattr(dataset, "format"):
        return dict(dataset.format)
    formatting = getattr(dataset, "_formatting", None)  # IterableDataset keeps only a type
    return {"type": formatting.format_type} if formatting is not None else None


def pack_dataset(dataset, seq_length: int, strategy: str = "bfd", map_kwargs: dict[str, Any] | None = None):
    """Every list column packed into rows of at most ``seq_length`` (``data/packing.py``), a batch of ``map`` at a
    time: ``"bfd"`` (best-fit decreasing, overlong sequences truncated), ``"bfd_split"`` (overlong sequences split
    into pieces) or ``"wrapped"`` (everything concatenated and cut every ``seq_length``). The ``bfd`` strategies add
    ``seq_lengths`` (the lengths of the sequences a row holds). The dataset keeps its format."""
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"Invalid packing strategy {strategy!r}, must be one of {PACKING_STRATEGIES}.")
    names = get_dataset_column_names(dataset)
    fmt = _format_of(dataset)

    def pack(batch: dict[str, list]) -> dict[str, list]:
        out = pack_columns({k: [list(v) for v in batch[k]] for k in names}, seq_length, strategy,
                           dataset_order=False)
        if strategy == "wrapped":
            del out["seq_lengths"]
        return out

    packed = dataset.with_format(None).map(pack, batched=True, remove_columns=names, **(map_kwargs or {}))
    if fmt is None or (fmt.get("type") is None and fmt.get("columns") is None):  # no format to put back
        return packed
    if fmt.get("columns") is not None and strategy != "wrapped":
        fmt["columns"] = list(fmt["columns"]) + ["seq_lengths"]
    kwargs = fmt.pop("format_kwargs", None) or {}
    return packed.with_format(**fmt, **kwargs)


__all__ = ["is_conversational", "is_conversational_from_value", "maybe_convert_to_chatml", "apply_chat_template",
           "maybe_apply_chat_template", "extract_prompt", "maybe_extract_prompt", "get_dataset_column_names",
           "unpair_preference_dataset", "maybe_unpair_preference_dataset", "pack_dataset", "prepare_multimodal_messages",
           "prepare_multimodal_messages_vllm"]
