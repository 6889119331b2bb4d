"""Judges: the reward-model judges agree with the reward model, AllTrueJudge combines binary judges, and the
OpenAI-compatible HTTP judge talks to a local server (127.0.0.1, started here) and fails clearly on bad answers."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from posttrain.rollout import (
    AllTrueJudge,
    BaseBinaryJudge,
    JudgeError,
    OpenAIPairwiseJudge,
    RewardModelPairwiseJudge,
    RewardModelRankJudge,
    score_with_model,
)


@pytest.fixture(scope="module")
def reward_model():
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", head="seq-cls", size="tiny", seed=3)


PROMPTS = ["Sort: 3 1 2\n", "Sort: 9 4\n", "What is 2+2?\n", "Reverse: a b c\n", "Copy: x y\n"]
PAIRS = [["1 2 3", "3 2 1"], ["4 9", "9 4"], ["4", "5"], ["c b a", "a b c"], ["x y", "y"]]


def test_reward_model_judge_agrees_with_the_reward_model(reward_model, tokenizer):
    judge = RewardModelPairwiseJudge(reward_model, tokenizer)
    a = score_with_model(reward_model, tokenizer, PROMPTS, [p[0] for p in PAIRS])
    b = score_with_model(reward_model, tokenizer, PROMPTS, [p[1] for p in PAIRS])
    expected = [0 if x > y else 1 for x, y in zip(a.tolist(), b.tolist())]
    assert judge.judge(PROMPTS, PAIRS) == expected
    assert judge.judge(PROMPTS, PAIRS, shuffle_order=False) == expected
    assert len(set(expected)) == 2  # the random RM prefers both positions somewhere: a real check
    # the scores are the model's own outputs on prompt + completion + EOS
    ids = tokenizer(PROMPTS[0] + PAIRS[0][0])["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        direct = reward_model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert torch.allclose(a[0], direct, atol=1e-6)
    # equal scores tie
    judge.scores = lambda prompts, completions: [0.5, 0.5, 1.0, 2.0]
    assert judge.judge(["p", "q"], [["a", "a"], ["b", "c"]]) == [-1, 1]
    with pytest.raises(ValueError, match="exactly 2"):
        judge.judge(["p"], [["a", "b", "c"]])


def test_reward_model_rank_judge_orders_by_score(reward_model, tokenizer):
    completions = [["1 2 3", "3 2 1", "1 3 2", "2"]]
    scores = score_with_model(reward_model, tokenizer, PROMPTS[:1] * 4, completions[0]).tolist()
    ranking = RewardModelRankJudge(reward_model, tokenizer).judge(PROMPTS[:1], completions)
    assert ranking == [sorted(range(4), key=lambda j: -scores[j])]


class _Fixed(BaseBinaryJudge):
    def __init__(self, verdicts):
        self.verdicts = verdicts

    def judge(self, prompts, completions, gold_completions=None, shuffle_order=True):
        return list(self.verdicts)


class _ExactMatch(BaseBinaryJudge):
    def judge(self, prompts, completions, gold_completions=None, shuffle_order=True):
        return [int(c.strip() == g.strip()) for c, g in zip(completions, gold_completions)]


def test_all_true_judge():
    judge = AllTrueJudge([_Fixed([1, 1, 0, 1, -1]), _Fixed([1, 0, 0, -1, 1])])
    assert judge.judge(["p"] * 5, ["c"] * 5) == [1, 0, 0, -1, -1]
    gold = AllTrueJudge([_ExactMatch(), _Fixed([1, 1])])
    assert gold.judge(["What is 2+2?\n"] * 2, ["4", "5"], gold_completions=["4", "4"]) == [1, 0]
    with pytest.raises(JudgeError, match="returned 1 verdicts for 2 prompts"):
        AllTrueJudge([_Fixed([1])]).judge(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError):
        AllTrueJudge([])


# -- a local OpenAI-compatible server -------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    """Answers '0'/'1' for the answer containing GOOD; 'maybe' if the prompt says MALFORMED; HTTP 500 on FAIL."""

    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = body["messages"][-1]["content"]
        if "FAIL" in content:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')
            return
        answer1 = content.split("## Answer 1", 1)[1]
        text = "maybe" if "MALFORMED" in content else (" 1\n" if "GOOD" in answer1 else "0")
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_http_judge_parses_answers_and_undoes_shuffling(server):
    judge = OpenAIPairwiseJudge(model="judge-model", base_url=server, api_key="sk-test", seed=0)
    prompts = [f"Question {i}" for i in range(8)]
    pairs = [["GOOD answer", "bad answer"] if i % 3 else ["bad answer", "GOOD answer"] for i in range(8)]
    expected = [0 if i % 3 else 1 for i in range(8)]
    assert judge.judge(prompts, pairs) == expected  # shuffled order, mapped back
    assert judge.judge(prompts, pairs, shuffle_order=False) == expected
    req = _Handler.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["max_tokens"] == 1
    assert "Question" in req["body"]["messages"][0]["content"]
    # some pairs were shown swapped, and the result still points at the GOOD answer
    shown_first = ["GOOD" in r["body"]["messages"][0]["content"].split("## Answer 1")[0] for r in _Handler.requests[:8]]
    assert 0 < sum(shown_first) < 8


def test_http_judge_fails_clearly_on_a_malformed_answer(server, caplog):
    judge = OpenAIPairwiseJudge(base_url=server, api_key="")
    with pytest.raises(JudgeError, match=r"answered 'maybe'; expected exactly '0' or '1'"):
        judge.judge(["MALFORMED question"], [["a", "b"]])
    assert _Handler.requests[-1]["auth"] is None  # no key, no header
    with pytest.raises(JudgeError, match="HTTP 500"):
        judge.judge(["FAIL"], [["a", "b"]])
    lenient = OpenAIPairwiseJudge(base_url=server, on_error="tie")
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        assert lenient.judge(["MALFORMED", "ok"], [["a", "b"], ["x", "GOOD"]], shuffle_order=False) == [-1, 1]
    assert "tie (-1)" in caplog.text
    capped = OpenAIPairwiseJudge(base_url=server, max_requests=1)
    assert capped.judge(["q1", "q2"], [["GOOD", "b"], ["GOOD", "b"]], shuffle_order=False) == [0, -1]
    with pytest.raises(JudgeError, match="failed"):
        OpenAIPairwiseJudge(base_url="http://127.0.0.1:9/v1", timeout=2).judge(["q"], [["a", "b"]])
