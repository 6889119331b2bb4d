"""Built-in reward functions (posttrain.rollout.rewards) on hand-computed values."""

import pytest

from posttrain.kit import get_task, make_dataset
from posttrain.rollout import RewardFunctionError, RewardScorer
from posttrain.rollout.rewards import (
    BUILTIN_REWARDS,
    accuracy_reward,
    extract_answer,
    format_reward,
    get_length_penalty,
    get_reward_func,
    get_soft_overlong_punishment,
    think_format_reward,
)


def test_extract_answer():
    assert extract_answer("  t a c \n") == "t a c"
    assert extract_answer("<think>hmm</think><answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("column 1: ...\nAnswer: 81\n\n") == "81"
    assert extract_answer("Answer is 81") == "Answer is 81"


def test_accuracy_reward_standard_and_conversational():
    prompts = ["Reverse: c a t\n"] * 4
    completions = ["t a c", " t a c\n", "t a", "<answer>t a c</answer>"]
    assert accuracy_reward(prompts, completions, answer=["t a c"] * 4) == [1.0, 1.0, 0.0, 1.0]
    conv = [[{"role": "assistant", "content": "81"}], [{"role": "assistant", "content": "80"}]]
    assert accuracy_reward([[{"role": "user", "content": "What is 23+58?"}]] * 2, conv, answer=["81", 81]) == [1.0, 0.0]
    assert accuracy_reward(["p"], ["x"], answer=[None]) == [None]  # does not apply


def test_accuracy_reward_agrees_with_kit_tasks():
    ds = make_dataset("addition", "prompt_only", n=20, seed=3)
    task = get_task("addition")
    wrong = [task.wrong_answer(__import__("random").Random(i), p) for i, p in enumerate(ds["prompt"])]
    completions = [a if i % 2 else w for i, (a, w) in enumerate(zip(ds["answer"], wrong))]
    got = accuracy_reward(ds["prompt"], completions, answer=ds["answer"])
    assert got == [float(task.is_correct(p, c)) for p, c in zip(ds["prompt"], completions)]
    assert sum(got) == 10


def test_accuracy_reward_needs_answer_column():
    with pytest.raises(ValueError, match="'answer' column"):
        accuracy_reward(["p"], ["c"])
    # through the scorer the error names the function
    with pytest.raises(RewardFunctionError, match="accuracy_reward"):
        RewardScorer(accuracy_reward)(["p"], ["c"], other=["x"])


def test_format_rewards():
    completions = [
        "<think>a</think><answer>b</answer>",
        "  <think>\nmulti\nline</think>\n<answer>x</answer>\n",
        "<think>a</think>b",
        "<answer>b</answer>",
        "<think><think>a</think><answer>b</answer>",
        "<think>a</think><answer>b</answer> trailing",
    ]
    assert format_reward([""] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert think_format_reward([""] * 6, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    conv = [[{"role": "assistant", "content": "<think>a</think><answer>b</answer>"}]]
    assert format_reward([[{"role": "user", "content": "q"}]], conv) == [1.0]


def test_length_penalty():
    fn = get_length_penalty(10)
    assert fn.__name__ == "length_penalty"
    assert fn(["p"] * 3, ["a", "b", "c"], completion_ids=[[1], [1] * 5, [1] * 10]) == [-0.1, -0.5, -1.0]
    assert get_length_penalty(4, coef=0.5)(["p"], ["a"], completion_ids=[[1, 2]]) == [-0.25]
    with pytest.raises(ValueError, match="completion_ids"):
        fn(["p"], ["a"])
    with pytest.raises(ValueError, match="positive"):
        get_length_penalty(0)


def test_soft_overlong_punishment():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then linear down to -1 at 10, -1 beyond
    fn = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    assert fn.__name__ == "soft_overlong_punishment"
    ids = [[0] * n for n in (1, 6, 7, 8, 10, 11)]
    assert fn([""] * 6, [""] * 6, completion_ids=ids) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="soft_punish_cache"):
        get_soft_overlong_punishment(10, 11)


def test_get_reward_func_names_and_paths(tmp_path):
    assert get_reward_func("accuracy") is accuracy_reward
    assert get_reward_func("format") is format_reward
    assert get_reward_func("think_format") is think_format_reward
    assert get_reward_func("length", max_completion_length=8)(["p"], ["a"], completion_ids=[[1, 2]]) == [-0.25]
    soft = get_reward_func("soft_overlong", max_completion_length=8, soft_punish_cache=2)
    assert soft([""], [""], completion_ids=[[0] * 7]) == [-0.5]
    assert set(BUILTIN_REWARDS) == {"accuracy", "format", "think_format", "length", "soft_overlong"}
    assert get_reward_func("posttrain.rollout.rewards:format_reward") is format_reward
    path = tmp_path / "my_rewards.py"
    path.write_text("def shout(prompts, completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    assert get_reward_func(f"{path}:shout")([""] * 2, ["AB", "ab"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="Built-in names"):
        get_reward_func("acuracy")
    with pytest.raises(ValueError, match="needs max_completion_length"):
        get_reward_func("length")
    with pytest.raises(ValueError, match="no callable"):
        get_reward_func("posttrain.rollout.rewards:nope")
