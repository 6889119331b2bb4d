"""Tool calling and multi-turn rollouts below the trainers: schemas, the tools column, parsing tool calls, running
them, the tokens inserted between turns, and the multi-turn loop (posttrain/data/tools.py, posttrain/rollout/agent.py)."""

import asyncio
import json
import time

import pytest

from posttrain.data import DatasetFormatError
from posttrain.data.tokenize import chat_template_ids, row_template_kwargs
from posttrain.data.tools import HermesToolCallParser, ToolCall, TurnRenderer, row_tools, tool_message, tool_schemas
from posttrain.kit.agents import MULTIPLY_SCHEMA, GuessNumberEnv, multiply, tool_answer_reward, tool_use_rows
from posttrain.rollout.agent import ToolBox, multi_turn_rollout, step_result, tool_responder
from posttrain.rollout.generation import Generations


def test_tool_schema_from_a_callable_and_errors():
    (schema,) = tool_schemas([multiply])
    assert schema["function"]["name"] == "multiply"
    assert schema["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert schema["function"]["parameters"]["required"] == ["a", "b"]

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="undocumented.*docstring"):
        tool_schemas([undocumented])
    with pytest.raises(ValueError, match="share the name"):
        tool_schemas([multiply, MULTIPLY_SCHEMA])


def test_tools_column_json_string_list_and_errors():
    assert row_tools(json.dumps([MULTIPLY_SCHEMA]))[0]["function"]["name"] == "multiply"
    assert row_tools([MULTIPLY_SCHEMA])[0] == MULTIPLY_SCHEMA
    assert row_tools(None) is None and row_tools("") is None
    with pytest.raises(DatasetFormatError, match=r"Row 3 \(0-based\), column 'tools': not valid JSON"):
        row_tools("[{", row=3)
    with pytest.raises(DatasetFormatError, match=r"Row 1 \(0-based\), column 'tools', tool 0"):
        row_tools([{"description": "no name"}], row=1)
    assert row_template_kwargs({"tools": json.dumps([MULTIPLY_SCHEMA])})["tools"] == [MULTIPLY_SCHEMA]


def test_hermes_parser_reads_calls_and_reports_malformed_ones():
    parse = HermesToolCallParser()
    turn = parse('Let me see. <tool_call>{"name": "multiply", "arguments": {"a": 2, "b": 3}}</tool_call>')
    assert turn.content == "Let me see." and turn.tool_calls == [ToolCall("multiply", {"a": 2, "b": 3})]
    assert parse("no call here").tool_calls == []
    (bad,) = parse('<tool_call>{"name": "multiply", "arguments": {a: 2}}</tool_call>').tool_calls
    assert bad.error and "not valid JSON" in bad.error
    (unclosed,) = parse('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}').tool_calls
    assert unclosed == ToolCall("f", {"x": 1})
    (nameless,) = parse('<tool_call>{"arguments": {}}</tool_call>').tool_calls
    assert "name" in nameless.error


def test_toolbox_turns_every_failure_into_a_message():
    def boom(x: int) -> int:
        """Fail.

        Args:
            x: anything
        """
        raise RuntimeError("no luck")

    def slow(x: int) -> int:
        """Sleep.

        Args:
            x: anything
        """
        time.sleep(1.0)
        return x

    async def twice(x: int) -> int:
        """Double, asynchronously.

        Args:
            x: the number
        """
        await asyncio.sleep(0)
        return 2 * x

    box = ToolBox([multiply, boom, slow, twice], timeout=0.2)
    assert box.call(ToolCall("multiply", {"a": 6, "b": 7})) == (tool_message("multiply", 42), True)
    assert box.call(ToolCall("twice", {"x": 4})) == (tool_message("twice", 8), True)
    for call, text in [(ToolCall("boom", {"x": 1}), "RuntimeError: no luck"),
                       (ToolCall("slow", {"x": 1}), "timed out"),
                       (ToolCall("nope", {}), "unknown tool 'nope'"),
                       (ToolCall("multiply", {"a": 1}), "TypeError"),
                       (ToolCall("", error="the tool call is not valid JSON"), "not valid JSON")]:
        message, ok = box.call(call)
        assert not ok and message["role"] == "tool" and text in json.loads(message["content"])["error"], message


def test_inserted_tokens_match_the_template_rendering_of_the_whole_conversation(tokenizer):
    """Token-in/token-out: prompt + the sampled call + the inserted tool turn + the sampled answer are exactly the
    template's tokens of the full conversation (the kit template; no token is re-tokenized across a boundary)."""
    row = tool_use_rows(1, seed=3)[0]
    kwargs = row_template_kwargs(row)
    messages = row["messages"]
    full = chat_template_ids(tokenizer, messages, **kwargs)
    prompt = chat_template_ids(tokenizer, messages[:1], add_generation_prompt=True, **kwargs)
    call = HermesToolCallParser()(
        '<tool_call>{"name": "multiply", "arguments": ' + json.dumps(messages[1]["tool_calls"][0]["function"]["arguments"])
        + "}</tool_call>")
    sampled_call = tokenizer(call.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    inserted = TurnRenderer(tokenizer, kwargs).insert_ids([messages[2]], call.tool_calls)
    answer = tokenizer(messages[3]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sequence = prompt + sampled_call + inserted + answer
    assert sequence == full[: len(sequence)]
    assert tokenizer.decode(full[len(sequence):]) == "\n"  # the template's newline after the last turn


def _scripted(tokenizer, turns):
    """A generate() that answers the k-th call with turns[k] for every prompt (text + EOS), with fake log-probs."""
    calls = []

    def generate(prompt_ids, max_new_tokens, return_logprobs=False, **sampling):
        text = turns[min(len(calls), len(turns) - 1)]
        calls.append([list(p) for p in prompt_ids])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = ids[:max_new_tokens]
        return Generations(prompt_ids=[list(p) for p in prompt_ids], completion_ids=[list(ids) for _ in prompt_ids],
                           texts=[text] * len(prompt_ids),
                           logprobs=[[-0.5] * len(ids) for _ in prompt_ids] if return_logprobs else None)

    return generate, calls


def test_multi_turn_rollout_masks_inserted_tokens_and_continues_from_the_exact_tokens(tokenizer):
    kwargs = {"tools": [MULTIPLY_SCHEMA]}
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'
    generate, calls = _scripted(tokenizer, [call, "408"])
    prompt = chat_template_ids(tokenizer, [{"role": "user", "content": "What is 12*34?"}], add_generation_prompt=True,
                               **kwargs)
    box = ToolBox([multiply])
    (ep,) = multi_turn_rollout(generate, [prompt], tool_responder([box]), tokenizer=tokenizer,
                               renderer=TurnRenderer(tokenizer, kwargs), max_completion_length=200,
                               return_logprobs=True)
    assert ep.turns == 2 and ep.tool_calls == 1 and ep.tool_failures == 0 and not ep.truncated
    assert [m["role"] for m in ep.messages] == ["assistant", "tool", "assistant"]
    assert ep.messages[1]["content"] == "408" and tool_answer_reward([ep.messages], ["408"]) == [1.0]
    # the second turn was generated from exactly prompt + the first turn's tokens + the inserted ones
    assert calls[1][0] == prompt + ep.completion_ids[: len(calls[1][0]) - len(prompt)]
    first = tokenizer(call, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n1 = len(first)
    n_ins = len(calls[1][0]) - len(prompt) - n1
    assert ep.completion_ids[:n1] == first
    assert ep.loss_mask == [1] * n1 + [0] * n_ins + [1] * (len(ep.completion_ids) - n1 - n_ins)
    assert tokenizer.decode(ep.completion_ids[n1:n1 + n_ins]) == "\n<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n"
    assert ep.logprobs == [-0.5] * n1 + [0.0] * n_ins + [-0.5] * (len(ep.completion_ids) - n1 - n_ins)


def test_multi_turn_rollout_budgets(tokenizer):
    kwargs = {"tools": [MULTIPLY_SCHEMA]}
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 1, "b": 2}}</tool_call>'
    prompt = chat_template_ids(tokenizer, [{"role": "user", "content": "1*2"}], add_generation_prompt=True, **kwargs)
    renderer = TurnRenderer(tokenizer, kwargs)
    n_call = len(tokenizer(call, add_special_tokens=False)["input_ids"]) + 1

    def run(**budget):
        generate, _ = _scripted(tokenizer, [call])  # calls the tool forever
        return multi_turn_rollout(generate, [prompt], tool_responder([ToolBox([multiply])]), tokenizer=tokenizer,
                                  renderer=renderer, **budget)[0]

    ep = run(max_completion_length=1000, max_turns=3)  # max_tool_calling_iterations=2
    assert ep.turns == 3 and ep.tool_calls == 2 and not ep.truncated
    ep = run(max_completion_length=n_call + 3)  # no room for the tool's answer: stop before it, truncated
    assert ep.turns == 1 and ep.truncated and ep.completion_ids and sum(ep.loss_mask) == len(ep.completion_ids)
    ep = run(max_completion_length=n_call - 5)  # the budget runs out mid-turn
    assert ep.truncated and len(ep.completion_ids) == n_call - 5


def test_environment_step_results():
    assert step_result(("obs", 1.0, True)) == ("obs", 1.0, True)
    assert step_result({"observation": "o", "reward": None, "done": False}) == ("o", None, False)
    with pytest.raises(ValueError, match="observation, reward, done"):
        step_result(("obs",))
    env = GuessNumberEnv(high=8, max_guesses=3)
    env.reset(secret=5)
    assert step_result(env.step("3")) == ("higher", 0.0, False)
    assert step_result(env.step("7")) == ("lower", 0.0, False)
    assert step_result(env.step("5"))[1:] == (pytest.approx(0.8), True)
