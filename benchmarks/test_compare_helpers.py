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
