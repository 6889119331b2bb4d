"""Judges: the reward-model judges agree with the reward model, AllTrueJudge combines binary judges, the
OpenAI-compatible HTTP judge talks to a local server (127.0.0.1, started here) and fails clearly on bad answers, and
the local-LM judges read the right next-token probabilities (batched, padded, shuffled) and report non-answers."""

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


# -- local causal-LM judges -----------------------------------------------------------------------
class _RiggedLM(torch.nn.Module):
    """A causal-LM stand-in that decodes its input: at the LAST real token it puts a large logit on the digit of the
    shown answer that contains GOOD (binary prompts: "1" if the answer contains GOOD, else "0"); no GOOD anywhere
    gives flat logits (a tie). Every other position, padding included, favours a wrong digit, so a judge that reads
    the wrong position (or mishandles padding) gets wrong verdicts."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.digit = [tokenizer(str(k), add_special_tokens=False)["input_ids"][0] for k in range(10)]
        self.calls = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from types import SimpleNamespace

        batch, length = input_ids.shape
        self.calls.append(batch)
        logits = torch.zeros(batch, length, len(self.tok))
        for b in range(batch):
            n = int(attention_mask[b].sum())
            text = self.tok.decode(input_ids[b, :n])
            sections = [s.split("##")[0] for s in text.split("## Answer")[1:]]
            if "## Answer 0" in text:  # numbered answers: the number of the one with GOOD
                target = next((k for k, s in enumerate(sections) if "GOOD" in s), None)
            else:  # binary: one answer
                target = 1 if "GOOD" in sections[0] else 0
            wrong = self.digit[9 if target != 9 else 8]
            logits[b, :, wrong] = 20.0
            logits[b, n - 1, wrong] = 0.0
            if target is not None:
                logits[b, n - 1, self.digit[target]] = 10.0
        return SimpleNamespace(logits=logits)


def test_llm_pairwise_judge_reads_the_answer_token_and_undoes_shuffling(tokenizer):
    from posttrain.rollout import LLMPairwiseJudge

    rigged = _RiggedLM(tokenizer)
    prompts = [f"Question {i}" for i in range(12)]
    pairs = [["GOOD x", "bad"] if i % 3 else ["bad", "GOOD longer answer " * (1 + i % 4)] for i in range(12)]
    expected = [0 if i % 3 else 1 for i in range(12)]
    judge = LLMPairwiseJudge(rigged, tokenizer, batch_size=5, seed=0)
    assert judge.judge(prompts, pairs) == expected  # shuffled (seeded), mapped back
    assert judge.judge(prompts, pairs, shuffle_order=False) == expected
    assert rigged.calls[-3:] == [5, 5, 2]  # batched
    scores = judge.judge(prompts, pairs, return_scores=True)  # P(first completion is better)
    assert all((s > 0.99) if e == 0 else (s < 0.01) for s, e in zip(scores, expected))
    # no answer is preferred: equal probabilities are a tie
    assert judge.judge(["q"], [["bad", "worse"]], shuffle_order=False) == [-1]
    # the chat template wraps the text; without it the raw text is the input (same verdicts here)
    raw = LLMPairwiseJudge(rigged, tokenizer, use_chat_template=False, seed=1)
    assert raw.judge(prompts, pairs) == expected


def test_llm_judges_report_an_answer_that_is_not_a_choice(tokenizer, caplog):
    from posttrain.rollout import LLMBinaryJudge, LLMPairwiseJudge

    rigged = _RiggedLM(tokenizer)  # no GOOD: flat logits, the choices get 2/len(vocab) of the mass
    strict = LLMPairwiseJudge(rigged, tokenizer, min_choice_prob=0.5)
    assert strict.judge(["q"], [["GOOD", "bad"]]) == [0]
    with pytest.raises(JudgeError, match=r"pair 1: the answer tokens got probability 0.00\d+ < min_choice_prob=0.5"):
        strict.judge(["q", "r"], [["GOOD", "bad"], ["bad", "worse"]])
    lenient = LLMPairwiseJudge(rigged, tokenizer, min_choice_prob=0.5, on_error="tie")
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        assert lenient.judge(["q", "r"], [["GOOD", "bad"], ["bad", "worse"]]) == [0, -1]
    assert "did not answer with a choice" in caplog.text
    scores = lenient.judge(["q", "r"], [["GOOD", "bad"], ["bad", "worse"]], return_scores=True)
    assert scores[0] > 0.99 and scores[1] != scores[1]  # NaN for the invalid one
    with pytest.raises(ValueError, match="placeholder"):
        LLMBinaryJudge(rigged, tokenizer, system_prompt="Is {prompt} answered well?")
    with pytest.raises(ValueError, match="on_error"):
        LLMPairwiseJudge(rigged, tokenizer, on_error="ignore")
    with pytest.raises(ValueError, match="exactly 2 completions"):
        LLMPairwiseJudge(rigged, tokenizer).judge(["q"], [["a", "b", "c"]])

    class _TwoTokenDigits:  # a tokenizer that splits "0" into two tokens
        chat_template = None
        pad_token_id = eos_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1, 2]}

    with pytest.raises(ValueError, match="'0' is 2 tokens"):
        LLMPairwiseJudge(rigged, _TwoTokenDigits()).judge(["q"], [["a", "b"]])


def test_llm_rank_and_binary_judges(tokenizer):
    from posttrain.rollout import LLMBinaryJudge, LLMRankJudge

    rigged = _RiggedLM(tokenizer)
    groups = [["a", "b", "GOOD c", "d"], ["GOOD", "x"], ["p", "q", "r", "s", "t", "u", "v", "w", "y", "GOOD z"]]
    ranking = LLMRankJudge(rigged, tokenizer, seed=0).judge(["q1", "q2", "q3"], groups)
    assert [r[0] for r in ranking] == [2, 0, 9]
    assert [sorted(r) for r in ranking] == [list(range(len(g))) for g in groups]
    with pytest.raises(ValueError, match="1 to 10 completions"):
        LLMRankJudge(rigged, tokenizer).judge(["q"], [[str(i) for i in range(11)]])

    binary = LLMBinaryJudge(rigged, tokenizer, batch_size=2)
    assert binary.judge(["q"] * 3, ["GOOD", "bad", "GOOD too"]) == [1, 0, 1]
    # the gold completion is shown under its own header (not read as the answer)
    assert binary.judge(["q"] * 2, ["bad", "GOOD"], gold_completions=["GOOD", "bad"]) == [0, 1]
    scores = binary.judge(["q"] * 2, ["GOOD", "bad"], return_scores=True)
    assert scores[0] > 0.99 and scores[1] < 0.01
    with pytest.raises(ValueError, match="2 prompts but 1 gold"):
        binary.judge(["q"] * 2, ["a", "b"], gold_completions=["a"])


def test_llm_judges_on_a_tiny_causal_lm(tokenizer):
    """A real (random) tiny LM: valid verdicts, and the probabilities do not depend on batching or padding."""
    from posttrain.kit import build_tiny_model
    from posttrain.rollout import LLMBinaryJudge, LLMPairwiseJudge, LLMRankJudge

    model = build_tiny_model("qwen2", size="tiny", seed=5).train()
    prompts = [f"What is {i}+{i + 3}?\n" for i in range(6)]
    pairs = [[str(2 * i + 3), "7" * (i + 1)] for i in range(6)]
    one = LLMPairwiseJudge(model, tokenizer, batch_size=1, seed=0)
    many = LLMPairwiseJudge(model, tokenizer, batch_size=4, seed=0)
    s1 = one.judge(prompts, pairs, return_scores=True)
    s4 = many.judge(prompts, pairs, return_scores=True)
    assert torch.allclose(torch.tensor(s1), torch.tensor(s4), atol=1e-5)
    assert model.training  # the judge restores the training mode
    verdicts = LLMPairwiseJudge(model, tokenizer, seed=0).judge(prompts, pairs)
    assert set(verdicts) <= {0, 1} and verdicts == [0 if s > 0.5 else 1 for s in s1]
    ranks = LLMRankJudge(model, tokenizer, batch_size=2).judge(prompts[:3], [p + ["1"] for p in pairs[:3]])
    assert all(sorted(r) == [0, 1, 2] for r in ranks)
    binary = LLMBinaryJudge(model, tokenizer, batch_size=4).judge(prompts, [p[0] for p in pairs])
    assert len(binary) == 6 and set(binary) <= {0, 1}
