"""Tool calling in the data layer: tool schemas, the ``tools`` column, tool calls parsed from generated text, and the
tokens a chat template inserts between an assistant turn and the next one.

* :func:`tool_schema` / :func:`tool_schemas` — the JSON schema of a Python callable (its name, type hints and
  Google-style docstring, as transformers' ``get_json_schema`` reads them), or a schema given as a dict.
* :func:`row_tools` — a row's ``tools`` column (a list of schemas, or that list as a JSON string) checked, with
  errors naming the row and field; :func:`~posttrain.data.tokenize.row_template_kwargs` passes it to the template.
* :class:`HermesToolCallParser` — tool calls in the Qwen/Hermes format, ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>``, parsed from an assistant turn's text. A parser is any callable ``text -> ParsedTurn``, so
  other formats plug in (``tool_call_parser=`` of the online trainers).
* :class:`TurnRenderer` — the token ids a chat template puts after an assistant turn that ended with EOS and before
  the next assistant turn (the tool or user messages, then the generation prompt), rendered from the template once per
  insertion and tokenized on their own: the tokens already sampled are never re-tokenized (docs/agents.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .formats import DatasetFormatError

TOOL_ROLE = "tool"


# =============================================================================================
# schemas and the tools column
# =============================================================================================


def tool_schema(tool: Callable | Mapping) -> dict[str, Any]:
    """The JSON schema of a tool: a dict is taken as given (it needs ``function.name`` or ``name``); a callable's is
    made from its name, type hints and Google-style docstring (``Args:`` describing every argument)."""
    if isinstance(tool, Mapping):
        name = (tool.get("function") or {}).get("name") or tool.get("name")
        if not name:
            raise ValueError(f"A tool schema needs a name ('function': {{'name': ...}}), got {dict(tool)!r}.")
        return dict(tool)
    if not callable(tool):
        raise TypeError(f"A tool must be a callable or a JSON schema dict, got {type(tool).__name__}.")
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(tool)
    except Exception as err:  # transformers' DocstringParsingException / TypeHintParsingException
        name = getattr(tool, "__name__", repr(tool))
        raise ValueError(
            f"Tool {name!r}: cannot build its JSON schema ({err}). A tool needs type hints on every argument and a "
            "Google-style docstring: a first line describing it and an 'Args:' section with one line per argument."
        ) from err


def tool_schemas(tools: Sequence[Callable | Mapping] | None) -> list[dict[str, Any]]:
    """:func:`tool_schema` of every tool; an error when two share a name."""
    schemas = [tool_schema(t) for t in tools or ()]
    names = [schema_name(s) for s in schemas]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"Two tools share the name(s) {twice}; the model calls a tool by its name.")
    return schemas


def schema_name(schema: Mapping) -> str:
    return (schema.get("function") or {}).get("name") or schema.get("name")


def row_tools(value: Any, row: int | None = None) -> list[dict[str, Any]] | None:
    """A row's ``tools`` column as a list of JSON-schema dicts (a JSON string is parsed), or None when empty."""
    where = f"Row {row} (0-based), column 'tools'" if row is not None else "Column 'tools'"
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{where}: not valid JSON ({err.msg} at character {err.pos}). Expected a list of "
                                     "tool schemas, e.g. [{\"type\": \"function\", \"function\": {\"name\": ...}}].") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DatasetFormatError(f"{where}: expected a list of tool schemas (dicts) or its JSON string, got "
                                 f"{type(value).__name__}.")
    out = []
    for i, schema in enumerate(value):
        if isinstance(schema, str):  # a list of JSON strings, one per tool
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError:
                schema = None
        if not isinstance(schema, Mapping) or not schema_name(schema):
            raise DatasetFormatError(f"{where}, tool {i}: expected a schema dict with a name "
                                     f"({{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}), "
                                     f"got {schema!r}.")
        out.append(_drop_nones(dict(schema)))
    return out or None


def _drop_nones(value):
    """An Arrow column of dicts gives every row every key (None where the row had none): drop those."""
    if isinstance(value, Mapping):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


def check_tool_messages(messages: Sequence[Mapping], row: int | None = None, column: str = "messages") -> None:
    """Assistant ``tool_calls`` need a function name and dict (or JSON-string) arguments; a ``tool`` message needs
    content. Errors name the row, column and message."""
    where = f"Row {row} (0-based), column {column!r}" if row is not None else f"Column {column!r}"
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        for c, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function", call) if isinstance(call, Mapping) else None
            name = function.get("name") if isinstance(function, Mapping) else None
            arguments = function.get("arguments") if isinstance(function, Mapping) else None
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    arguments = None
            if not name or not isinstance(arguments, Mapping):
                raise DatasetFormatError(
                    f"{where}, message {m}, tool call {c}: expected {{\"type\": \"function\", \"function\": "
                    f"{{\"name\": str, \"arguments\": dict}}}}, got {call!r}.")
        if message.get("role") == TOOL_ROLE and message.get("content") is None:
            raise DatasetFormatError(f"{where}, message {m}: a 'tool' message needs 'content' (the tool's result).")


# =============================================================================================
# tool calls in generated text
# =============================================================================================


@dataclass
class ToolCall:
    """One tool call of an assistant turn: ``name`` and ``arguments``, or ``error`` when it could not be read
    (malformed JSON, no name); such a call is answered with the error, as a tool message the model sees."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_message_call(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry (transformers' layout)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedTurn:
    """An assistant turn's text split into its ``content`` (the text outside the calls) and its tool calls;
    ``text`` is the turn as written."""

    content: str
    tool_calls: list[ToolCall]
    text: str = ""


class HermesToolCallParser:
    """Tool calls written ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen 2.5/3, Hermes, the
    kit's template). An unclosed ``<tool_call>`` at the end of a turn is read to the end of the text."""

    start, end = "<tool_call>", "</tool_call>"

    def __init__(self):
        self._pattern = re.compile(re.escape(self.start) + r"(.*?)(?:" + re.escape(self.end) + r"|$)", re.S)

    def __call__(self, text: str) -> ParsedTurn:
        calls = []
        for match in self._pattern.finditer(text):
            calls.append(self.parse_call(match.group(1).strip()))
        content = self._pattern.sub("", text).strip() if calls else text
        return ParsedTurn(content, calls, text)

    @staticmethod
    def parse_call(body: str) -> ToolCall:
        try:
            data = json.loads(body)
        except json.JSONDecodeError as err:
            return ToolCall("", error=f"the tool call is not valid JSON ({err.msg}): {body[:200]!r}")
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str) or not data["name"]:
            return ToolCall("", error=f"a tool call needs a \"name\": {body[:200]!r}")
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return ToolCall(data["name"], error=f"the arguments are not valid JSON: {arguments[:200]!r}")
        if not isinstance(arguments, Mapping):
            return ToolCall(data["name"], error=f"the arguments must be a JSON object, got {arguments!r}")
        return ToolCall(data["name"], dict(arguments))


def tool_message(name: str, content: Any) -> dict[str, Any]:
    """The ``tool`` message of a call's result (a string; anything else as JSON when it can be)."""
    if not isinstance(content, str):
        try:
            content = json.dumps(content)
        except (TypeError, ValueError):
            content = str(content)
    return {"role": TOOL_ROLE, "name": name, "content": content}


# =============================================================================================
# the tokens a template inserts between assistant turns
# =============================================================================================


_USER, _REPLY = "posttrain-probe-user", "posttrain-probe-reply"


class TurnRenderer:
    """Token ids the chat template puts after an assistant turn that ended with EOS and up to the next assistant
    turn's first token: the rest of the turn's terminator (e.g. the newline after ``<|im_end|>``), the inserted
    messages (tool results, an environment's observation), and the generation prompt.

    They are the difference between rendering a probe conversation ending with an assistant message and the same
    followed by the messages with the generation prompt; so the template must render a conversation as a prefix of
    its continuations (an error otherwise). ``template_kwargs`` (e.g. ``tools``) are passed to every rendering."""

    def __init__(self, tokenizer, template_kwargs: Mapping[str, Any] | None = None):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.processor = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        eos = self.tokenizer.eos_token or ""
        probe = self._render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}])
        at = probe.rfind(_REPLY)
        if at < 0:
            raise ValueError("The chat template does not render an assistant message's content; it cannot be used for "
                             "multi-turn rollouts.")
        trailer = probe[at + len(_REPLY):]
        # a turn that ended with EOS has that much of the terminator already (the sampled EOS token)
        self.glue = trailer[len(eos):] if eos and trailer.startswith(eos) else trailer

    def _render(self, messages, add_generation_prompt=False, **extra) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **{**self.template_kwargs, **extra})

    def insert_ids(self, messages: Sequence[Mapping[str, Any]], calls: Sequence[ToolCall] = ()) -> list[int]:
        """Token ids to append after an EOS-terminated assistant turn so that ``messages`` follow it and the model
        writes the next assistant turn. ``calls`` are the turn's tool calls (some templates name a tool response
        after its call)."""
        assistant = {"role": "assistant", "content": _REPLY}
        readable = [c.as_message_call() for c in calls if not c.error]
        if readable:
            assistant["tool_calls"] = readable
        head = [{"role": "user", "content": _USER}, assistant]
        prefix = self._render(head)
        full = self._render(head + list(messages), add_generation_prompt=True)
        if not full.startswith(prefix):
            raise ValueError(
                "The chat template renders a conversation differently once more messages follow it, so the tokens of "
                "a multi-turn rollout cannot be extended in place. Use a template whose rendering of a conversation is "
                "a prefix of its continuations (e.g. one that does not drop earlier turns' reasoning).")
        # the terminator's rest comes from the probe without calls: rendered calls are text the model already wrote
        return self.tokenizer(self.glue + full[len(prefix):], add_special_tokens=False)["input_ids"]


__all__ = ["TOOL_ROLE", "ToolCall", "ParsedTurn", "HermesToolCallParser", "TurnRenderer", "tool_schema",
           "tool_schemas", "schema_name", "row_tools", "check_tool_messages", "tool_message"]
