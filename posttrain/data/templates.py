"""Chat templates and format conversions shared by every trainer.

* :func:`extract_prompt` — implicit-prompt preference rows (``chosen``/``rejected`` containing the
  prompt) become explicit ones (``prompt``/``chosen``/``rejected``).
* :func:`unpair_preference` — paired preference rows become unpaired ``prompt``/``completion``/``label``
  rows (what KTO and BCO train on).
* :func:`apply_chat_template` — render a conversational row into standard strings with the tokenizer's
  chat template, keeping the prompt/completion split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .formats import DatasetFormatError, is_conversational_value
from .streaming import column_names, map_options


def require_chat_template(tokenizer, what: str = "this dataset") -> None:
    if getattr(tokenizer, "chat_template", None) in (None, ""):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DatasetFormatError(
            f"{what} is conversational (lists of messages) but the tokenizer '{name}' has no chat template. "
            "Set one with `tokenizer.chat_template = ...`, pass `chat_template_path` (a tokenizer folder or a "
            ".jinja file), or convert the data to plain text first."
        )


def _common_prefix_len(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def extract_prompt(example: Mapping[str, Any], row: int | None = None) -> dict[str, Any]:
    """Split the shared prompt off an implicit-prompt preference row.

    Conversational rows: the prompt is the longest common list of messages, which must leave at least one
    message in each of ``chosen`` and ``rejected``. Standard rows: the prompt is the longest common string
    prefix, cut back to the last whitespace so that a word shared by both answers stays in the answers.
    """
    chosen, rejected = example["chosen"], example["rejected"]
    where = f"Row {row} (0-based): " if row is not None else ""
    if is_conversational_value(chosen):
        n = _common_prefix_len(chosen, rejected)
        n = min(n, len(chosen) - 1, len(rejected) - 1)
        if n <= 0:
            raise DatasetFormatError(
                f"{where}'chosen' and 'rejected' share no leading messages, so no prompt can be extracted. "
                "Put the shared conversation at the start of both lists, or add an explicit 'prompt' column."
            )
        return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
    n = _common_prefix_len(chosen, rejected)
    if n == len(chosen) or n == len(rejected):
        raise DatasetFormatError(
            f"{where}one of 'chosen'/'rejected' is a prefix of the other, so no completion is left after "
            "extracting the shared prompt. Add an explicit 'prompt' column."
        )
    cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
    n = cut if cut > 0 else n
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def unpair_rows(batch: dict[str, list]) -> dict[str, list]:
    """A batch of paired rows (``chosen``, ``rejected``, optional ``prompt``) as unpaired ones: the chosen rows
    (``label`` True) then the rejected ones (False), ``prompt`` and every other column repeated."""
    n = len(batch["chosen"])
    out: dict[str, list] = {"completion": batch["chosen"] + batch["rejected"], "label": [True] * n + [False] * n}
    for key, values in batch.items():
        if key not in ("chosen", "rejected"):
            out[key] = values + values
    return out


def unpair_preference(dataset, num_proc: int | None = None):
    """Turn paired preference rows into unpaired rows: each pair gives a desirable and an undesirable row."""
    if "prompt" not in column_names(dataset):
        dataset = dataset.map(extract_prompt, **map_options(dataset, num_proc, "Extracting prompts"))
    return dataset.map(unpair_rows, batched=True, remove_columns=column_names(dataset),
                       **map_options(dataset, num_proc, "Unpairing"))


def render_messages(tokenizer, messages: list, add_generation_prompt: bool = False, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


_ROW_KEYS = ({"messages"}, {"prompt"}, {"prompt", "completion"}, {"prompt", "chosen", "rejected"},
             {"chosen", "rejected"}, {"prompt", "completion", "label"})


def apply_chat_template(example: Mapping[str, Any], tokenizer, tools: list | None = None,
                        **template_kwargs) -> dict[str, Any]:
    """Render a conversational row (any kind) into standard text with the tokenizer's chat template.

    ``messages`` becomes ``text``. The prompt is rendered with the generation prompt appended (or, when it ends with
    an assistant message, continuing that message); each of ``completion``/``chosen``/``rejected`` is the remainder
    of ``render(prompt + completion)`` after the prompt, so ``prompt + completion`` is exactly the rendered
    conversation. Where a template renders the prompt differently once an answer follows it (a generation prompt
    that opens a ``<think>`` block the rendered answers lack), the prompt is cut back to what every rendering shares.
    Implicit-prompt ``chosen``/``rejected`` are rendered whole; ``label`` is kept. ``tools`` and the row's
    ``chat_template_kwargs`` reach the template. Rows that are already standard are returned unchanged.
    """
    kwargs = {**dict(example.get("chat_template_kwargs") or {}), **template_kwargs}
    if tools:  # an empty list renders tool boilerplate in some templates: none then
        kwargs["tools"] = tools
    keys = {k for k in ("prompt", "chosen", "rejected", "completion", "messages", "label") if k in example}
    main = example.get("messages", example.get("prompt", example.get("chosen")))
    if not is_conversational_value(main):
        return dict(example)
    if keys not in _ROW_KEYS and "completions" not in example:
        raise DatasetFormatError(f"A row with the columns {sorted(keys)} is not a dataset kind a chat template "
                                 "applies to: language modeling (messages), prompt-only, prompt-completion, preference "
                                 "(with or without prompt) or unpaired preference (prompt, completion, label).")
    out: dict[str, Any] = {}
    if "messages" in example:
        out["text"] = render_messages(tokenizer, example["messages"], **kwargs)
        return out
    prompt = example.get("prompt")
    answers = [k for k in ("completion", "chosen", "rejected") if example.get(k) is not None]
    if prompt is None:  # implicit prompt: each side is a whole conversation
        return {**{k: render_messages(tokenizer, example[k], **kwargs) for k in answers},
                **({"label": example["label"]} if "label" in example else {})}
    continues = prompt[-1]["role"] == "assistant"
    prompt_text = render_messages(tokenizer, prompt, add_generation_prompt=not continues,
                                  **({"continue_final_message": True} if continues else {}), **kwargs)
    full = {k: render_messages(tokenizer, prompt + example[k], **kwargs) for k in answers}
    for text in full.values():
        prompt_text = prompt_text[:_common_prefix_len(prompt_text, text)]
    out["prompt"] = prompt_text
    for key, text in full.items():
        out[key] = text[len(prompt_text):]
    if "label" in example:
        out["label"] = example["label"]
    if "completions" in example:  # stepwise: steps stay plain strings
        out["completions"] = example["completions"]
    return out
