"""Fast checks of the side-by-side harness helpers (no TRL needed, no model runs).

    .venv/bin/python -m pytest -q benchmarks/test_compare_helpers.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare import close, compare_runs  # noqa: E402
from benchmarks.compare_worker import BatchRecorder, example_sequences, fingerprint, other_cpu_cores  # noqa: E402


def test_example_sequences_reads_both_libraries_column_names():
    ours = {"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4, 5]}
    peer = {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}
    assert example_sequences(ours) == example_sequences(peer) == [[1, 2, 3], [1, 2, 4, 5]]
    assert example_sequences({"chosen_input_ids": [7], "rejected_input_ids": [8]}) == [[7], [8]]  # reward rows
    assert example_sequences({"input_ids": [1, 2, 3], "labels": [1, 2, 3]}) == [[1, 2, 3]]
    assert fingerprint(example_sequences(ours)) == fingerprint(example_sequences(peer))


def test_batch_recorder_counts_real_tokens_in_order():
    rec = BatchRecorder(lambda examples: len(examples))
    assert rec([{"input_ids": [1, 2]}, {"input_ids": [3]}]) == 2
    rec([{"prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4]}])
    assert rec.tokens == [3, 5] and rec.first == [[1, 2], [3]]


def test_close_is_relative_for_large_and_absolute_for_small_values():
    assert close(-1200.16663, -1200.16675) and close(1e-6, 5e-5) and not close(0.5, 0.5002) and not close(1000.0, 1000.2)


def test_compare_runs_flags_metric_step_and_batch_mismatches():
    run = {"first_log": {"loss": 0.7, "rewards/chosen": 0.1, "step": 1}, "losses": [0.7, 0.6], "first_batch": "a"}
    assert compare_runs(run, run)["passed"]
    other = dict(run, first_log={"loss": 0.7, "rewards/chosen": 0.2, "entropy": 1.0, "step": 1})
    c = compare_runs(run, other)
    assert not c["passed"] and c["only_trl"] == ["entropy"]
    assert not compare_runs(run, dict(run, losses=[0.7, 0.5]))["passed"]
    assert not compare_runs(run, dict(run, first_batch="b"))["passed"]


def test_other_cpu_cores_subtracts_own_cpu():
    assert other_cpu_cores((10.0, 1.0), (14.0, 3.0), 2.0) == 1.0
    assert other_cpu_cores((10.0, 1.0), (11.0, 3.0), 2.0) == 0.0


class _Tok:
    """Enough of a tokenizer for FixedCompletions: ids 0-3 special (0 pad, 2 EOS)."""

    eos_token_id, pad_token_id, vocab_size = 2, 0, 50

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + t % 26) * (1 + t % 3) for t in ids if t >= 4)


def test_fixed_completions_are_deterministic_distinct_and_realistic():
    import torch

    from benchmarks.compare_online import FixedCompletions, LengthJudge

    a, b = FixedCompletions(_Tok(), 4, 12), FixedCompletions(_Tok(), 4, 12)
    group = a.group([5, 6, 7])
    assert group == b.group([5, 6, 7]) and group != a.group([5, 6, 8])
    for c in group:  # a completion ends with EOS, or is cut at max_new_tokens
        assert (c[-1] == 2 and len(c) <= 12) or (2 not in c and len(c) == 12)
        assert all(t >= 4 for t in c[:-1])
    lengths = [len(a.text(c)) for c in group]
    assert len(set(lengths)) == 4  # no ties for length judges / rewards
    assert all(len(c) == 12 and 2 not in c for c in FixedCompletions(_Tok(), 2, 12, full_length=True).group([5]))
    # the generate stand-in: left-padded prompts in, [prompt, completion, pad] out; row r gets sample j_of_row(r, n)
    gen = a.hf_generate(lambda r, n: r % 2)
    out = gen(input_ids=torch.tensor([[0, 5, 6, 7], [5, 6, 7, 9]]), attention_mask=torch.tensor([[0, 1, 1, 1], [1] * 4]))
    c0, c1 = a.group([5, 6, 7])[0], a.group([5, 6, 7, 9])[1]
    assert out[0, 4:4 + len(c0)].tolist() == c0 and out[1, 4:4 + len(c1)].tolist() == c1
    assert (out[0, 4 + len(c0):] == 0).all()
    assert a.used == [[5, 6, 7] + c0, [5, 6, 7, 9] + c1]
    judge = LengthJudge()
    assert judge.judge(None, [("abcd", " ab "), ([{"content": "a"}], [{"content": "ab"}])]) == [0, 1]
    assert judge.judge(None, [("ab", "ab")], return_scores=True) == [0.5]


def test_bco_rows_of_trl_021_are_not_given_the_prompt_twice():
    ex = {"prompt_input_ids": [1, 2], "completion_input_ids": [1, 2, 3, 4]}  # TRL 0.21 BCO: completion includes prompt
    assert example_sequences(ex) == [[1, 2, 3, 4]]
    assert example_sequences({"prompt_input_ids": [1, 2], "completion_input_ids": [3, 4]}) == [[1, 2, 3, 4]]


def test_each_scenario_has_its_peer():
    from benchmarks.compare import LEGACY_PEER_VERSION, PEER_VERSION, SCENARIOS, peer_version

    assert {s for s in SCENARIOS if peer_version(s) == LEGACY_PEER_VERSION} == {
        "bco", "bco-native-tokens", "prm", "ppo", "xpo", "nash-md", "ddpo", "alignprop"}
    assert peer_version("online-dpo") == peer_version("grpo") == peer_version("sft-vlm") == PEER_VERSION


def test_metrics_defined_apart_are_shown_but_not_compared():
    run = {"first_log": {"loss": 0.7, "logits/chosen": 0.1}, "losses": [0.7], "first_batch": "a"}
    other = dict(run, first_log={"loss": 0.7, "logits/chosen": 0.5})
    assert not compare_runs(run, other)["passed"]
    c = compare_runs(run, other, defined_apart=("logits/chosen",))
    assert c["passed"] and [r[0] for r in c["defined_apart"]] == ["logits/chosen"] and [r[0] for r in c["metrics"]] == ["loss"]


def test_example_sequences_of_trl_cpo_rows_hold_the_prompt_once():
    ours = {"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4, 5]}
    trl_cpo = {"prompt_input_ids": [1, 2], "chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 2, 4, 5]}
    assert example_sequences(ours) == example_sequences(trl_cpo) == [[1, 2, 3], [1, 2, 4, 5]]


def test_batch_recorder_reads_untokenized_examples_from_the_collated_batch():
    import torch

    batch = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    rec = BatchRecorder(lambda examples: batch)
    rec([{"messages": []}, {"messages": []}])
    assert rec.first == [[5, 6], [7, 8, 9]] and rec.tokens == [5]


def test_batch_recorder_reads_a_batch_feature():
    """Vision collators return a transformers BatchFeature (a Mapping, not a dict)."""
    from collections import UserDict

    import torch

    batch = UserDict({"input_ids": torch.tensor([[0, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1]])})
    rec = BatchRecorder(lambda examples: batch)
    rec([{"prompt": [], "completion": [], "images": []}])
    assert rec.first == [[5, 6]] and rec.tokens == [2]


def test_smoke_runs_time_at_least_one_step():
    from types import SimpleNamespace

    from benchmarks.compare import base_config

    paths = {"causal-lm": "m", "sft_data": "d", "seq-cls": "v"}
    args = SimpleNamespace(steps=2, warmup_steps=2, batch_size=8, threads=2, peer=None)
    assert base_config("sft", "small", paths, args)["warmup_steps"] == 1
    assert base_config("sft", "small", paths, SimpleNamespace(**dict(vars(args), steps=8)))["warmup_steps"] == 2


def test_first_last_loss_is_the_median_over_runs():
    from benchmarks.compare import first_last_loss

    runs = [{"losses": [2.0, 1.5, 1.0]}, {"losses": [2.2, 1.4, 0.8]}, {"losses": [2.1, 1.6, 0.9]}]
    assert first_last_loss(runs) == "2.1 -> 0.9"
    assert first_last_loss([{"losses": []}]) == "-"
